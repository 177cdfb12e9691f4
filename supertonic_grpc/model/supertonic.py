"""The four Supertonic-2 networks under one module, keyed as the published state dict."""

from __future__ import annotations

from typing import Any

from torch import nn

from supertonic_grpc.model.config import SupertonicConfig
from supertonic_grpc.model.duration import DurationPredictor
from supertonic_grpc.model.text_encoder import TextEncoder
from supertonic_grpc.model.vector_estimator import VectorEstimator
from supertonic_grpc.model.vocoder import Vocoder


class Supertonic(nn.Module):
    """Text encoder, duration predictor, vector estimator and vocoder.

    Each stage is called with the published inputs in the published order (see the stage
    classes). The pipeline that strings them together lives in the engine.
    """

    def __init__(self, cfg: SupertonicConfig) -> None:
        super().__init__()
        self.config = cfg
        self.text_encoder = TextEncoder(cfg.text_encoder)
        self.duration_predictor = DurationPredictor(cfg.duration)
        self.vector_estimator = VectorEstimator(cfg.vector_field)
        self.vocoder = Vocoder(cfg.vocoder)


def build_model(config: dict[str, Any] | SupertonicConfig) -> Supertonic:
    """Build the model (in eval mode, untrained weights) from a parsed `tts.json`."""
    cfg = config if isinstance(config, SupertonicConfig) else SupertonicConfig.from_dict(config)
    return Supertonic(cfg).eval()
