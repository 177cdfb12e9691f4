"""Download the published Supertonic-2 files from the Hugging Face Hub.

Two repositories: `Supertone/supertonic-2` holds the config, the unicode indexer and the
voice styles; `DevParker/Supertonic-2-Saftetensor` holds the weights as safetensors. Files
land in the layout `bundle.load_bundle` reads: `onnx/tts.json`, `onnx/unicode_indexer.json`,
`voice_styles/*.json` and `supertonic.safetensors`. `huggingface_hub` is an optional extra.

Every file comes from one pinned commit per repository, and its SHA-256 is checked: the pins
are the `--revision`/`--weights-revision`/`--weights-sha256` arguments, else the lock file
(`download-lock.json`) an earlier download left in the model directory, else the commit the
repository's `main` points to now, which is then written to the lock file (trust on first
use), so later downloads into that directory fetch exactly the same bytes or fail.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

from safetensors.torch import load_file

from supertonic_grpc.model import build_model
from supertonic_grpc.model.weights import WEIGHTS_FILE, WeightsError, check_state_dict
from supertonic_grpc.voices import PUBLISHED_VOICES

log = logging.getLogger(__name__)

MODEL_REPO = "Supertone/supertonic-2"
WEIGHTS_REPO = "DevParker/Supertonic-2-Saftetensor"
HOST = "huggingface.co"
CONFIG_FILES = ("onnx/tts.json", "onnx/unicode_indexer.json")
VOICE_DIR = "voice_styles"
INSTALL_HINT = "pip install 'supertonic-grpc[download]'"
LOCK_FILE = "download-lock.json"
_COMMIT = re.compile(r"[0-9a-f]{40}")


@dataclass
class Pins:
    """A commit per repository and a SHA-256 per file (hex), as in the lock file."""

    revisions: dict[str, str] = field(default_factory=dict)
    sha256: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path) -> Pins:
        path = root / LOCK_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
            return cls(dict(data["revisions"]), dict(data["sha256"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise DownloadError(f"{path}: not a download lock file ({_one_line(exc)})") from exc

    def write(self, root: Path) -> None:
        body = {"revisions": self.revisions, "sha256": dict(sorted(self.sha256.items()))}
        (root / LOCK_FILE).write_text(json.dumps(body, indent=2) + "\n")


def default_model_dir() -> Path:
    """`$SUPERTONIC_MODEL_DIR`, else `$XDG_CACHE_HOME/supertonic-grpc/supertonic-2`."""
    env = os.environ.get("SUPERTONIC_MODEL_DIR")
    if env:
        return Path(env).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "supertonic-grpc" / "supertonic-2"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DownloadError(RuntimeError):
    """A download failed; the message is one line saying what and why."""


def _hub() -> ModuleType:
    try:
        import huggingface_hub
    except ImportError:
        raise DownloadError(
            f"downloading needs the huggingface_hub package: {INSTALL_HINT}"
        ) from None
    return huggingface_hub


def _network_errors(hub: ModuleType) -> tuple[type[BaseException], ...]:
    """Exception types meaning "could not fetch", whatever HTTP stack the hub uses."""
    kinds: list[type[BaseException]] = [OSError, ConnectionError, TimeoutError]
    errors = getattr(hub, "errors", None)
    for name in ("LocalEntryNotFoundError", "HfHubHTTPError", "OfflineModeIsEnabled"):
        kind = getattr(errors, name, None)
        if isinstance(kind, type) and issubclass(kind, BaseException):
            kinds.append(kind)
    for module, name in (("httpx", "HTTPError"), ("requests", "RequestException")):
        try:
            kind = getattr(__import__(module), name)
        except (ImportError, AttributeError):
            continue
        kinds.append(kind)
    return tuple(kinds)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class _Fetcher:
    """Fetches files of one repository into `model_dir`, translating errors to DownloadError."""

    def __init__(self, hub: ModuleType, model_dir: Path, token: str | None) -> None:
        self.hub = hub
        self.model_dir = model_dir
        self.token = token
        self.errors = _network_errors(hub)

    def _fail(self, what: str, repo: str, exc: BaseException) -> DownloadError:
        return DownloadError(
            f"could not download {what} from {repo}: {HOST} could not be reached or refused "
            f"the request ({type(exc).__name__}: {_one_line(exc)})"
        )

    def commit(self, repo: str, revision: str | None) -> str:
        """The commit id `revision` (a branch or tag; None: main) of `repo` points to."""
        if revision is not None and _COMMIT.fullmatch(revision):
            return revision
        try:
            info = self.hub.HfApi().model_info(repo, revision=revision or "main", token=self.token)
        except self.errors as exc:
            raise self._fail("the revision", repo, exc) from exc
        return str(info.sha)

    def file(self, repo: str, filename: str, revision: str, sha256: str | None) -> Path:
        """Download `repo`/`filename` at `revision` to `model_dir`/`filename` and check its
        SHA-256 when one is expected (a mismatch removes the file)."""
        log.info("fetching %s/%s@%s", repo, filename, revision[:12])
        try:
            path = Path(
                self.hub.hf_hub_download(
                    repo_id=repo,
                    filename=filename,
                    revision=revision,
                    local_dir=self.model_dir,
                    token=self.token,
                )
            )
        except self.errors as exc:
            raise self._fail(filename, repo, exc) from exc
        if sha256 is not None and sha256_of(path) != sha256.lower():
            path.unlink(missing_ok=True)
            raise DownloadError(
                f"{repo}/{filename}@{revision[:12]} does not have the pinned SHA-256 "
                f"{sha256[:16]}...: refusing it (a changed or tampered file)"
            )
        return path

    def voice_files(self, repo: str, revision: str) -> list[str]:
        """The voice style files the repository lists (the published ten if it lists none)."""
        try:
            names: list[str] = list(
                self.hub.list_repo_files(repo, revision=revision, token=self.token)
            )
        except self.errors as exc:
            raise self._fail("the file list", repo, exc) from exc
        voices = sorted(n for n in names if n.startswith(VOICE_DIR + "/") and n.endswith(".json"))
        return voices or [f"{VOICE_DIR}/{name}.json" for name in PUBLISHED_VOICES]


def verify_weights(weights: Path, config_path: Path) -> None:
    """Check that `weights` has exactly the tensors of the model `config_path` describes."""
    config: dict[str, Any] = json.loads(config_path.read_text())
    model = build_model(config)
    try:
        check_state_dict(model, load_file(str(weights)))
    except (WeightsError, OSError, ValueError) as exc:
        raise DownloadError(f"{weights} does not match the Supertonic-2 layout: {exc}") from exc


def _check_reachable(timeout_s: float = 5.0) -> None:
    """Fail fast offline instead of sitting through the hub client's retries."""
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError as exc:
        raise DownloadError(
            f"cannot reach {host}:{port} ({_one_line(exc)}); the Supertonic-2 files need "
            "network access to Hugging Face (or set HF_ENDPOINT to a mirror)"
        ) from exc


