"""The downloader, against a fake Hub that copies local files (never the network)."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import reference_dir

from supertonic_grpc.bundle import REAL, load_bundle
from supertonic_grpc.model import build_model
from supertonic_grpc.model import hub as hub_mod
from supertonic_grpc.model.defaults import default_config_dict
from supertonic_grpc.model.hub import MODEL_REPO, WEIGHTS_REPO, DownloadError, download
from supertonic_grpc.model.weights import (
    WEIGHTS_FILE,
    load_pseudo_weights,
    pseudo_tensor,
    save_weights,
)
from supertonic_grpc.text import Tokenizer, preprocess
from supertonic_grpc.voices import PUBLISHED_VOICES, load_voice_file

huggingface_hub = pytest.importorskip("huggingface_hub")
COMMITS = {MODEL_REPO: "a" * 40, WEIGHTS_REPO: "b" * 40}


class FakeApi:
    """`HfApi().model_info`: `main` of each repository is the commit in COMMITS."""

    def model_info(self, repo_id: str, revision: str = "main", **_: object) -> object:
        assert revision == "main"
        return type("Info", (), {"sha": COMMITS[repo_id]})()


@pytest.fixture(scope="module")
def remote(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two fake repositories laid out as the published ones."""
    ref = reference_dir()
    base = tmp_path_factory.mktemp("remote")
    model_repo = base / "model"
    (model_repo / "onnx").mkdir(parents=True)
    shutil.copy(ref / "tts.json", model_repo / "onnx" / "tts.json")
    shutil.copy(ref / "unicode_indexer.json", model_repo / "onnx" / "unicode_indexer.json")
    shutil.copytree(ref / "voice_styles", model_repo / "voice_styles")
    weights_repo = base / "weights"
    weights_repo.mkdir()
    model = build_model(default_config_dict())
    load_pseudo_weights(model)
    save_weights(model, weights_repo / WEIGHTS_FILE)
    return {MODEL_REPO: model_repo, WEIGHTS_REPO: weights_repo}


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, remote: dict[str, Path]) -> list[str]:
    """Route hf_hub_download / list_repo_files to the local repositories; returns a call log."""
    calls: list[str] = []

    def hf_hub_download(
        *, repo_id: str, filename: str, local_dir: Path, revision: str, **_: object
    ) -> str:
        assert revision == COMMITS[repo_id]  # always a pinned commit, never a branch
        calls.append(f"{repo_id}/{filename}")
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(remote[repo_id] / filename, target)
        return str(target)

    def list_repo_files(repo_id: str, **_: object) -> list[str]:
        root = remote[repo_id]
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    monkeypatch.setattr(huggingface_hub, "list_repo_files", list_repo_files)
    monkeypatch.setattr(hub_mod, "_check_reachable", lambda: None)
    return calls


def test_download_lays_out_files_for_load_bundle(tmp_path: Path, fake_hub: list[str]) -> None:
    target = tmp_path / "model"
    assert download(target, token="hf_test") == target
    assert (target / "onnx" / "tts.json").is_file()
    assert (target / "onnx" / "unicode_indexer.json").is_file()
    assert (target / WEIGHTS_FILE).is_file()
    assert sorted(p.stem for p in (target / "voice_styles").glob("*.json")) == sorted(
        PUBLISHED_VOICES
    )
    assert f"{WEIGHTS_REPO}/{WEIGHTS_FILE}" in fake_hub
    assert f"{MODEL_REPO}/voice_styles/F3.json" in fake_hub


@pytest.mark.slow
def test_downloaded_bundle_is_real(tmp_path: Path, fake_hub: list[str]) -> None:
    ref = reference_dir()
    bundle = load_bundle(download(tmp_path / "model"))
    assert bundle.state == REAL
    assert sorted(bundle.voices.names) == sorted(PUBLISHED_VOICES)
    m1 = load_voice_file(ref / "voice_styles" / "M1.json")
    np.testing.assert_array_equal(bundle.voices.get("M1").style_ttl, m1.style_ttl)
    np.testing.assert_array_equal(bundle.voices.get("M1").style_dp, m1.style_dp)
    ref_tok = Tokenizer.from_file(ref / "unicode_indexer.json")
    text = preprocess("¿Dónde está la biblioteca?", "es")
    assert bundle.tokenizer.encode(text) == ref_tok.encode(text)
    # The weights are the file's (pseudo weights here), not a fresh initialization.
    name, tensor = next(iter(bundle.model.state_dict().items()))
    assert torch.equal(tensor, pseudo_tensor(name, tensor.shape, tensor.dtype))


