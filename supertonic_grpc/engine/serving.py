"""The engine a server runs: its settings turned into an `Engine` (dtype, precision, padding
for compiled graphs, demo pacing), the shapes the warm-up runs through, and the device's
health probe and memory. The server wires these in; it decides none of them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from supertonic_grpc.backends import gpu, parse_precision
from supertonic_grpc.engine.core import DEMO_CHARS_PER_SECOND, Engine
from supertonic_grpc.engine.device import pick_device
from supertonic_grpc.model import Supertonic
from supertonic_grpc.settings import Settings
from supertonic_grpc.voices import Voice

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Compiled graphs meet lengths padded to a multiple of this, so they recompile rarely.
COMPILED_LENGTH_MULTIPLE = 16
# Shapes the warm-up runs through, so compiled graphs exist before the first listener.
WARMUP_BATCHES = (1, 2, 4, 8)
WARMUP_TEXT_LENGTHS = (32, 128, 320)


def build_engine(
    model: Supertonic, settings: Settings, *, demo: bool, cpu_threads: int | None = None
) -> Engine:
    """The engine for these settings (device, dtype, precision, compile, demo pacing for the
    pseudo weights); `cpu_threads` for the scheduler thread when the main thread reserved
    them. Raises ValueError naming the flag at fault."""
    device = pick_device(settings.device)
    if settings.dtype not in DTYPES:
        raise ValueError(f"--dtype: {settings.dtype!r} is not one of {', '.join(DTYPES)}")
    try:
        precision = parse_precision(settings.precision)
    except ValueError as exc:
        raise ValueError(f"--precision: {exc}") from None
    return Engine(
        model,
        device=device,
        dtype=DTYPES[settings.dtype],
        compile=settings.compile,
        compile_mode=settings.compile_mode,
        length_multiple=COMPILED_LENGTH_MULTIPLE if settings.compile else 1,
        # CUDA graphs: a small fixed set of lengths, all recorded before SERVING.
        length_buckets=gpu.GPU_LENGTH_BUCKETS if settings.compile and device.type == "cuda" else (),
        demo_pacing=DEMO_CHARS_PER_SECOND if demo else None,
        precision=precision,
        cpu_threads=cpu_threads,
    )


@dataclass(frozen=True)
class WarmUp:
    """What a warm-up ran: batch sizes, text lengths, seconds, and bucketed shapes recorded
    (CUDA graphs; 0 elsewhere)."""

    batch_sizes: Sequence[int]
    text_lengths: Sequence[int]
    seconds: float
    recorded_shapes: int = 0


def warm_up(engine: Engine, voice: Voice, *, max_batch: int, compiled: bool) -> WarmUp:
    """Run the shapes a server meets before it serves: with torch.compile every batch size
    up to `max_batch` at a few text lengths (then, on CUDA, every bucketed shape); eager,
    one short batch. Call it on the thread that runs the model."""
    if compiled:
        sizes = sorted({b for b in WARMUP_BATCHES if b <= max_batch} | {max_batch})
        lengths: Sequence[int] = WARMUP_TEXT_LENGTHS
    else:
        sizes, lengths = [1], (32,)
    seconds = engine.warmup(sizes, lengths, voice=voice)
    recorded = 0
    if compiled and engine.device.type == "cuda":
        recorded = gpu.warm_up_engine(engine, max_batch)
    return WarmUp(sizes, lengths, seconds, recorded)
