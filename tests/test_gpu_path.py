"""The accelerator path's plumbing, checked on a CPU: out-of-memory split and retry, one
device-to-host copy, seeded noise, bucket warm-up bounds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supertonic_grpc.backends import gpu
from supertonic_grpc.bundle import ModelBundle, demo_bundle
from supertonic_grpc.engine import Engine, Utterance


class FakeOomEngine:
    """Runs batches of at most `fits` items; larger ones raise CUDA's out-of-memory error."""

    def __init__(self, fits: int) -> None:
        self.fits = fits
        self.calls: list[list[int]] = []

    def run(self, items: list[int]) -> list[int]:
        self.calls.append(list(items))
        if len(items) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [i * 10 for i in items]


def test_out_of_memory_splits_the_batch_and_keeps_the_order() -> None:
    fake, splits = FakeOomEngine(fits=2), []
    out = gpu.split_on_oom(fake.run, list(range(7)), lambda: splits.append(1))
    assert out == [i * 10 for i in range(7)]
    assert len(splits) == 3  # 7 -> 3 + 4 -> (3 -> 1 + 2) + (4 -> 2 + 2)
    assert fake.calls == [
        [0, 1, 2, 3, 4, 5, 6], [0, 1, 2], [0], [1, 2], [3, 4, 5, 6], [3, 4], [5, 6],
    ]  # fmt: skip


def test_a_single_item_that_does_not_fit_raises() -> None:
    with pytest.raises(torch.OutOfMemoryError):
        gpu.split_on_oom(FakeOomEngine(fits=0).run, [1, 2])


def test_other_errors_are_not_retried() -> None:
    calls = []

    def broken(items: list[int]) -> list[int]:
        calls.append(items)
        raise RuntimeError("shape mismatch")

    with pytest.raises(RuntimeError, match="shape mismatch"):
        gpu.split_on_oom(broken, [1, 2, 3])
    assert len(calls) == 1


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return demo_bundle()


@pytest.mark.slow
def test_engine_survives_out_of_memory_with_the_same_audio_and_counts_it(
    bundle: ModelBundle,
) -> None:
    voice = bundle.voices.get("M1")
    items = [
        Utterance([7 + i % 40 for i in range(n)], voice, steps=2, seed=n) for n in (12, 30, 20)
    ]
    engine = Engine(bundle.model, device="cpu")
    want = engine.synthesize(items)
    real_step, counted = engine._step, []

    def step_that_fits_one_row(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return real_step(x, *rest)

    engine._step = step_that_fits_one_row
    engine.on_oom_split = lambda: counted.append(1)
    got = engine.synthesize(items)
    assert engine.oom_splits == len(counted) == 2 * 2  # per flow step: 3 -> 1 + 2 -> 1 + 1
    for a, b in zip(want, got, strict=True):
        assert np.abs(a.audio - b.audio).max() <= 1e-5


def test_to_host_returns_each_piece() -> None:
    pieces = [torch.arange(3.0), torch.zeros(0), torch.ones(2)]
    out = gpu.to_host(pieces)
    assert [a.tolist() for a in out] == [[0.0, 1.0, 2.0], [], [1.0, 1.0]]
    assert all(a.dtype == np.float32 for a in out)


def test_seeded_noise_depends_on_the_seed_only() -> None:
    cpu = torch.device("cpu")
    a, b = gpu.seeded_noise(7, (2, 5), cpu), gpu.seeded_noise(7, (2, 5), cpu)
    assert torch.equal(a, b)
    assert not torch.equal(a, gpu.seeded_noise(8, (2, 5), cpu))
    # The engine's CPU noise is what it always was: seeded torch.randn.
    want = torch.randn(2, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, want)


def test_warm_up_runs_every_bucket_enough_times_and_refuses_too_many() -> None:
    seen: list[tuple[int, int, int]] = []
    shapes = gpu.warm_up_shapes(lambda *s: seen.append(s), [1, 2, 4], [64, 128], [32])
    assert len(shapes) == 6
    assert all(seen.count(s) == gpu.RUNS_TO_RECORD for s in shapes)
    with pytest.raises(ValueError, match="fewer buckets"):
        gpu.warm_up_shapes(lambda *s: None, range(1, 9), range(10), range(2), max_shapes=64)


def test_pinned_transfer_is_a_plain_copy_on_cpu() -> None:
    t = torch.arange(4)
    assert torch.equal(gpu.to_device(t, torch.device("cpu"), torch.float32), t.float())


def _spy(engine: Engine, attr: str) -> list[tuple[int, ...]]:
    shapes: list[tuple[int, ...]] = []
    real = getattr(engine, attr)

    def call(x: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(x.shape) + tuple(rest[0].shape[-1:]) if rest else tuple(x.shape))
        return real(x, *rest)

    setattr(engine, attr, call)
    return shapes


@pytest.mark.slow
def test_mixed_steps_and_lengths_meet_only_bucketed_shapes(bundle: ModelBundle) -> None:
    engine = Engine(bundle.model, device="cpu", row_buckets=(4,), length_buckets=(64, 128))
    shapes = _spy(engine, "_step")
    voice = bundle.voices.get("F2")
    items = [
        Utterance([7 + i % 40 for i in range(n)], voice, steps=s, seed=n)
        for n, s in ((12, 1), (40, 3), (25, 2))
    ]
    engine.synthesize(items)
    # Three flow steps with 3, 2 and 1 items left: the same padded shape every time.
    assert len(shapes) == 3
    assert set(shapes) == {(4, engine.latent_channels, 64, 64)}


@pytest.mark.slow
def test_warm_up_engine_records_every_bucket(bundle: ModelBundle) -> None:
    engine = Engine(bundle.model, device="cpu", row_buckets=(1, 2, 4), length_buckets=(16, 32))
    steps, vocoded = _spy(engine, "_step"), _spy(engine, "_vocoder")
    assert gpu.warm_up_engine(engine, max_rows=2) == 2 * 2 * 2 + 2 * 2
    want = {
        (r, engine.latent_channels, lat, txt)
        for r in (1, 2)
        for lat in (16, 32)
        for txt in (16, 32)
    }
    assert set(steps) == want
    assert all(steps.count(s) == gpu.RUNS_TO_RECORD for s in want)
    assert {s[0] for s in vocoded} == {1, 2}
