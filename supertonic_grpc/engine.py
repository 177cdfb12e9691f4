"""One batched forward pass over many utterances of different lengths, voices and settings.

The engine pads and masks text and latents, divides each item's duration by its speed,
runs each item for its own number of flow steps (items that reach their last step stop
changing), draws seeded noise per item so results do not depend on batch company, and
trims each waveform to its predicted duration. It knows nothing of queues or gRPC.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from supertonic_grpc import backends
from supertonic_grpc.model import Supertonic
from supertonic_grpc.voices import Voice

log = logging.getLogger(__name__)

MIN_SPEED, MAX_SPEED, DEFAULT_SPEED = 0.5, 2.0, 1.05
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 50, 5
# The text-attention position table has 1000 rows: no sequence may be longer.
MAX_POSITIONS = 1000
# "<en>" + "</en>": tokens of the language tags around every utterance.
TAG_TOKENS = 9
# A natural speaking rate, for demo pacing: about 15 characters per second.
DEMO_CHARS_PER_SECOND = 15.0


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


@dataclass
class Synthesized:
    """One utterance's audio: float32 mono at the model's sample rate."""

    audio: np.ndarray = field(repr=False)
    duration_s: float


@dataclass
class BatchStats:
    """What the last batch cost, for metrics and benchmarks."""

    size: int = 0
    seconds: float = 0.0
    text_len: int = 0
    latent_len: int = 0


def pick_device(name: str = "auto") -> torch.device:
    """ "auto" means CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Engine:
    """Runs the four stages for a batch of utterances in one forward pass each."""

    def __init__(
        self,
        model: Supertonic,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        compile_mode: str = "default",
        length_multiple: int = 1,
        demo_pacing: float | None = None,
        precision: str = "fp32",
    ) -> None:
        self.device = pick_device(device) if isinstance(device, str) else device
        if self.device.type == "cpu":
            # Denormal floats (from near-silent activations) make x86 arithmetic many times
            # slower; flushing them to zero changes nothing audible.
            torch.set_flush_denormal(True)
        if dtype != torch.float32 and self.device.type == "cpu":
            raise ValueError("reduced precision is for GPUs; use float32 on CPU")
        self.dtype = dtype
        self.model = model.to(self.device, dtype).eval()
        # Layouts, packed weights and precision: see supertonic_grpc.backends. The model is
        # prepared in place, so it belongs to this engine from here on.
        self.precision = backends.prepare(self.model, self.device, precision, compile)
        cfg = model.config
        self.sample_rate = cfg.sample_rate
        self.frame_samples = cfg.samples_per_frame
        self.latent_channels = cfg.latent_channels
        # Padding lengths to a multiple bounds how many shapes a compiled graph meets.
        self.length_multiple = max(1, length_multiple)
        self.compiled = compile
        # Pseudo weights predict ~1 s for any text; in demo mode the duration comes from a
        # speaking rate instead (characters per second), so latent lengths and therefore
        # every timing match what the real model does with the same text.
        self.demo_pacing = demo_pacing
        self.last_batch = BatchStats()
        stages = (
            model.text_encoder,
            model.duration_predictor,
            model.vector_estimator,
            model.vocoder,
        )
        if compile:
            # "reduce-overhead" adds CUDA graphs on GPU; shapes are bucketed by
            # length_multiple so only a bounded set of graphs is ever recorded.
            dynamic = compile_mode == "default"
            compiled = [torch.compile(s, mode=compile_mode, dynamic=dynamic) for s in stages]
            # The vocoder stays eager with dynamic shapes: inductor (torch 2.13) fails on its
            # dilated causal convolutions ("vr must not be None"); with bucketed static
            # shapes (reduce-overhead, CUDA graphs) it compiles.
            if dynamic:
                compiled[3] = stages[3]
            stages = tuple(compiled)
        self._text_encoder, self._duration, self._step, self._vocoder = stages

    @torch.inference_mode()
    def synthesize(self, items: Sequence[Utterance]) -> list[Synthesized]:
        """Synthesize every item in one batch. Raises InvalidUtterance or EngineError."""
        if not items:
            return []
        for item in items:
            item.validate()
        start = time.perf_counter()
        try:
            out = self._run(items)
        except (RuntimeError, ValueError, IndexError) as exc:
            raise EngineError(f"model failure on a batch of {len(items)}: {exc}") from exc
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_batch.seconds = time.perf_counter() - start
        return out

    def _run(self, items: Sequence[Utterance]) -> list[Synthesized]:
        dev, dt = self.device, self.dtype
        b = len(items)
        lengths = [len(u.token_ids) for u in items]
        t_max = _round_up(max(lengths), self.length_multiple)
        ids = torch.zeros(b, t_max, dtype=torch.long)
        text_mask = torch.zeros(b, 1, t_max)
        for i, u in enumerate(items):
            ids[i, : lengths[i]] = torch.as_tensor(list(u.token_ids), dtype=torch.long)
            text_mask[i, :, : lengths[i]] = 1.0
        ids, text_mask = ids.to(dev), text_mask.to(dev, dt)
        style_ttl = torch.from_numpy(np.stack([u.voice.style_ttl for u in items])).to(dev, dt)
        style_dp = torch.from_numpy(np.stack([u.voice.style_dp for u in items])).to(dev, dt)
        speed = torch.tensor([u.speed for u in items], device=dev, dtype=torch.float32)

        duration = self._duration(ids, style_dp, text_mask).float()
        if self.demo_pacing is not None:
            chars = torch.tensor(lengths, device=dev, dtype=torch.float32) - TAG_TOKENS
            duration = (chars / self.demo_pacing).clamp(min=0.3)
        duration = duration / speed
        text_emb = self._text_encoder(ids, style_ttl, text_mask)

        frames_f = (duration * self.sample_rate / self.frame_samples).ceil().clamp(1, MAX_POSITIONS)
        frames = [int(f) for f in frames_f.tolist()]
        seconds = [
            min(float(d), f * self.frame_samples / self.sample_rate)
            for d, f in zip(duration.tolist(), frames, strict=True)
        ]
        l_max = min(_round_up(max(frames), self.length_multiple), MAX_POSITIONS)
        latent_mask = torch.zeros(b, 1, l_max)
        noise = torch.zeros(b, self.latent_channels, l_max)
        for i, u in enumerate(items):
            latent_mask[i, :, : frames[i]] = 1.0
            gen = torch.Generator().manual_seed(int(u.seed) & 0xFFFF_FFFF_FFFF_FFFF)
            noise[i, :, : frames[i]] = torch.randn(self.latent_channels, frames[i], generator=gen)
        latent_mask = latent_mask.to(dev, dt)
        x = noise.to(dev, dt)

        steps = torch.tensor([u.steps for u in items], device=dev, dtype=dt)
        max_steps = max(u.steps for u in items)
        for s in range(max_steps):
            active = [i for i, u in enumerate(items) if u.steps > s]
            current = torch.full((len(active),), float(s), device=dev, dtype=dt)
            if len(active) == b:
                x = self._step(x, text_emb, style_ttl, latent_mask, text_mask, current, steps)
            else:
                # Finished items keep their latent; only the rest pay for this step.
                idx = torch.tensor(active, device=dev)
                x = x.index_copy(
                    0,
                    idx,
                    self._step(
                        x[idx],
                        text_emb[idx],
                        style_ttl[idx],
                        latent_mask[idx],
                        text_mask[idx],
                        current,
                        steps[idx],
                    ),
                )
        self.last_batch = BatchStats(b, 0.0, t_max, l_max)
        return [Synthesized(w, len(w) / self.sample_rate) for w in self._vocode(x, frames, seconds)]

    def _vocode(self, x: torch.Tensor, frames: list[int], seconds: list[float]) -> list[np.ndarray]:
        """Latents -> trimmed waveforms. The vocoder is causal, so an item decoded alone at
        its own length equals the same item decoded in a padded batch."""
        if self.device.type == "cpu":
            # On CPU the wide vocoder layers run faster item by item (cache-sized
            # activations), and no time goes into padded frames.
            wavs = [self._vocoder(x[i : i + 1, :, : frames[i]])[0] for i in range(len(frames))]
        else:
            wavs = list(self._vocoder(x))
        out = []
        for w, sec in zip(wavs, seconds, strict=True):
            n = min(int(sec * self.sample_rate), w.shape[0])
            out.append(np.ascontiguousarray(w[:n].float().cpu().numpy()))
        return out

    def warmup(
        self,
        batch_sizes: Sequence[int] = (1,),
        text_lengths: Sequence[int] = (64,),
        voice: Voice | None = None,
        steps: int = 2,
    ) -> float:
        """Run dummy batches over the given shapes (compiles them); returns seconds spent."""
        if voice is None:
            raise ValueError("warmup needs a voice")
        start = time.perf_counter()
        for n in batch_sizes:
            for length in text_lengths:
                items = [Utterance([1] * length, voice, steps=steps, seed=i) for i in range(n)]
                self.synthesize(items)
        return time.perf_counter() - start
