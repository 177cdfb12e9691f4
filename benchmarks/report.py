"""The report of `make bench`: its rows, the ratios between modes, Markdown and JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import serving
from benchmarks.serving import ServingRow

FIRST_CHUNK = "Sure, here is the first part of that."  # ~40 characters: a typical short first chunk
EAGER, COMPILED, ORT = "eager", "compiled", "onnxruntime"


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
    onnxruntime_note: str = ""  # why there is no onnxruntime row
    # mode -> {"max_abs_diff", "snr_db"} against the fp32 engine on the largest batch
    quality: dict[str, dict[str, float]] = field(default_factory=dict)


def eager_rtf(report: Report) -> dict[int, float]:
    """Batch size -> the eager engine's RTF, the denominator of the serving ratio."""
    return {r.batch_size: r.rtf for r in report.rows if r.mode == EAGER}


def _ratio(report: Report, n: int) -> float | None:
    by_mode = {r.mode: r for r in report.rows if r.batch_size == n}
    if EAGER in by_mode and COMPILED in by_mode:
        return by_mode[COMPILED].rtf / by_mode[EAGER].rtf
    return None


def ort_ratio(report: Report, n: int, mode: str) -> float | None:
    """A mode's RTF over ONNX Runtime's at batch n, when both were measured."""
    by_mode = {r.mode: r.rtf for r in report.rows if r.batch_size == n}
    if ORT in by_mode and mode in by_mode and by_mode[ORT] > 0:
        return by_mode[mode] / by_mode[ORT]
    return None


def _first_chunk_ratios(report: Report) -> dict[str, float]:
    ort = report.first_chunk_seconds.get(ORT)
    if not ort:
        return {}
    return {m: ort / s for m, s in report.first_chunk_seconds.items() if m != ORT and s > 0}


def render_markdown(report: Report) -> str:
    """The report as Markdown: machine, table, first chunk, warm-up."""
    m = report.machine
    lines = [
        "# Engine benchmark",
        "",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads), "
        f"device {m['device']}{', ' + m['gpu'] if 'gpu' in m else ''}",
        f"- CPU flags: {' '.join(m.get('cpu_flags', [])) or 'n/a'}",
        f"- load average (1 min) at start: {m.get('load_1min_at_start', 'n/a')}",
        f"- torch {m['torch']}, Python {m['python']}, {m['dtype']}, flush denormals: "
        f"{'on' if report.flush_denormal else 'off'}",
        f"- model: {report.model_state} weights"
        + (" (demo pacing: 15 characters per second)" if report.model_state == "demo" else ""),
        f"- {report.steps} flow steps, ~100-character English chunks, median of "
        f"{report.repeats} runs; RTF = audio seconds / wall seconds (higher is faster)",
        "",
        "| batch | mode | audio s / batch | wall s / batch | RTF | compiled / eager "
        "| / onnxruntime |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in report.rows:
        ratio = _ratio(report, r.batch_size) if r.mode == COMPILED else None
        vs_ort = ort_ratio(report, r.batch_size, r.mode)
        lines.append(
            f"| {r.batch_size} | {r.mode} | {r.audio_seconds:.2f} | {r.wall_seconds:.3f} | "
            f"{r.rtf:.2f} | {f'{ratio:.2f}x' if ratio else ''} | "
            f"{f'**{vs_ort:.2f}x**' if vs_ort and r.mode != ORT else ''} |"
        )
    lines.append("")
    speedups = _first_chunk_ratios(report)
    for mode, sec in report.first_chunk_seconds.items():
        vs = f" ({speedups[mode]:.2f}x {ORT})" if mode in speedups else ""
        lines.append(
            f"- first chunk alone (batch 1, {len(FIRST_CHUNK)} chars), {mode}: {sec:.3f} s{vs}"
        )
    for mode, sec in report.warmup_seconds.items():
        what = "compilation + warm-up" if mode == COMPILED else "warm-up"
        lines.append(f"- {mode} {what} (excluded from timings): {sec:.1f} s")
    if report.compile_error:
        lines.append(f"- torch.compile FAILED: {report.compile_error}")
    if report.compile_note:
        lines.append(f"- {report.compile_note}")
    if ORT in report.first_chunk_seconds:
        lines.append(
            f"- {ORT}: the project's four stages exported to ONNX (cached under .cache/onnx), "
            "full graph optimisation, same threads, through the engine's own loop"
        )
    if report.onnxruntime_note:
        lines.append(f"- {ORT} baseline: {report.onnxruntime_note}")
    for mode, q in report.quality.items():
        lines.append(
            f"- {mode} vs eager (fp32) audio, largest batch: max |diff| "
            f"{q['max_abs_diff']:.1e}, SNR {q['snr_db']:.1f} dB"
        )
    lines += serving.render_serving(report.serving, report.serving_config)
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
    data["over_onnxruntime"] = {
        f"{r.mode}@{r.batch_size}": ort_ratio(report, r.batch_size, r.mode)
        for r in report.rows
        if r.mode != ORT
    }
    data["first_chunk_over_onnxruntime"] = _first_chunk_ratios(report)
    data["serving_over_engine"] = {str(r.batch_size): r.ratio for r in report.serving}
    json_path, md_path = out_dir / "bench.json", out_dir / "bench.md"
    json_path.write_text(json.dumps(data, indent=2) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
