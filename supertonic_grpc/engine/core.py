"""Batched forward passes over many utterances of different lengths, voices and settings.

The engine pads and masks text and latents, divides each item's duration by its speed,
runs each item for its own number of flow steps, draws seeded noise per item so results
do not depend on batch company, and trims each waveform to its predicted duration.

Its unit of work is one stage over a set of `Flight`s (utterances in progress): admission
(text encoder + duration), one flow step (each flight at its own step index), or one
vocoded piece. A scheduler interleaves these; `synthesize` runs them back to back for a
whole batch. It knows nothing of queues or gRPC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch

from supertonic_grpc import backends
from supertonic_grpc.backends import convnext
from supertonic_grpc.backends.attention import same_objects
from supertonic_grpc.backends.gpu import seeded_noise, split_on_oom, to_device, to_host
from supertonic_grpc.engine.device import pick_device
from supertonic_grpc.engine.utterance import (
    MAX_POSITIONS,
    TAG_TOKENS,
    BatchStats,
    EngineError,
    Flight,
    Synthesized,
    Utterance,
)
from supertonic_grpc.model import Supertonic
from supertonic_grpc.model.layers import CausalConv
from supertonic_grpc.voices import Voice

log = logging.getLogger(__name__)

# Batch rows a GPU step is padded up to, so compiled graphs and CUDA graphs are reused.
DEFAULT_GPU_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
# A natural speaking rate, for demo pacing: about 15 characters per second.
DEMO_CHARS_PER_SECOND = 15.0

_T = TypeVar("_T")
# A flow step's text embeddings, styles, latent mask and text mask.
_Conditions = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


class Engine:
    """Runs the four stages over batches of utterances, in units a scheduler can interleave.

    The step API: `admit` (text encoder + duration + seeded noise) turns utterances into
    `Flight`s; `step` advances every given flight by one flow step, each at its own step
    index, whatever company it has; `vocode` decodes the next piece of a denoised flight.
    `synthesize` strings the three together for a whole batch (benchmarks, the CLI).
    """

    def __init__(
        self,
        model: Supertonic,
        *,
        device: str | torch.device = "auto",
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        compile_mode: str = "default",
        length_multiple: int = 1,
        row_buckets: Sequence[int] | None = None,
        length_buckets: Sequence[int] = (),
        demo_pacing: float | None = None,
        precision: str = "fp32",
        noise_on_device: bool | None = None,
        cpu_threads: int | None = None,
    ) -> None:
        self.device = pick_device(device) if isinstance(device, str) else device
        # Intra-op threads for the thread that runs the model (see `reserve_cpu_threads`).
        self.cpu_threads = cpu_threads
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
        # Starting noise from each item's generator on the device itself (default on CUDA);
        # off, it is drawn on the CPU, as a CPU run draws it.
        if noise_on_device is None:
            noise_on_device = self.device.type == "cuda"
        self.noise_device = self.device if noise_on_device else torch.device("cpu")
        # Batches halved and retried after running out of device memory (a metric).
        self.oom_splits = 0
        self.on_oom_split: Callable[[], None] = lambda: None
        cfg = model.config
        self.sample_rate = cfg.sample_rate
        self.frame_samples = cfg.samples_per_frame
        self.latent_channels = cfg.latent_channels
        # Padding lengths to a multiple bounds how many shapes a compiled graph meets.
        self.length_multiple = max(1, length_multiple)
        # Or to the smallest of a few fixed lengths (GPU + CUDA graphs: one graph per bucket).
        self.length_buckets = tuple(sorted({min(int(n), MAX_POSITIONS) for n in length_buckets}))
        # Batch rows padded up to a bucket (masked rows, not gathered ones): with lengths
        # bucketed too, a compiled graph or CUDA graph meets a small fixed set of shapes.
        # On CPU a padded row costs as much as a real one, so the default is exact rows.
        if row_buckets is None:
            row_buckets = DEFAULT_GPU_ROW_BUCKETS if self.device.type == "cuda" else ()
        self.row_buckets = tuple(sorted(set(int(r) for r in row_buckets)))
        self.compiled = compile
        # Pseudo weights predict ~1 s for any text; in demo mode the duration comes from a
        # speaking rate instead (characters per second), so latent lengths and therefore
        # every timing match what the real model does with the same text.
        self.demo_pacing = demo_pacing
        self.last_batch = BatchStats()
        # The last flow step's batch and its conditions (`_step_conditions`).
        self._conditions: tuple[tuple[Flight, ...], int, _Conditions] | None = None
        # On CPU the prepared decoder carries each flight's convolution tails from piece to
        # piece, so a piece decodes only its own frames. Otherwise (GPU: batched, fixed
        # shapes for CUDA graphs) each piece re-decodes `vocoder_context` latent frames
        # before it, the vocoder's receptive field (rounded up), which makes it exact too.
        self._streaming = (
            convnext.streaming_decoder(model.vocoder.decoder) if self.device.type == "cpu" else None
        )
        reach = sum(m.pad for m in model.vocoder.modules() if isinstance(m, CausalConv))
        self.vocoder_context = 0 if self._streaming else -(-reach // cfg.compress_factor)
        # Each stage as a callable: the module itself, or its torch.compile'd wrapper.
        stages: tuple[Callable[..., torch.Tensor], ...] = (
            model.text_encoder,
            model.duration_predictor,
            model.vector_estimator,
            model.vocoder,
        )
        if compile:
            # "reduce-overhead" adds CUDA graphs on GPU; shapes are bucketed by
            # length_multiple and row_buckets so only a bounded set of graphs is recorded.
            dynamic = compile_mode == "default"
            compiled = [torch.compile(s, mode=compile_mode, dynamic=dynamic) for s in stages]
            # The vocoder stays eager with dynamic shapes: inductor (torch 2.13) fails on its
            # dilated causal convolutions ("vr must not be None"); with bucketed static
            # shapes (reduce-overhead, CUDA graphs) it compiles.
            if dynamic:
                compiled[3] = stages[3]
            stages = tuple(compiled)
        self._text_encoder, self._duration, self._step, self._vocoder = stages

    # --- the step API ----------------------------------------------------------------------

    def bind_thread(self) -> None:
        """Make the calling thread the model's: it gets `cpu_threads` intra-op threads.
        The scheduler calls this once, on its own thread, before the first model call."""
        if self.cpu_threads:
            torch.set_num_threads(self.cpu_threads)

    @torch.inference_mode()
    def admit(self, items: Sequence[Utterance]) -> list[Flight]:
        """Text encoder + duration for new utterances, in one batch; returns their flights.
        Raises InvalidUtterance or EngineError."""
        for item in items:
            item.validate()
        if not items:
            return []
        return self._guard(len(items), lambda: self._admit(items))

    @torch.inference_mode()
    def step(self, flights: Sequence[Flight]) -> None:
        """One flow step for every flight not yet denoised, each at its own step index.
        Raises EngineError (the flights are then unchanged)."""
        active = [f for f in flights if not f.denoised]
        if active:
            self._guard(len(active), lambda: split_on_oom(self._step_batch, active, self._split))

    @torch.inference_mode()
    def vocode(self, pieces: Sequence[tuple[Flight, int]]) -> list[np.ndarray]:
        """Decode the next `frames` latent frames of each denoised flight: its next piece
        of audio (trimmed to the predicted duration at the end). Raises EngineError."""
        for flight, frames in pieces:
            if not flight.denoised:
                raise ValueError("vocode: the flight has flow steps left")
            if frames < 1:
                raise ValueError(f"vocode: frames must be >= 1, got {frames}")
        if not pieces:
            return []
        out = self._guard(
            len(pieces), lambda: split_on_oom(self._vocode_pieces, pieces, self._split)
        )
        return out or []

    @torch.inference_mode()
    def synthesize(self, items: Sequence[Utterance]) -> list[Synthesized]:
        """Synthesize every item in one batch. Raises InvalidUtterance or EngineError."""
        if not items:
            return []
        for item in items:
            item.validate()
        start = time.perf_counter()
        flights = self.admit(items)
        while not all(f.denoised for f in flights):
            self.step(flights)
        wavs = self.vocode([(f, f.frames) for f in flights])
        t_max = max(len(u.token_ids) for u in items)
        l_max = max(f.frames for f in flights)
        self.last_batch = BatchStats(len(items), time.perf_counter() - start, t_max, l_max)
        return [Synthesized(w, len(w) / self.sample_rate) for w in wavs]

    # --- internals ---------------------------------------------------------------------------

    def _guard(self, n: int, run: Callable[[], _T]) -> _T:
        try:
            out = run()
        except (RuntimeError, ValueError, IndexError) as exc:
            raise EngineError(f"model failure on a batch of {n}: {exc}") from exc
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return out

    def _split(self) -> None:
        self.oom_splits += 1
        self.on_oom_split()

    def _pad_length(self, n: int) -> int:
        """Padded length for `n` positions: a length bucket, else a multiple."""
        return next((b for b in self.length_buckets if b >= n), _round_up(n, self.length_multiple))

    def _rows(self, n: int) -> int:
        """Batch rows for `n` items: the smallest bucket that holds them, else exactly n."""
        return next((r for r in self.row_buckets if r >= n), n)

    def _admit(self, items: Sequence[Utterance]) -> list[Flight]:
        dev, dt = self.device, self.dtype
        b = len(items)
        lengths = [len(u.token_ids) for u in items]
        t_max = self._pad_length(max(lengths))
        ids = torch.zeros(b, t_max, dtype=torch.long)
        text_mask = torch.zeros(b, 1, t_max)
        for i, u in enumerate(items):
            ids[i, : lengths[i]] = torch.as_tensor(list(u.token_ids), dtype=torch.long)
            text_mask[i, :, : lengths[i]] = 1.0
        ids, text_mask = to_device(ids, dev), to_device(text_mask, dev, dt)
        style_ttl = to_device(
            torch.from_numpy(np.stack([u.voice.style_ttl for u in items])), dev, dt
        )
        style_dp = to_device(torch.from_numpy(np.stack([u.voice.style_dp for u in items])), dev, dt)
        speed = torch.tensor([u.speed for u in items], device=dev, dtype=torch.float32)

        duration = self._duration(ids, style_dp, text_mask).float()
        if self.demo_pacing is not None:
            chars = torch.tensor(lengths, device=dev, dtype=torch.float32) - TAG_TOKENS
            duration = (chars / self.demo_pacing).clamp(min=0.3)
        duration = duration / speed
        text_emb = self._text_encoder(ids, style_ttl, text_mask)

        frames_f = (duration * self.sample_rate / self.frame_samples).ceil()
        flights = []
        for i, (u, d, f) in enumerate(
            zip(items, duration.tolist(), frames_f.tolist(), strict=True)
        ):
            if f > MAX_POSITIONS:
                # The chunker bounds chunks so this does not happen; if it does, say so
                # rather than squeeze the speech silently.
                log.warning("chunk needs %d latent frames; clamped to %d", f, MAX_POSITIONS)
            frames = int(min(max(f, 1), MAX_POSITIONS))
            seconds = min(float(d), frames * self.frame_samples / self.sample_rate)
            noise = seeded_noise(u.seed, (1, self.latent_channels, frames), self.noise_device)
            flights.append(
                Flight(
                    utterance=u,
                    frames=frames,
                    samples=int(seconds * self.sample_rate),
                    text_emb=text_emb[i : i + 1, :, : lengths[i]].clone(),
                    style_ttl=style_ttl[i : i + 1],
                    latent=noise.to(dev, dt),
                    lead_samples=round(u.lead_silence_s * self.sample_rate),
                )
            )
        return flights

    def _step_batch(self, flights: Sequence[Flight]) -> None:
        dev, dt = self.device, self.dtype
        rows = self._rows(len(flights))
        text_emb, style, latent_mask, text_mask = self._step_conditions(flights, rows)
        x = torch.zeros(rows, self.latent_channels, latent_mask.shape[-1], device=dev, dtype=dt)
        current = torch.zeros(rows, device=dev, dtype=dt)
        total = torch.ones(rows, device=dev, dtype=dt)
        for i, f in enumerate(flights):
            x[i, :, : f.frames] = f.latent[0]
            current[i] = float(f.step)
            total[i] = float(f.utterance.steps)
        out = self._step(x, text_emb, style, latent_mask, text_mask, current, total)
        for i, f in enumerate(flights):
            f.latent = out[i : i + 1, :, : f.frames].clone()
            f.step += 1

    def _step_conditions(self, flights: Sequence[Flight], rows: int) -> _Conditions:
        """The batch's text embeddings, styles, latent and text masks: what does not change
        between its flow steps. The same flights in the same rows get the very same tensors
        back (never written to after this), so the backends' attention blocks compute the
        text side once for all of a batch's steps (see `backends.attention`)."""
        last = self._conditions
        if last is not None and last[1] == rows and same_objects(last[0], flights):
            return last[2]
        dev, dt = self.device, self.dtype
        n = len(flights)
        t_max = self._pad_length(max(f.text_emb.shape[-1] for f in flights))
        l_max = min(self._pad_length(max(f.frames for f in flights)), MAX_POSITIONS)
        first = flights[0]
        text_emb = torch.zeros(rows, first.text_emb.shape[1], t_max, device=dev, dtype=dt)
        style = torch.zeros((rows, *first.style_ttl.shape[1:]), device=dev, dtype=dt)
        latent_mask = torch.zeros(rows, 1, l_max, device=dev, dtype=dt)
        text_mask = torch.zeros(rows, 1, t_max, device=dev, dtype=dt)
        # Padding rows: one unmasked text position keeps their attention finite; their
        # latent mask is zero, so their output is zero and nobody reads it.
        text_mask[n:, :, :1] = 1.0
        for i, f in enumerate(flights):
            t = f.text_emb.shape[-1]
            text_emb[i, :, :t] = f.text_emb[0]
            text_mask[i, :, :t] = 1.0
            latent_mask[i, :, : f.frames] = 1.0
            style[i] = f.style_ttl[0]
        conditions = (text_emb, style, latent_mask, text_mask)
        self._conditions = (tuple(flights), rows, conditions)
        return conditions

    def _vocode_pieces(self, pieces: Sequence[tuple[Flight, int]]) -> list[np.ndarray]:
        """Each piece equals the same samples of the whole chunk decoded at once (the
        vocoder is causal): streamed from the flight's decoder state, or decoded from
        `vocoder_context` frames before it."""
        windows = []
        for flight, frames in pieces:
            start = flight.vocoded_frames
            end = min(flight.frames, start + frames)
            lo = max(0, start - self.vocoder_context)
            windows.append((flight, lo, start, end))
        states: list[convnext.DecoderState | None] = []
        if self._streaming is not None:
            wavs, states = self._stream_pieces(windows)
        elif self.device.type == "cpu":
            wavs = [self._vocoder(f.latent[:, :, lo:end])[0] for f, lo, _, end in windows]
        else:
            # Right padding never reaches earlier samples of a causal decoder.
            width = self._pad_length(max(end - lo for _, lo, _, end in windows))
            batch = torch.zeros(
                self._rows(len(windows)), self.latent_channels, width, device=self.device,
                dtype=self.dtype,
            )  # fmt: skip
            for i, (f, lo, _, end) in enumerate(windows):
                batch[i, :, : end - lo] = f.latent[0, :, lo:end]
            wavs = list(self._vocoder(batch))
        pieces_out = []
        for w, (f, lo, start, end) in zip(wavs, windows, strict=False):
            first = (start - lo) * self.frame_samples
            stop = min(f.samples, end * self.frame_samples) - lo * self.frame_samples
            pieces_out.append(w[first : max(first, stop)])
        out = to_host(pieces_out)  # one device-to-host copy for the whole batch
        for i, (f, _, start, end) in enumerate(windows):
            if start == 0 and f.lead_samples:
                out[i] = np.concatenate([np.zeros(f.lead_samples, np.float32), out[i]])
            f.vocoded_frames = end
            if states:
                f.vocoder_state = states[i]
        return out

    def _stream_pieces(
        self, windows: Sequence[tuple[Flight, int, int, int]]
    ) -> tuple[list[torch.Tensor], list[convnext.DecoderState | None]]:
        """Pieces decoded from each flight's carried state (CPU): pieces of one length
        that all start their chunk, or all carry a state, in one call, so the vocoder's
        weights are read once (two first pieces: 31 ms together, 40 ms apart); no time goes
        into padded frames. The states are kept only once every piece is decoded, so a
        failed call leaves every flight as it was."""
        assert self._streaming is not None
        calls: dict[tuple[int, bool], list[int]] = {}
        for i, (f, _, start, end) in enumerate(windows):
            calls.setdefault((end - start, f.vocoder_state is None), []).append(i)
        wavs: list[torch.Tensor] = [torch.empty(0)] * len(windows)
        states: list[convnext.DecoderState | None] = [None] * len(windows)
        for (_, fresh), items in calls.items():
            group = [windows[i] for i in items]
            z = torch.cat([f.latent[:, :, start:end] for f, _, start, end in group])
            carried = None
            if not fresh:
                tails = [f.vocoder_state.tails for f, *_ in group]
                carried = convnext.DecoderState([torch.cat(t) for t in zip(*tails, strict=True)])
            wav, state = self._streaming.stream(self.model.vocoder.decompress(z), carried)
            for k, (i, (f, _, _, end)) in enumerate(zip(items, group, strict=True)):
                wavs[i] = wav[k]
                if end < f.frames:
                    states[i] = convnext.DecoderState([t[k : k + 1].clone() for t in state.tails])
        return wavs, states

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