def download(
    model_dir: Path | None = None,
    *,
    token: str | None = None,
    revision: str | None = None,
    weights_revision: str | None = None,
    weights_sha256: str | None = None,
) -> Path:
    """Fetch config, indexer, voices and weights into `model_dir`; returns the directory.

    `model_dir` defaults to `default_model_dir()`. `revision` and `weights_revision`
    pin the two repositories, `weights_sha256` the weights (see the module docstring for the
    lock file). Raises `DownloadError` (one line) when huggingface_hub is missing, the host
    cannot be reached, a file does not have its pinned SHA-256, or the weights file does not
    match the model layout (a bad weights file is removed so the server falls back to demo).
    """
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    hub = _hub()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create model directory {root}: {_one_line(exc)}") from exc
    _check_reachable()
    # The hub client logs every retry; the one-line DownloadError says what matters.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    fetch = _Fetcher(hub, root, token)
    pins = Pins.read(root)
    asked = {MODEL_REPO: revision, WEIGHTS_REPO: weights_revision}
    for repo, rev in asked.items():
        if rev is not None and pins.revisions.get(repo) not in (None, rev):
            pins = Pins()  # a new pin replaces the old lock, digests included
    if weights_sha256 is not None:
        pins.sha256[WEIGHTS_FILE] = weights_sha256.lower()
    commits = {
        repo: fetch.commit(repo, rev if rev is not None else pins.revisions.get(repo))
        for repo, rev in asked.items()
    }
    fetched: dict[str, Path] = {}
    for name in CONFIG_FILES:
        fetched[name] = fetch.file(MODEL_REPO, name, commits[MODEL_REPO], pins.sha256.get(name))
    voices = fetch.voice_files(MODEL_REPO, commits[MODEL_REPO])
    for name in voices:
        fetched[name] = fetch.file(MODEL_REPO, name, commits[MODEL_REPO], pins.sha256.get(name))
    weights = fetch.file(
        WEIGHTS_REPO, WEIGHTS_FILE, commits[WEIGHTS_REPO], pins.sha256.get(WEIGHTS_FILE)
    )
    expected = root / WEIGHTS_FILE
    if weights.resolve() != expected.resolve():
        # Older hub versions may return a cache path; the bundle reads the root copy.
        os.replace(weights, expected)
    try:
        verify_weights(expected, root / CONFIG_FILES[0])
    except DownloadError:
        expected.unlink(missing_ok=True)
        raise
    fetched[WEIGHTS_FILE] = expected
    Pins(commits, {name: sha256_of(path) for name, path in fetched.items()}).write(root)
    log.info("Supertonic-2 files ready in %s (%d voices, weights verified)", root, len(voices))
    return root
