"""Device plumbing for accelerators, correct by construction and testable on a CPU.

- `seeded_noise`: each item's starting noise from its own generator, on the device it is used
  on (no host-side randn and copy per item).
- `to_device`: host tensors go through pinned memory with a non-blocking copy.
- `to_host`: every piece of a batch comes back in one device-to-host copy.
- `split_on_oom`: a batch that runs out of device memory is halved and retried, down to single
  items; each split is reported, so it can be counted.
- `warm_up_shapes`: runs every (rows, latent length, text length) bucket of the flow step
  enough times for CUDA-graph trees to record it before the server says SERVING.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
import torch

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
# torch.compile's cudagraph trees: the first runs are eager warm-up, a later one records.
RUNS_TO_RECORD = 3
# Padded text and latent lengths with CUDA graphs on: with the row buckets up to a batch of
# 32 that is 6 x 4 x 4 = 96 flow-step graphs (and 24 vocoder ones), all recorded at start.
GPU_LENGTH_BUCKETS = (128, 256, 512, 1000)
MAX_GRAPHS = 128


def seeded_noise(seed: int, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Standard normal noise of `shape`, a function of `seed` and the device type only."""
    gen = torch.Generator(device=device).manual_seed(int(seed) & 0xFFFF_FFFF_FFFF_FFFF)
    return torch.randn(tuple(shape), generator=gen, device=device)


def to_device(
    t: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """`t.to(device, dtype)`; from pinned memory without blocking when the target is CUDA."""
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device, dtype)
    return t.pin_memory().to(device, dtype, non_blocking=True)


def to_host(pieces: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """1-D device tensors -> float32 numpy arrays, through a single device-to-host copy."""
    if not pieces:
        return []
    if pieces[0].device.type == "cpu":
        return [np.ascontiguousarray(p.float().numpy()) for p in pieces]
    flat = torch.cat([p.reshape(-1).float() for p in pieces]).cpu().numpy()
    bounds = np.cumsum([p.numel() for p in pieces])[:-1]
    return [np.ascontiguousarray(a) for a in np.split(flat, bounds)]


def is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def split_on_oom(
    run: Callable[[Sequence[T]], list[R] | None],
    items: Sequence[T],
    on_split: Callable[[], None] = lambda: None,
) -> list[R] | None:
    """`run(items)`; on out-of-memory, run each half instead (recursively) and join the results.

    A single item that still does not fit raises. `run` must leave its items unchanged when
    it fails (the engine's step only updates flights after the forward pass succeeded).
    """
    try:
        return run(items)
    except RuntimeError as exc:
        if not is_oom(exc) or len(items) < 2:
            raise
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    on_split()
    half = len(items) // 2
    log.warning("out of memory on a batch of %d; retrying as %d + %d", len(items), half,
                len(items) - half)  # fmt: skip
    first = split_on_oom(run, items[:half], on_split)
    second = split_on_oom(run, items[half:], on_split)
    if first is None and second is None:
        return None
    return [*(first or []), *(second or [])]


def warm_up_shapes(
    step: Callable[[int, int, int], None],
    rows: Sequence[int],
    latent_lengths: Sequence[int],
    text_lengths: Sequence[int],
    max_shapes: int = 64,
    runs: int = RUNS_TO_RECORD,
) -> list[tuple[int, int, int]]:
    """Call `step(rows, latent_len, text_len)` `runs` times for every bucket combination.

    Raises ValueError past `max_shapes`: each shape is one recorded graph (memory), so the
    bucket sets must stay small. Returns the shapes, in the order they were run.
    """
    shapes = [(r, lat, txt) for r in rows for lat in latent_lengths for txt in text_lengths]
    if len(shapes) > max_shapes:
        raise ValueError(
            f"{len(shapes)} step shapes to record, more than {max_shapes}: use fewer buckets"
        )
    for shape in shapes:
        for _ in range(runs):
            step(*shape)
    return shapes


def warm_up_engine(engine: Any, max_rows: int, max_shapes: int = MAX_GRAPHS) -> int:
    """Record every flow-step and vocoder bucket of `engine` up to `max_rows` rows, on dummy
    inputs; returns how many shapes. Call it on the thread that will run the model."""
    rows = [r for r in engine.row_buckets if r <= max_rows] or [max_rows]
    lengths = list(engine.length_buckets) or [64]
    cfg = engine.model.config
    dev, dt = engine.device, engine.dtype

    def step(r: int, latent: int, text: int) -> None:
        with torch.inference_mode():
            engine._step(
                torch.zeros(r, engine.latent_channels, latent, device=dev, dtype=dt),
                torch.zeros(r, cfg.vector_field.text_dim, text, device=dev, dtype=dt),
                torch.zeros(r, cfg.text_encoder.style_tokens, cfg.text_encoder.dim, device=dev,
                            dtype=dt),
                torch.ones(r, 1, latent, device=dev, dtype=dt),
                torch.ones(r, 1, text, device=dev, dtype=dt),
                torch.zeros(r, device=dev, dtype=dt),
                torch.ones(r, device=dev, dtype=dt),
            )  # fmt: skip

    def vocode(r: int, latent: int, _text: int) -> None:
        with torch.inference_mode():
            engine._vocoder(torch.zeros(r, engine.latent_channels, latent, device=dev, dtype=dt))

    n = len(warm_up_shapes(step, rows, lengths, lengths, max_shapes))
    n += len(warm_up_shapes(vocode, rows, lengths, [0], max_shapes))
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return n
