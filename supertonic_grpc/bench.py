"""`make bench`: the engine alone by batch size (eager, and compiled with `--compile`), then
the real server under saturating load at the same batch sizes, so that serving overhead is
one ratio (server throughput / engine throughput); see `bench_serving`.

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
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import torch

from loadtest.spawn import SpawnError
from supertonic_grpc import bench_serving
from supertonic_grpc.bench_serving import ServingConfig, ServingRow
from supertonic_grpc.bundle import ModelBundle, load_bundle
from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND, Engine, EngineError, Utterance
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
FIRST_CHUNK = "Sure, here is the first part of that."  # ~40 characters: a typical short first chunk
VOICES = ("M1", "F1", "M2", "F2", "M3", "F3", "M4", "F4")
EAGER, COMPILED = "eager", "compiled"


@dataclass
class Row:
    """One (mode, batch size) measurement; times are medians over the repetitions."""

    mode: str
    batch_size: int
    steps: int
    audio_seconds: float  # audio produced by one batch
    wall_seconds: float  # median wall time of one batch
    rtf: float  # audio seconds per wall second (median over repetitions)
    walls: list[float] = field(default_factory=list)


@dataclass
class Report:
    machine: dict[str, Any]
    flush_denormal: bool
    model_state: str
    steps: int
    repeats: int
    rows: list[Row]
    first_chunk_seconds: dict[str, float]  # mode -> median wall time of the 40-char chunk alone
    warmup_seconds: dict[str, float]  # mode -> warm-up time (compilation for "compiled")
    compile_error: str = ""
    compile_note: str = ""  # why there is no compiled row, when it was not asked for
    serving: list[ServingRow] = field(default_factory=list)
    serving_config: dict[str, Any] = field(default_factory=dict)
    serving_note: str = ""
    onnxruntime_rtf: dict[int, float] = field(default_factory=dict)
    onnxruntime_note: str = ""


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, torch version and device, for the report header."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "dtype": "float32",
        # Other work on the machine skews every figure; the report shows how busy it was.
        "load_1min_at_start": round(os.getloadavg()[0], 2),
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


def _timed(engine: Engine, items: list[Utterance]) -> tuple[float, float]:
    start = time.perf_counter()
    out = engine.synthesize(items)
    return time.perf_counter() - start, sum(o.duration_s for o in out)


def _engines(bundle: ModelBundle, args: argparse.Namespace) -> dict[str, Engine]:
    pacing = DEMO_CHARS_PER_SECOND if bundle.is_demo else None
    engines = {EAGER: Engine(bundle.model, device=args.device, demo_pacing=pacing)}
    if args.compile and not args.no_compile:
        engines[COMPILED] = Engine(
            bundle.model, device=args.device, compile=True, length_multiple=16, demo_pacing=pacing
        )
    return engines


def _warm_up(engines: dict[str, Engine], workloads: list[list[Utterance]], report: Report) -> None:
    """Run every workload once per engine, untimed; compilation happens here."""
    for mode in list(engines):
        start = time.perf_counter()
        try:
            for items in workloads:
                engines[mode].synthesize(items)
        except EngineError as exc:
            if mode != COMPILED:
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
    engines = _engines(bundle, args)
    device = next(iter(engines.values())).device
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
    sizes = sorted({int(s) for s in args.batch_sizes.split(",") if s.strip()})
    batches = {n: _batch(bundle, n, args.steps) for n in sizes}
    first = _utterances(bundle, [FIRST_CHUNK], args.steps)
    _warm_up(engines, [first, *batches.values()], report)

    for n, items in batches.items():
        walls: dict[str, list[float]] = {mode: [] for mode in engines}
        audio: dict[str, float] = {}
        # Modes alternate within each repetition, so drift on a busy machine hits both alike.
        for _ in range(args.repeats):
            for mode, engine in engines.items():
                wall, audio[mode] = _timed(engine, items)
                walls[mode].append(wall)
        for mode in engines:
            rtfs = [audio[mode] / w for w in walls[mode]]
            row = Row(
                mode, n, args.steps, audio[mode], statistics.median(walls[mode]),
                statistics.median(rtfs), walls[mode],
            )  # fmt: skip
            report.rows.append(row)
            log.info("batch %d %s: %.2f s per batch, RTF %.2f", n, mode, row.wall_seconds, row.rtf)
    for mode, engine in engines.items():
        report.first_chunk_seconds[mode] = statistics.median(
            _timed(engine, first)[0] for _ in range(args.repeats)
        )
    if COMPILED not in engines and not report.compile_error:
        report.compile_note = (
            "compiled phase not run (pass --compile): on CPU torch.compile takes minutes "
            "to warm up for a small gain (about 10% per the issue)"
        )
    if engines[EAGER].device.type == "cpu":
        with tempfile.TemporaryDirectory(prefix="bench-onnx-") as tmp:
            report.onnxruntime_rtf, report.onnxruntime_note = bench_serving.onnxruntime_rtf(
                engines[EAGER], batches, args.repeats, Path(tmp)
            )
    else:
        report.onnxruntime_note = "onnxruntime baseline is CPU only; not run on " + str(device)
    if args.no_serving:
        report.serving_note = "serving phase skipped (--no-serving)"
    else:
        _serve(args, report, sizes)
    return report


def eager_rtf(report: Report) -> dict[int, float]:
    """Batch size -> the eager engine's RTF, the denominator of the serving ratio."""
    return {r.batch_size: r.rtf for r in report.rows if r.mode == EAGER}


