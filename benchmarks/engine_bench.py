"""`make bench`: the engine alone by batch size (fp32, each other `--precisions`, ONNX Runtime
on the same stages, and compiled with `--compile`, all interleaved in one run), then
the real server under saturating load at the same batch sizes, so that serving overhead is
one ratio (server throughput / engine throughput); see `benchmarks.serving`.

Runs the full-size model (real weights when found, else the demo bundle with demo pacing, so
latent lengths and therefore timings match real speech) on ~100-character English chunks.
The real-time factor here is audio seconds per wall second: higher is faster, 1.0 is just
keeping up. It also times "one first chunk alone" (batch 1, ~40 characters), the floor
under the server's time to first audio. Writes `bench.json` and `bench.md` to `--out-dir`.

torch.compile is opt-in (`--compile`): on a CPU it takes minutes to warm up for about 10%,
which would more than double the default run.
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc
import torch

from benchmarks import compare, serving
from benchmarks.report import (
    COMPILED,
    EAGER,
    FIRST_CHUNK,
    Report,
    Row,
    eager_rtf,
    render_markdown,
    write_reports,
)
from benchmarks.serving import ServingConfig
from loadtest.cpu import cpu_flags, cpu_model
from loadtest.spawn import SpawnError
from supertonic_grpc.backends.gpu import GPU_LENGTH_BUCKETS
from supertonic_grpc.bundle import ModelBundle, load_bundle
from supertonic_grpc.engine import (
    DEMO_CHARS_PER_SECOND,
    Engine,
    EngineError,
    Utterance,
    pick_device,
)
from supertonic_grpc.text import preprocess

log = logging.getLogger(__name__)

# Varied ~100-character chunks (what the chunker makes of ordinary prose).
TEXTS = (
    "The committee will meet again on Thursday to review the budget and decide what goes ahead.",
    "After the storm passed, the fishermen counted their boats and found every one had returned.",
    "Please remember to bring your passport, two photographs and the signed form on Monday.",
    "Light from the nearest star takes a little over four years to reach us, quite a long trip.",
    "She opened the old piano, pressed a single key, and listened to the note fade into silence.",
    "Our train leaves at seven fifteen from platform nine, so we should be at the station early.",
    "The recipe calls for three eggs, a cup of flour, some butter and a pinch of salt, no more.",
    "When the update finishes, restart the device and sign in again with your new password.",
)
VOICES = ("M1", "F1", "M2", "F2", "M3", "F3", "M4", "F4")


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, torch version and device, for the report header."""
    model = cpu_model()
    if model == "unknown":
        model = platform.processor() or model
    info: dict[str, Any] = {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "dtype": "float32",
        # Other work on the machine skews every figure; the report shows how busy it was.
        "load_1min_at_start": round(os.getloadavg()[0], 2),
        "cpu_flags": cpu_flags(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _utterances(bundle: ModelBundle, texts: Sequence[str], steps: int) -> list[Utterance]:
    return [
        Utterance(
            bundle.tokenizer.encode(preprocess(text, "en")),
            bundle.voices.get(VOICES[i % len(VOICES)] if VOICES[0] in bundle.voices else ""),
            steps=steps,
            seed=i,
        )
        for i, text in enumerate(texts)
    ]


def _batch(bundle: ModelBundle, size: int, steps: int) -> list[Utterance]:
    return _utterances(bundle, [TEXTS[i % len(TEXTS)] for i in range(size)], steps)


def _timed(engine: Engine, items: list[Utterance], gap_s: float = 0.0) -> tuple[float, float]:
    # The modes share the cores in turn: ONNX Runtime's pool spins for a while after each run
    # and OpenMP's team after each parallel region, so without a pause each mode would be
    # timed against the previous one's spinning threads.
    if gap_s > 0:
        time.sleep(gap_s)
    start = time.perf_counter()
    out = engine.synthesize(items)
    return time.perf_counter() - start, sum(o.duration_s for o in out)


def _engines(bundle: ModelBundle, args: argparse.Namespace, report: Report) -> dict[str, Any]:
    """The modes to time: the engine (fp32), optionally compiled, each other precision asked
    for, and ONNX Runtime on the same stages (CPU)."""

    kwargs: dict[str, Any] = {
        "device": args.device,
        "demo_pacing": DEMO_CHARS_PER_SECOND if bundle.is_demo else None,
    }
    # An engine prepares its model in place: every other mode starts from this copy.
    pristine = copy.deepcopy(bundle.model)
    engines: dict[str, Any] = {EAGER: Engine(bundle.model, **kwargs)}
    precisions = compare.parse_precisions(args.precisions)
    engines.update(compare.reduced_engines(pristine, precisions, **kwargs))
    if args.compile and not args.no_compile:
        # One compiled row per precision; CUDA graphs want the fixed GPU length buckets.
        cuda = engines[EAGER].device.type == "cuda"
        for p in precisions:
            mode = COMPILED if p == "fp32" else f"{COMPILED}-{p}"
            engines[mode] = Engine(
                copy.deepcopy(pristine), compile=True, compile_mode=args.compile_mode,
                length_multiple=16, length_buckets=GPU_LENGTH_BUCKETS if cuda else (),
                precision=p, **kwargs,
            )  # fmt: skip
    if args.no_onnx:
        report.onnxruntime_note = "ONNX Runtime baseline skipped (--no-onnx)"
    elif engines[EAGER].device.type != "cpu":
        report.onnxruntime_note = f"ONNX Runtime baseline is CPU only; not run on {args.device}"
    else:
        ort, report.onnxruntime_note = compare.ort_engine(
            engines[EAGER], pristine, Path(args.onnx_cache)
        )
        if ort is not None:
            engines[compare.ORT] = ort
    return engines


def _warm_up(engines: dict[str, Engine], workloads: list[list[Utterance]], report: Report) -> None:
    """Run every workload once per engine, untimed; compilation happens here."""
    for mode in list(engines):
        start = time.perf_counter()
        try:
            for items in workloads:
                engines[mode].synthesize(items)
        except EngineError as exc:
            if not mode.startswith(COMPILED):
                raise
            # Dynamo's message spans lines and ends in advice; keep the lines that say what.
            said = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            said = [ln for ln in said if not ln.startswith("Set TORCHDYNAMO")]
            report.compile_error = " ".join(said)[:400]
            log.error("torch.compile failed, benchmarking eager only: %s", report.compile_error)
            del engines[mode]
            continue
        report.warmup_seconds[mode] = time.perf_counter() - start
        log.info("%s warm-up: %.1f s", mode, report.warmup_seconds[mode])


def run(args: argparse.Namespace) -> Report:
    """Measure; returns the report (also logged as it goes)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.flush_denormal:
        # Denormal floats take a slow path on x86 CPUs; some voices produce them.
        torch.set_flush_denormal(True)
    torch.set_grad_enabled(False)
    bundle = load_bundle(args.model_dir or None)
    device = pick_device(args.device)
    report = Report(
        machine_info(device),
        # The engine flushes denormals itself on CPU; the flag matters only elsewhere.
        bool(args.flush_denormal) or device.type == "cpu",
        bundle.state,
        args.steps,
        args.repeats,
        [],
        {},
        {},
    )
    engines = _engines(bundle, args, report)
    sizes = sorted({int(s) for s in args.batch_sizes.split(",") if s.strip()})
    batches = {n: _batch(bundle, n, args.steps) for n in sizes}
    first = _utterances(bundle, [FIRST_CHUNK], args.steps)
    _warm_up(engines, [first, *batches.values()], report)
    _measure_quality(engines, batches[max(batches)], report)

    for n, items in batches.items():
        walls: dict[str, list[float]] = {mode: [] for mode in engines}
        audio: dict[str, float] = {}
        # Modes alternate within each repetition, so drift on a busy machine hits both alike.
        for _ in range(args.repeats):
            for mode, engine in engines.items():
                wall, audio[mode] = _timed(engine, items, args.gap_s)
                walls[mode].append(wall)
        for mode in engines:
            rtfs = [audio[mode] / w for w in walls[mode]]
            row = Row(
                mode, n, args.steps, audio[mode], statistics.median(walls[mode]),
                statistics.median(rtfs), walls[mode],
            )  # fmt: skip
            report.rows.append(row)
            log.info("batch %d %s: %.2f s per batch, RTF %.2f", n, mode, row.wall_seconds, row.rtf)
    first_walls: dict[str, list[float]] = {mode: [] for mode in engines}
    for _ in range(args.repeats):
        for mode, engine in engines.items():
            first_walls[mode].append(_timed(engine, first, args.gap_s)[0])
    report.first_chunk_seconds = {m: statistics.median(w) for m, w in first_walls.items()}
    if COMPILED not in engines and not report.compile_error:
        report.compile_note = (
            "compiled phase not run (pass --compile): on CPU torch.compile takes minutes "
            "to warm up for a small gain (about 10% per the issue)"
        )
    if args.no_serving:
        report.serving_note = "serving phase skipped (--no-serving)"
    else:

        def retime(n: int) -> float:
            """The eager engine's RTF at batch n, timed now (median of the repeats)."""
            timed = [_timed(engines[EAGER], batches[n], args.gap_s) for _ in range(args.repeats)]
            return statistics.median(audio / wall for wall, audio in timed)

        _serve(args, report, sizes, retime)
    return report


def _measure_quality(engines: dict[str, Any], items: list[Utterance], report: Report) -> None:
    """Each mode's audio against the fp32 engine's on one batch (untimed)."""

    reference = engines[EAGER].synthesize(items)
    for mode, engine in engines.items():
        if mode != EAGER:
            report.quality[mode] = asdict(compare.quality(reference, engine.synthesize(items)))


def _serve(
    args: argparse.Namespace, report: Report, sizes: list[int], retime: Callable[[int], float]
) -> None:
    cfg = ServingConfig(
        batch_sizes=sizes,
        texts=TEXTS,
        voices=VOICES,
        steps=args.steps,
        seconds=args.serving_seconds,
        warmup_s=args.serving_warmup,
        clients=args.serving_clients,
        device=args.device,
        model_dir=args.model_dir,
        log_dir=Path(args.out_dir) / "bench-serving",
    )
    report.serving_config = {
        "steps": cfg.steps,
        "seconds": cfg.seconds,
        "warmup_s": cfg.warmup_s,
        "clients": cfg.clients or "2B+2",
        "max_wait_ms": serving.MAX_WAIT_MS,
    }
    try:
        report.serving = serving.run_serving(cfg, eager_rtf(report), retime)
    except (SpawnError, OSError, grpc.RpcError) as exc:
        # The engine figures are still worth writing; say why the serving table is missing.
        report.serving_note = f"serving phase FAILED: {type(exc).__name__}: {exc}"
        log.error("%s", report.serving_note)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's flags (shared by `supertonic-grpc bench` and `python -m ...bench`)."""
    p.add_argument("--batch-sizes", default="1,4,8", help="comma-separated (default 1,4,8)")
    p.add_argument("--steps", type=int, default=5, help="flow steps (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per point (median)")
    p.add_argument(
        "--compile", action="store_true", help="also time torch.compile (minutes on CPU)"
    )
    p.add_argument(
        "--no-compile", action="store_true", help="skip torch.compile (the default; wins)"
    )
    p.add_argument(
        "--compile-mode", default="default", help="with --compile: default, reduce-overhead, ..."
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument(
        "--precisions",
        default="fp32,bf16",
        help="engine precisions to time side by side (fp32 always; default fp32,bf16)",
    )
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX Runtime baseline")
    p.add_argument(
        "--onnx-cache", default=".cache/onnx", help="where exported ONNX stages are kept"
    )
    p.add_argument(
        "--gap-s",
        type=float,
        default=0.2,
        help="idle seconds before each timed call, so no mode runs against another's spinning "
        "worker threads (default 0.2)",
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--flush-denormal", action="store_true", help="torch.set_flush_denormal(True) first"
    )
    p.add_argument("--model-dir", default="", help="published model files (default: cache)")
    p.add_argument("--out-dir", default="reports", help="where bench.json/bench.md go")
    serving = p.add_argument_group("serving phase (the spawned server under saturating load)")
    serving.add_argument(
        "--no-serving", action="store_true", help="skip the serving phase (engine only)"
    )
    serving.add_argument(
        "--serving-seconds", type=_positive, default=25.0, help="measured window per batch size"
    )
    serving.add_argument(
        "--serving-warmup", type=_positive, default=6.0, help="uncounted seconds before it"
    )
    serving.add_argument(
        "--serving-clients", type=_count, default=0, help="concurrent clients (0: 2 x batch + 2)"
    )


def _count(text: str) -> int:
    """An integer flag that must be >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive(text: str) -> float:
    """A float flag that must be > 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Run the benchmark, print the Markdown table, write the reports; returns 0."""
    if not isinstance(args, argparse.Namespace):
        parser = argparse.ArgumentParser(prog="supertonic-grpc bench", description=__doc__)
        add_arguments(parser)
        args = parser.parse_args(args)
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    report = run(args)
    json_path, md_path = write_reports(report, Path(args.out_dir))
    sys.stdout.write(render_markdown(report))
    log.info("wrote %s and %s", json_path, md_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
