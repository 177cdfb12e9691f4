"""The scheduler's learned engine cost: what a flow step, a vocoded piece and an admission
take, so deadlines and a newcomer's remaining time can be estimated in seconds.

A stage's time is affine in its size: a fixed part (kernel launches, the text side, Python
dispatch) plus a part per padded frame. A single ratio per frame, learned from a mix of a
newcomer's small steps and later chunks' large ones, overstated large steps about twice on
the 2-core CPU, so later chunks looked urgent early and took steps from newcomers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Latent frames of left context a vocoded piece is decoded with, for engines that do not
# say (`Engine.vocoder_context`, derived from the vocoder's receptive field, is read first).
VOCODER_CONTEXT_FRAMES = 20


@dataclass
class Affine:
    """seconds = fixed_s + per_frame_s x frames, fitted online by least squares over
    exponentially decayed samples. Until the samples spread over sizes, only the scale
    is learned (both parts in proportion), so a run of same-sized steps cannot invent a
    slope."""

    fixed_s: float
    per_frame_s: float
    min_frames: int = 32  # smaller sizes cost as much as this (a floor, for the prior)
    decay: float = 0.95
    _sums: list[float] = field(default_factory=lambda: [0.0] * 5, repr=False)

    def __call__(self, frames: float) -> float:
        return self.fixed_s + self.per_frame_s * max(self.min_frames, frames)

    def learn(self, frames: float, seconds: float) -> None:
        x, y, d = float(max(self.min_frames, frames)), max(0.0, seconds), self.decay
        s = self._sums
        for i, v in enumerate((1.0, x, x * x, y, x * y)):
            s[i] = d * s[i] + v
        n, sx, sxx, sy, sxy = s
        mean_x, mean_y = sx / n, sy / n
        var_x = sxx / n - mean_x * mean_x
        if var_x > (0.25 * mean_x) ** 2:
            slope = (sxy / n - mean_x * mean_y) / var_x
            fixed = mean_y - slope * mean_x
            if slope > 0 and fixed >= 0:
                self.fixed_s, self.per_frame_s = fixed, slope
                return
        predicted = self.fixed_s + self.per_frame_s * mean_x
        if predicted > 0 and mean_y > 0:
            scale = mean_y / predicted
            self.fixed_s *= scale
            self.per_frame_s *= scale


@dataclass
class CostModel:
    """Learned engine cost of a flow step (by padded frames: rows x longest latent), of a
    vocoded piece (by frames decoded, context included) and of admission (by tokens). A
    chunk's cost therefore grows with its steps, and nobody's steps change the estimate
    for anyone else's."""

    step: Affine = field(default_factory=lambda: Affine(0.0, 5e-4))
    vocode: Affine = field(default_factory=lambda: Affine(0.0, 1e-3, min_frames=1))
    admit_s_per_token: float = 2e-4

    def step_s(self, rows: int, frames: int) -> float:
        return self.step(rows * frames)

    def vocode_s(self, frames: int) -> float:
        """One piece of `frames` frames, its context included."""
        return self.vocode(frames)

    def learn_step(self, rows: int, frames: int, seconds: float) -> None:
        self.step.learn(rows * frames, seconds)

    def learn_vocode(self, pieces: int, frames: int, seconds: float) -> None:
        """One engine call that decoded `pieces` pieces of `frames` frames in all."""
        if pieces > 0:
            self.vocode.learn(frames / pieces, seconds / pieces)

    def learn_admit(self, tokens: int, seconds: float) -> None:
        sample = seconds / max(1, tokens)
        self.admit_s_per_token = 0.8 * self.admit_s_per_token + 0.2 * sample
