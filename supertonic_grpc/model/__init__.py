"""Supertonic-2 in PyTorch: the four networks, their config and their weights."""

from supertonic_grpc.model.config import SupertonicConfig
from supertonic_grpc.model.supertonic import Supertonic, build_model

__all__ = ["Supertonic", "SupertonicConfig", "build_model"]
