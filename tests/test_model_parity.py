"""The PyTorch port reproduces the reference implementation stage by stage (pseudo weights)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from reference import reference_dir
from safetensors.torch import load_file

from supertonic_grpc.model import Supertonic, SupertonicConfig, build_model
from supertonic_grpc.model.defaults import default_config_dict
from supertonic_grpc.model.weights import load_pseudo_weights
from supertonic_grpc.text import Tokenizer, preprocess

# The reference README promises agreement "to within about 1e-4" in float32 on CPU.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def ref() -> Path:
    return reference_dir()


@pytest.fixture(scope="module")
def parity(ref: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ref / "parity" / "parity.safetensors"))


@pytest.fixture(scope="module")
def parity_meta(ref: Path) -> dict[str, object]:
    meta: dict[str, object] = json.loads((ref / "parity" / "parity.json").read_text())
    return meta


@pytest.fixture(scope="module")
def model(ref: Path) -> Supertonic:
    """The full-size model from the published config, on the parity pseudo weights."""
    m = build_model(json.loads((ref / "tts.json").read_text()))
    load_pseudo_weights(m)
    return m


def _max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    return float((got.float() - want.float()).abs().max())


def test_default_config_equals_published(ref: Path) -> None:
    published = SupertonicConfig.from_dict(json.loads((ref / "tts.json").read_text()))
    builtin = SupertonicConfig.from_dict(default_config_dict())
    assert builtin == published
    assert builtin.sample_rate == 44100
    assert builtin.samples_per_frame == 3072
    assert builtin.latent_channels == 144


def test_parameter_count_is_about_66m(model: Supertonic) -> None:
    count = sum(p.numel() for p in model.parameters())
    assert 64_000_000 < count < 68_000_000, count


@torch.inference_mode()
def test_text_encoder(model: Supertonic, parity: dict[str, torch.Tensor]) -> None:
    got = model.text_encoder(parity["text_ids"], parity["style_ttl"], parity["text_mask"])
    assert _max_diff(got, parity["text_emb"]) <= TOLERANCE


@torch.inference_mode()
def test_duration_predictor(model: Supertonic, parity: dict[str, torch.Tensor]) -> None:
    got = model.duration_predictor(parity["text_ids"], parity["style_dp"], parity["text_mask"])
    assert _max_diff(got, parity["duration"]) <= TOLERANCE


@torch.inference_mode()
def test_vector_estimator_chain(model: Supertonic, parity: dict[str, torch.Tensor]) -> None:
    x = parity["noisy_latent"]
    total = parity["total_step"]
    assert int(total[0]) == 3
    for step in range(3):
        current = torch.full_like(total, float(step))
        # Each step starts from our own previous output, so errors would compound visibly.
        x = model.vector_estimator(
            x,
            parity["text_emb"],
            parity["style_ttl"],
            parity["latent_mask"],
            parity["text_mask"],
            current,
            total,
        )
        diff = _max_diff(x, parity[f"latent_after_step_{step}"])
        assert diff <= TOLERANCE, f"step {step}: {diff}"


@torch.inference_mode()
def test_vocoder(model: Supertonic, parity: dict[str, torch.Tensor]) -> None:
    got = model.vocoder(parity["latent_after_step_2"])
    assert _max_diff(got, parity["wav"]) <= TOLERANCE


def test_tokenizer_reproduces_text_ids(
    ref: Path, parity: dict[str, torch.Tensor], parity_meta: dict[str, object]
) -> None:
    tokenizer = Tokenizer.from_file(ref / "unicode_indexer.json")
    texts = parity_meta["texts"]
    assert isinstance(texts, list)
    preprocessed = [preprocess(text, lang) for text, lang in texts]
    assert preprocessed == parity_meta["preprocessed"]
    ids, mask = tokenizer.encode_batch(preprocessed)
    assert torch.equal(torch.from_numpy(ids), parity["text_ids"])
    assert torch.equal(torch.from_numpy(mask), parity["text_mask"])