def test_offline_is_one_line_download_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(**_: object) -> str:
        raise huggingface_hub.errors.LocalEntryNotFoundError(
            "An error happened while trying to locate the file on the Hub\n"
            "and we cannot find the requested files in the local cache.\nCheck your connection."
        )

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(hub_mod, "_check_reachable", lambda: None)
    with pytest.raises(DownloadError) as info:
        download(tmp_path / "model")
    message = str(info.value)
    assert "\n" not in message
    assert "onnx/tts.json" in message
    assert "huggingface.co could not be reached" in message


def test_connection_error_listing_voices(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub: list[str]
) -> None:
    def refused(*_: object, **__: object) -> list[str]:
        raise ConnectionError("[Errno 111] Connection refused")

    monkeypatch.setattr(huggingface_hub, "list_repo_files", refused)
    with pytest.raises(DownloadError, match=r"file list .*could not be reached") as info:
        download(tmp_path / "model")
    assert "\n" not in str(info.value)


def test_mismatched_weights_are_refused_and_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_hub: list[str], remote: dict[str, Path]
) -> None:
    from safetensors.torch import save_file

    bad_repo = tmp_path / "bad"
    bad_repo.mkdir()
    save_file({"vocoder.nonsense": torch.zeros(3)}, str(bad_repo / WEIGHTS_FILE))
    monkeypatch.setitem(remote, WEIGHTS_REPO, bad_repo)
    target = tmp_path / "model"
    with pytest.raises(DownloadError, match="does not match"):
        download(target)
    assert not (target / WEIGHTS_FILE).exists()


def test_missing_huggingface_hub_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)
    with pytest.raises(DownloadError, match=r"supertonic-grpc\[download\]"):
        hub_mod.download(tmp_path / "model")


def test_unreachable_host_fails_fast_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    with pytest.raises(DownloadError) as info:
        download(tmp_path / "model")
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot reach 127.0.0.1:{closed_port}" in message
    assert not (tmp_path / "model" / "supertonic.safetensors").exists()


def test_download_pins_commits_and_digests_in_a_lock_file(
    tmp_path: Path, fake_hub: list[str], remote: dict[str, Path]
) -> None:
    target = download(tmp_path / "model")
    lock = json.loads((target / hub_mod.LOCK_FILE).read_text())
    assert lock["revisions"] == COMMITS
    weights = remote[WEIGHTS_REPO] / WEIGHTS_FILE
    assert lock["sha256"][WEIGHTS_FILE] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert set(lock["sha256"]) >= {"onnx/tts.json", "voice_styles/M1.json"}


def test_a_wrong_weights_sha256_is_refused_and_the_file_removed(
    tmp_path: Path, fake_hub: list[str]
) -> None:
    target = tmp_path / "model"
    with pytest.raises(DownloadError, match="pinned SHA-256") as info:
        download(target, weights_sha256="0" * 64)
    assert "\n" not in str(info.value)
    assert not (target / WEIGHTS_FILE).exists()


def test_a_later_download_refuses_files_that_changed_since_the_lock(
    tmp_path: Path, fake_hub: list[str], remote: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = download(tmp_path / "model")
    changed = tmp_path / "changed"
    shutil.copytree(remote[MODEL_REPO], changed)
    (changed / "onnx" / "tts.json").write_text("{}")
    monkeypatch.setitem(remote, MODEL_REPO, changed)
    with pytest.raises(DownloadError, match=r"onnx/tts.json.*pinned SHA-256"):
        download(target)


def test_an_explicit_revision_is_used_without_asking_for_main(
    tmp_path: Path, fake_hub: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pinned = "c" * 40
    monkeypatch.setitem(COMMITS, MODEL_REPO, pinned)
    target = download(tmp_path / "model", revision=pinned)
    assert json.loads((target / hub_mod.LOCK_FILE).read_text())["revisions"][MODEL_REPO] == pinned


def test_a_lock_copied_into_a_fresh_directory_pins_that_download(
    tmp_path: Path, fake_hub: list[str], remote: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = download(tmp_path / "first")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(first / hub_mod.LOCK_FILE, fresh / hub_mod.LOCK_FILE)
    changed = tmp_path / "changed"
    shutil.copytree(remote[MODEL_REPO], changed)
    voice = json.loads((changed / "voice_styles" / "F2.json").read_text())
    # The same values in other bytes: still a file the lock did not pin.
    (changed / "voice_styles" / "F2.json").write_text(json.dumps(voice))
    monkeypatch.setitem(remote, MODEL_REPO, changed)
    with pytest.raises(DownloadError, match=r"voice_styles/F2.json.*pinned SHA-256") as info:
        download(fresh)
    assert "\n" not in str(info.value)
    assert not (fresh / "voice_styles" / "F2.json").exists()
