"""Everything a server loads before it can speak: config, weights, tokenizer and voices.

Looks for the published files in a model directory (the Hugging Face layout of
`Supertone/supertonic-2`, plus `supertonic.safetensors` from the safetensors release).
With no weights found, falls back to the full-size architecture on deterministic pseudo
weights, a tokenizer and voices built here, and says so loudly: the audio is noise, but
every timing is the real model's.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from supertonic_grpc.model import Supertonic, SupertonicConfig, build_model
from supertonic_grpc.model.defaults import default_config_dict
from supertonic_grpc.model.hub import default_model_dir
from supertonic_grpc.model.weights import WEIGHTS_FILE, load_pseudo_weights, load_weights
from supertonic_grpc.text import LANGUAGES, Tokenizer
from supertonic_grpc.voices import VoiceBank

log = logging.getLogger(__name__)

DEMO = "demo"
REAL = "real"
DOWNLOAD_HINT = "run `supertonic-grpc download` (needs network access to huggingface.co)"


def _find(model_dir: Path, name: str) -> Path | None:
    # The published repository keeps the config and indexer under onnx/.
    for candidate in (model_dir / name, model_dir / "onnx" / name):
        if candidate.exists():
            return candidate
    return None


@dataclass
class ModelBundle:
    """A ready model with its tokenizer and voices; `state` is "real" or "demo"."""

    model: Supertonic
    config: SupertonicConfig
    tokenizer: Tokenizer
    voices: VoiceBank
    state: str
    source: str  # where the weights came from, for logs and health output

    @property
    def is_demo(self) -> bool:
        return self.state == DEMO


def load_bundle(model_dir: str | os.PathLike[str] | None = None) -> ModelBundle:
    """Load the published model from `model_dir`, or the demo bundle when files are missing."""
    root = Path(model_dir) if model_dir is not None else default_model_dir()
    wanted = {
        "tts.json": _find(root, "tts.json"),
        "unicode_indexer.json": _find(root, "unicode_indexer.json"),
        WEIGHTS_FILE: _find(root, WEIGHTS_FILE),
        "voice_styles/": _find(root, "voice_styles"),
    }
    missing = [name for name, path in wanted.items() if path is None]
    if missing:
        log.warning(
            "DEMO MODE: published Supertonic-2 files not found in %s (missing: %s). Serving "
            "the full-size architecture on deterministic pseudo weights: the audio is NOISE, "
            "timings are real. To serve speech, %s.",
            root,
            ", ".join(missing),
            DOWNLOAD_HINT,
        )
        return demo_bundle()
    cfg_dict = json.loads(wanted["tts.json"].read_text())  # type: ignore[union-attr]
    tokenizer = Tokenizer.from_file(wanted["unicode_indexer.json"])  # type: ignore[arg-type]
    config = SupertonicConfig.from_dict(cfg_dict)
    model = build_model(config)
    load_weights(model, wanted[WEIGHTS_FILE])  # type: ignore[arg-type]
    voices = VoiceBank.from_dir(wanted["voice_styles/"], LANGUAGES)  # type: ignore[arg-type]
    log.info("loaded Supertonic-2 %s from %s (%d voices)", config.version, root, len(voices))
    return ModelBundle(model, config, tokenizer, voices, REAL, str(root))


def demo_bundle(config: SupertonicConfig | None = None) -> ModelBundle:
    """The demo bundle: pseudo weights on the given (default: full-size) architecture."""
    config = config or SupertonicConfig.from_dict(default_config_dict())
    model = build_model(config)
    load_pseudo_weights(model)
    return ModelBundle(
        model, config, Tokenizer.demo(), VoiceBank.demo(LANGUAGES), DEMO, "pseudo weights"
    )