def _serve(args: argparse.Namespace, report: Report, sizes: list[int]) -> None:
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
        "max_wait_ms": bench_serving.MAX_WAIT_MS,
    }
    try:
        report.serving = bench_serving.run_serving(cfg, eager_rtf(report))
    except (SpawnError, OSError, grpc.RpcError) as exc:
        # The engine figures are still worth writing; say why the serving table is missing.
        report.serving_note = f"serving phase FAILED: {type(exc).__name__}: {exc}"
        log.error("%s", report.serving_note)


def _ratio(report: Report, n: int) -> float | None:
    by_mode = {r.mode: r for r in report.rows if r.batch_size == n}
    if EAGER in by_mode and COMPILED in by_mode:
        return by_mode[COMPILED].rtf / by_mode[EAGER].rtf
    return None


def render_markdown(report: Report) -> str:
    """The report as Markdown: machine, table, first chunk, warm-up."""
    m = report.machine
    lines = [
        "# Engine benchmark",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
        f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}",
        f"- load average (1 min) at start: {m.get('load_1min_at_start', 'n/a')}",
        f"- torch {m['torch']}, Python {m['python']}, {m['dtype']}, flush denormals: "
        f"{'on' if report.flush_denormal else 'off'}",
        f"- model: {report.model_state} weights"
        + (" (demo pacing: 15 characters per second)" if report.model_state == "demo" else ""),
        f"- {report.steps} flow steps, ~100-character English chunks, median of "
        f"{report.repeats} runs; RTF = audio seconds / wall seconds (higher is faster)",
        "",
        "| batch | mode | audio s / batch | wall s / batch | RTF | compiled / eager |",
        "| ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report.rows:
        ratio = _ratio(report, r.batch_size) if r.mode == COMPILED else None
        lines.append(
            f"| {r.batch_size} | {r.mode} | {r.audio_seconds:.2f} | {r.wall_seconds:.3f} | "
            f"{r.rtf:.2f} | {f'{ratio:.2f}x' if ratio else ''} |"
        )
    lines.append("")
    for mode, sec in report.first_chunk_seconds.items():
        lines.append(
            f"- first chunk alone (batch 1, {len(FIRST_CHUNK)} chars), {mode}: {sec:.3f} s"
        )
    for mode, sec in report.warmup_seconds.items():
        what = "compilation + warm-up" if mode == COMPILED else "warm-up"
        lines.append(f"- {mode} {what} (excluded from timings): {sec:.1f} s")
    if report.compile_error:
        lines.append(f"- torch.compile FAILED: {report.compile_error}")
    if report.compile_note:
        lines.append(f"- {report.compile_note}")
    if report.onnxruntime_rtf:
        ort = ", ".join(f"batch {n}: {v:.2f}" for n, v in sorted(report.onnxruntime_rtf.items()))
        lines.append(f"- onnxruntime CPU baseline (same networks exported to ONNX), RTF {ort}")
    if report.onnxruntime_note:
        lines.append(f"- onnxruntime baseline: {report.onnxruntime_note}")
    lines += bench_serving.render_serving(report.serving, report.serving_config)
    if report.serving_note:
        lines += ["", f"- {report.serving_note}"]
    return "\n".join(lines) + "\n"


def write_reports(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write `bench.json` and `bench.md`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(report)
    data["compiled_over_eager"] = {
        str(n): _ratio(report, n) for n in sorted({r.batch_size for r in report.rows})
    }
    data["serving_over_engine"] = {str(r.batch_size): r.ratio for r in report.serving}
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


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
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
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
