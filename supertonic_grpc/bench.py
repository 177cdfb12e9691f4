"""Engine-only benchmark: real-time factor by batch size, eager vs torch.compile, side by side.

Runs the full-size model (real weights when found, else the demo bundle with demo pacing, so
latent lengths and therefore timings match real speech) on ~100-character English chunks.
The real-time factor here is audio seconds per wall second: higher is faster, 1.0 is just
keeping up. It also times "one first chunk alone" (batch 1, ~40 characters), the floor
under the server's time to first audio. Writes `bench.json` and `bench.md` to `--out-dir`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

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
    if not args.no_compile:
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
        bool(args.flush_denormal),
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
    return report


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
    return "\n".join(lines) + "\n"


def write_reports(report: Report, out_dir: Path) -> tuple[Path, Path]:
    """Write `bench.json` and `bench.md`; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = asdict(report)
    data["compiled_over_eager"] = {
        str(n): _ratio(report, n) for n in sorted({r.batch_size for r in report.rows})
    }
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The benchmark's flags (shared by `supertonic-grpc bench` and `python -m ...bench`)."""
    p.add_argument("--batch-sizes", default="1,4,8", help="comma-separated (default 1,4,8)")
    p.add_argument("--steps", type=int, default=5, help="flow steps (default 5)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per point (median)")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile runs")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument(
        "--flush-denormal", action="store_true", help="torch.set_flush_denormal(True) first"
    )
    p.add_argument("--model-dir", default="", help="published model files (default: cache)")
    p.add_argument("--out-dir", default="reports", help="where bench.json/bench.md go")


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
