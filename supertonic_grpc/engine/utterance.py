"""What the engine works on: an utterance to speak, its settings' limits, its flight through
the stages, and what comes out."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from supertonic_grpc.voices import Voice

MIN_SPEED, MAX_SPEED, DEFAULT_SPEED = 0.5, 2.0, 1.05
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 50, 5
# The text-attention position table has 1000 rows: no sequence may be longer.
MAX_POSITIONS = 1000
# "<en>" + "</en>": tokens of the language tags around every utterance.
TAG_TOKENS = 9


class EngineError(RuntimeError):
    """The model failed on a batch; only that batch's items are affected."""


class InvalidUtterance(ValueError):
    """An utterance's settings are out of range; the message names the setting."""


@dataclass(frozen=True)
class Utterance:
    """One chunk of text to speak: token ids (tags included) plus its settings."""

    token_ids: Sequence[int]
    voice: Voice
    speed: float = DEFAULT_SPEED
    steps: int = DEFAULT_STEPS
    seed: int = 0
    # Silence before the speech: the pause at the join with the previous chunk.
    lead_silence_s: float = 0.0

    def validate(self) -> None:
        """Raise InvalidUtterance naming the first bad setting."""
        if not len(self.token_ids):
            raise InvalidUtterance("text: no tokens to speak")
        if len(self.token_ids) > MAX_POSITIONS:
            raise InvalidUtterance(f"text: {len(self.token_ids)} tokens, at most {MAX_POSITIONS}")
        if not (math.isfinite(self.speed) and MIN_SPEED <= self.speed <= MAX_SPEED):
            raise InvalidUtterance(f"speed: {self.speed} is not in {MIN_SPEED}..{MAX_SPEED}")
        if not (isinstance(self.steps, int) and MIN_STEPS <= self.steps <= MAX_STEPS):
            raise InvalidUtterance(f"steps: {self.steps} is not in {MIN_STEPS}..{MAX_STEPS}")
        if not (math.isfinite(self.lead_silence_s) and 0.0 <= self.lead_silence_s <= 2.0):
            raise InvalidUtterance(f"lead_silence_s: {self.lead_silence_s} is not in 0..2")


@dataclass
class Synthesized:
    """One utterance's audio: float32 mono at the model's sample rate."""

    audio: np.ndarray = field(repr=False)
    duration_s: float


@dataclass(eq=False)
class Flight:
    """One utterance inside the engine, from admission to its last vocoded piece.

    Tensors are kept at the item's own lengths (batch dimension 1), so each step can batch
    it with any company. `step` counts flow steps done; `vocoded_frames` latent frames
    already decoded into audio.
    """

    utterance: Utterance
    frames: int  # latent frames
    samples: int  # waveform samples of the whole utterance, trimmed to its duration
    text_emb: torch.Tensor = field(repr=False)  # [1, D, T]
    style_ttl: torch.Tensor = field(repr=False)  # [1, tokens, D]
    latent: torch.Tensor = field(repr=False)  # [1, C, frames]
    step: int = 0
    vocoded_frames: int = 0
    lead_samples: int = 0  # silence put before the first piece (not in `samples`)
    # The streamed vocoder's state after `vocoded_frames` (the engine's; None when unused).
    vocoder_state: Any = field(default=None, repr=False)

    @property
    def denoised(self) -> bool:
        """All flow steps done: ready to vocode."""
        return self.step >= self.utterance.steps

    @property
    def finished(self) -> bool:
        """Every frame vocoded."""
        return self.vocoded_frames >= self.frames

    @property
    def steps_left(self) -> int:
        return max(0, self.utterance.steps - self.step)

    @property
    def frames_left(self) -> int:
        """Latent frames not vocoded yet."""
        return max(0, self.frames - self.vocoded_frames)


@dataclass
class BatchStats:
    """What the last batch cost, for metrics and benchmarks."""

    size: int = 0
    seconds: float = 0.0
    text_len: int = 0
    latent_len: int = 0
