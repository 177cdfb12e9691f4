"""CUDA paths (skipped without a GPU): the same audio as on CPU, reduced precision, CUDA graphs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from supertonic_grpc.bundle import demo_bundle
from supertonic_grpc.engine import Engine, Utterance

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def items(bundle) -> list[Utterance]:
    voice = bundle.voices.get("M1")
    return [Utterance([7 + i % 50 for i in range(n)], voice, steps=3, seed=n) for n in (20, 45, 80)]


def test_cuda_float32_matches_cpu() -> None:
    cpu = Engine(demo_bundle().model, device="cpu").synthesize(items(demo_bundle()))
    gpu_bundle = demo_bundle()
    # Host noise, as the CPU run draws it: device noise is another (equally seeded) stream.
    gpu = Engine(gpu_bundle.model, device="cuda", noise_on_device=False).synthesize(
        items(gpu_bundle)
    )
    for a, b in zip(cpu, gpu, strict=True):
        assert len(a.audio) == len(b.audio)
        assert np.abs(a.audio - b.audio).max() < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_reduced_precision_runs_and_gives_finite_audio(dtype) -> None:
    bundle = demo_bundle()
    out = Engine(bundle.model, device="cuda", dtype=dtype).synthesize(items(bundle))
    assert all(np.isfinite(o.audio).all() and len(o.audio) > 0 for o in out)


def test_compiled_with_cuda_graphs_matches_eager() -> None:
    bundle = demo_bundle()
    eager = Engine(bundle.model, device="cuda").synthesize(items(bundle))
    compiled = Engine(
        bundle.model,
        device="cuda",
        compile=True,
        compile_mode="reduce-overhead",
        length_multiple=16,
    )
    out = compiled.synthesize(items(bundle))
    for a, b in zip(eager, out, strict=True):
        assert np.abs(a.audio - b.audio).max() < 1e-2


def test_bf16_precision_keeps_close_to_fp32() -> None:
    from benchmarks.compare import snr_db

    fp32 = Engine(demo_bundle().model, device="cuda").synthesize(items(demo_bundle()))
    bundle = demo_bundle()
    bf16 = Engine(bundle.model, device="cuda", precision="bf16").synthesize(items(bundle))
    assert snr_db([o.audio for o in fp32], [o.audio for o in bf16]) > 30.0


def test_device_noise_is_seeded_and_batch_independent() -> None:
    bundle = demo_bundle()
    engine = Engine(bundle.model, device="cuda")
    batched = engine.synthesize(items(bundle))
    for item, out in zip(items(bundle), batched, strict=True):
        (alone,) = engine.synthesize([item])
        assert np.abs(alone.audio - out.audio).max() < 2e-3


def test_bucketed_cuda_graphs_record_at_warm_up_and_match_eager() -> None:
    from supertonic_grpc.backends import gpu

    bundle = demo_bundle()
    eager = Engine(bundle.model, device="cuda").synthesize(items(bundle))
    compiled = Engine(
        demo_bundle().model, device="cuda", compile=True, compile_mode="reduce-overhead",
        row_buckets=(1, 4), length_buckets=(128,),
    )  # fmt: skip
    assert gpu.warm_up_engine(compiled, max_rows=4) == 2 + 2
    out = compiled.synthesize(items(bundle))
    for a, b in zip(eager, out, strict=True):
        assert np.abs(a.audio - b.audio).max() < 1e-2
