"""The CPU parts of the engine benchmark on a tiny model: ONNX export and its cache, the ONNX
Runtime mode through the engine's loop, quality figures, ratios, flags. No timing."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks import compare, onnx_baseline
from benchmarks.report import EAGER, ORT, Report, Row, ort_ratio, render_markdown
from loadtest.cpu import cpu_flags, cpu_model
from supertonic_grpc.bundle import ModelBundle, demo_bundle
from supertonic_grpc.engine import Engine, Synthesized, Utterance
from supertonic_grpc.model import SupertonicConfig
from supertonic_grpc.model.defaults import default_config_dict


def tiny_config() -> SupertonicConfig:
    """The published layout at toy widths (style widths kept: the demo voices need them)."""
    cfg = default_config_dict()
    ttl, dp = cfg["ttl"], cfg["dp"]
    te = ttl["text_encoder"]
    te["convnext"].update(intermediate_dim=64, num_layers=1, dilation_lst=[1])
    te["attn_encoder"].update(filter_channels=64, n_layers=1)
    vf = ttl["vector_field"]
    vf["proj_in"]["odim"] = 32
    mb = vf["main_blocks"]
    mb["n_blocks"] = 1
    for name in ("convnext_0", "convnext_1", "convnext_2"):
        mb[name].update(idim=32, intermediate_dim=64)
    vf["last_convnext"].update(idim=32, intermediate_dim=64, num_layers=1, dilation_lst=[1])
    dec = cfg["ae"]["decoder"]
    dec.update(hdim=32, intermediate_dim=64, num_layers=2, dilation_lst=[1, 2])
    dec["head"]["hdim"] = 64
    dp["sentence_encoder"]["convnext"].update(num_layers=1, dilation_lst=[1])
    dp["sentence_encoder"]["attn_encoder"]["n_layers"] = 1
    return SupertonicConfig.from_dict(cfg)


@pytest.fixture(scope="module")
def tiny() -> ModelBundle:
    return demo_bundle(tiny_config())


def _items(bundle: ModelBundle) -> list[Utterance]:
    voice = bundle.voices.get("F1")
    return [Utterance([5 + i % 40 for i in range(n)], voice, steps=2, seed=n) for n in (12, 30)]


def test_onnx_runtime_mode_matches_the_engine_and_reuses_its_cache(
    tiny: ModelBundle, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime")
    pristine = demo_bundle(tiny_config()).model
    paths = onnx_baseline.export_stages(pristine, tmp_path)
    assert sorted(p.name for p in paths.values()) == [
        "duration_predictor.onnx", "text_encoder.onnx", "vector_estimator.onnx", "vocoder.onnx",
    ]  # fmt: skip
    stamps = {p: p.stat().st_mtime_ns for p in paths.values()}
    assert onnx_baseline.export_stages(pristine, tmp_path) == paths
    assert {p: p.stat().st_mtime_ns for p in paths.values()} == stamps  # not exported again

    engine = Engine(tiny.model, device="cpu")
    ort, why = compare.ort_engine(engine, pristine, tmp_path)
    assert ort is not None, why
    q = compare.quality(engine.synthesize(_items(tiny)), ort.synthesize(_items(tiny)))
    assert q.max_abs_diff < 1e-4
    assert q.snr_db > 60


def test_model_key_changes_with_the_weights(tiny: ModelBundle) -> None:
    other = demo_bundle(tiny_config()).model
    assert onnx_baseline.model_key(other) == onnx_baseline.model_key(
        demo_bundle(tiny_config()).model
    )
    next(other.parameters()).data.add_(1.0)
    assert onnx_baseline.model_key(other) != onnx_baseline.model_key(tiny.model)


def test_reduced_engines_get_their_own_model_copies(tiny: ModelBundle) -> None:
    pristine = demo_bundle(tiny_config()).model
    engines = compare.reduced_engines(pristine, ["fp32", "bf16"], device="cpu")
    assert list(engines) == ["eager-bf16"]
    assert engines["eager-bf16"].model is not pristine
    assert engines["eager-bf16"].precision == "bf16"


def test_snr_and_quality() -> None:
    ref = [np.array([1.0, -1.0, 1.0, -1.0], dtype=np.float32)]
    assert compare.snr_db(ref, ref) == math.inf
    noisy = [ref[0] + np.float32(0.01)]
    assert compare.snr_db(ref, noisy) == pytest.approx(40.0)
    q = compare.quality([Synthesized(ref[0], 1.0)], [Synthesized(noisy[0], 1.0)])
    assert q.max_abs_diff == pytest.approx(0.01)


def test_precisions_and_cpu_flags_parse() -> None:
    assert compare.parse_precisions("bf16") == ["fp32", "bf16"]
    assert compare.parse_precisions("int8,fp32,bf16") == ["fp32", "bf16", "int8"]
    with pytest.raises(ValueError):
        compare.parse_precisions("fp8")
    info = "processor: 0\nflags\t\t: fpu avx2 fma avx512f amx_bf16 avx512_bf16\n"
    assert cpu_flags(info) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16"]
    assert cpu_flags("no flags line") == []
    assert cpu_model("model name\t: AMD EPYC\nflags\t: avx2\n") == "AMD EPYC"
    assert cpu_model("") == "unknown"


def test_report_shows_the_ratio_against_onnx_runtime() -> None:
    rows = [Row(EAGER, 8, 5, 45.0, 1.5, 30.0), Row(ORT, 8, 5, 45.0, 1.8, 25.0)]
    machine = {
        "cpu": "Test CPU", "cores": 2, "torch_threads": 2, "torch": "2.x", "python": "3.11",
        "device": "cpu", "dtype": "float32", "cpu_flags": ["avx512f", "amx_bf16"],
    }  # fmt: skip
    report = Report(machine, True, "demo", 5, 3, rows, {EAGER: 0.25, ORT: 0.3}, {})
    report.quality = {ORT: {"max_abs_diff": 4e-7, "snr_db": 120.0}}
    assert ort_ratio(report, 8, EAGER) == pytest.approx(1.2)
    text = render_markdown(report)
    assert "| 8 | eager | 45.00 | 1.500 | 30.00 |  | **1.20x** |" in text
    assert "CPU flags: avx512f amx_bf16" in text
    assert "(1.20x onnxruntime)" in text
    assert "SNR 120.0 dB" in text
