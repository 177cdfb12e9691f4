"""The engine policy a server applies (engine.serving, engine.device), without a server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import torch

from supertonic_grpc.bundle import demo_bundle
from supertonic_grpc.engine import device as devices
from supertonic_grpc.engine.serving import (
    WARMUP_TEXT_LENGTHS,
    build_engine,
    warm_up,
)
from supertonic_grpc.settings import Settings


class _Recorder:
    """Stands in for an Engine: records the warm-up shapes asked for."""

    device = torch.device("cpu")

    def __init__(self) -> None:
        self.calls: list[tuple[list[int], list[int]]] = []

    def warmup(self, sizes: Sequence[int], lengths: Sequence[int], voice: Any = None) -> float:
        self.calls.append((list(sizes), list(lengths)))
        return 0.5


def test_eager_warm_up_runs_one_short_batch() -> None:
    engine = _Recorder()
    done = warm_up(engine, voice=None, max_batch=16, compiled=False)  # type: ignore[arg-type]
    assert engine.calls == [([1], [32])]
    assert (done.seconds, done.recorded_shapes) == (0.5, 0)


def test_compiled_warm_up_covers_every_batch_size_up_to_the_maximum() -> None:
    engine = _Recorder()
    warm_up(engine, voice=None, max_batch=6, compiled=True)  # type: ignore[arg-type]
    assert engine.calls == [([1, 2, 4, 6], list(WARMUP_TEXT_LENGTHS))]


def test_settings_choose_dtype_padding_and_demo_pacing() -> None:
    model = demo_bundle().model
    demo = build_engine(model, Settings(device="cpu"), demo=True)
    assert demo.length_multiple == 1 and demo.demo_pacing is not None  # eager: exact lengths
    real = build_engine(model, Settings(device="cpu", precision="bf16"), demo=False)
    assert real.dtype == torch.float32 and real.demo_pacing is None
    assert str(real.precision) == "bf16"
    with pytest.raises(ValueError, match="--dtype"):
        build_engine(model, Settings(device="cpu", dtype="int4"), demo=True)


def test_a_cpu_has_no_device_memory_to_poll_and_its_probe_passes() -> None:
    assert devices.memory_bytes(torch.device("cpu")) == {}
    devices.probe(torch.device("cpu"))  # must not raise
