"""``report.json`` (every figure) and ``report.md`` (tables) of a load test."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import socket
from pathlib import Path
from typing import Any

import grpc

from loadtest import listeners
from loadtest.cpu import cpu_flags, cpu_model
from loadtest.runner import LevelResult, RunConfig
from loadtest.stats import StreamRecord, pick_timeline, stream_summary

REPORT_VERSION = 1


def machine_info() -> dict[str, Any]:
    """Where the client ran: enough to tell two reports' hardware apart."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "load_average": list(load) if load else None,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
    }


def _timeline_row(label: str, users: int, rec: StreamRecord) -> dict[str, Any]:
    pb = rec.playback()
    rel = [t - rec.start for t in rec.arrivals]
    return {
        "label": label,
        "users": users,
        "text_id": rec.text_id,
        "code": rec.code,
        "ttfa_s": rec.ttfa,
        "arrivals_s": rel,
        "durations_s": list(rec.durations),
        "play_start_s": [t - rec.start for t in pb.starts],
        "play_end_s": [t - rec.start for t in pb.ends],
        "gaps_s": pb.gaps,
    }


def timeline(levels: list[LevelResult], tolerance_s: float) -> list[dict[str, Any]]:
    """Chunk arrivals vs playback for the worst-gap stream and a typical one."""
    level_of = {id(r): lv.users for lv in levels for r in lv.records}
    records = [r for lv in levels for r in lv.records]
    return [
        _timeline_row(label, level_of[id(rec)], rec)
        for label, rec in pick_timeline(records, tolerance_s)
    ]


def build_report(
    cfg: RunConfig,
    args: argparse.Namespace,
    levels: list[LevelResult],
    server_info: dict[str, Any],
    started: float,
    server_exit: int | None = None,
) -> dict[str, Any]:
    """The JSON-able report of a run."""
    settings = dataclasses.asdict(cfg)
    settings.update(
        spawn=args.spawn,
        server_args=list(args.server_arg),
        smoke=args.smoke,
        languages=list(args.languages),
        max_sentences=args.max_sentences,
        gap_tolerance_ms=args.gap_tolerance_ms,
    )
    rows = []
    for lv in levels:
        row: dict[str, Any] = {"users": lv.users, **lv.figures, "server": lv.server}
        if cfg.mode != "unary":
            row["streams"] = [stream_summary(r, lv.t0, cfg.tolerance_s) for r in lv.records]
        else:
            row["requests_detail"] = [stream_summary(r, lv.t0, cfg.tolerance_s) for r in lv.records]
        rows.append(row)
    return {
        "report_version": REPORT_VERSION,
        "tool": "supertonic-grpc loadtest",
        "created_utc": dt.datetime.fromtimestamp(started, dt.UTC).isoformat(),
        "mode": cfg.mode,
        "settings": settings,
        "machine": machine_info(),
        "server": {
            **server_info,
            "address": cfg.address,
            "spawned": args.spawn,
            "exit_code": server_exit,
        },
        "levels": rows,
        "timeline": timeline(levels, cfg.tolerance_s) if cfg.mode != "unary" else [],
    }


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _model_info(info: dict[str, str] | None) -> str:
    if not info:
        return "no server metrics"
    return ", ".join(f"{k} {v}" for k, v in sorted(info.items()) if k not in {"state", "version"})


def _stream_table(levels: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| users | ok/started | TTFA p50 s | p95 | p99 | max | gapless | underruns | gap s "
        "| server underruns | agree | avg batch | x real time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---:|---:|",
    ]
    for lv in levels:
        t, u, s = lv["ttfa_s"], lv["underruns"], lv["server"] or {}
        share = lv["gapless_share"]
        agree = {True: "yes", False: "**no**", None: "–"}[s.get("underruns_agree")]
        server_u = s.get("underruns")
        lines.append(
            f"| {lv['users']} | {lv['requests']['ok']}/{lv['requests']['started']} "
            f"| {_f(t['p50'])} | {_f(t['p95'])} | {_f(t['p99'])} | {_f(t['max'])} "
            f"| {'–' if share is None else f'{share:.0%}'} | {u['count']} "
            f"| {_f(u['gap_seconds'])} | {'–' if server_u is None else f'{server_u:g}'} "
            f"| {agree} | {_f(s.get('avg_batch_size'), 2)} | {_f(lv['x_real_time'], 2)} |"
        )
    return lines


def _unary_table(levels: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| users | ok/started | req/s | latency p50 s | p95 | p99 | max | avg batch "
        "| x real time |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for lv in levels:
        t, s = lv["latency_s"], lv["server"] or {}
        lines.append(
            f"| {lv['users']} | {lv['requests']['ok']}/{lv['requests']['started']} "
            f"| {_f(lv['requests_per_second'], 2)} | {_f(t['p50'])} | {_f(t['p95'])} "
            f"| {_f(t['p99'])} | {_f(t['max'])} | {_f(s.get('avg_batch_size'), 2)} "
            f"| {_f(lv['x_real_time'], 2)} |"
        )
    return lines


def render_markdown(report: dict[str, Any], charts: list[str] | None = None) -> str:
    """The report as Markdown tables."""
    st, srv, m = report["settings"], report["server"], report["machine"]
    levels = report["levels"]
    lines = [
        f"# Load test: {report['mode']} mode",
        "",
        f"- created {report['created_utc']} on {m['hostname']} ({m['platform']}, "
        f"{m['cpu_count']} CPUs, Python {m['python']}, grpcio {m['grpcio']})",
        f"- CPU: {m.get('cpu', 'unknown')}; flags: {' '.join(m.get('cpu_flags', [])) or 'n/a'}",
        f"- server {srv['address']}{' (spawned)' if srv['spawned'] else ''}: model "
        f"{srv['model_state']} {srv['model_version']}, {_model_info(srv.get('model_info'))}",
        f"- per level: {st['duration_s']:g} s, "
        f"{st['requests'] or 'unlimited'} request(s) per user, steps {st['steps'] or 'default'}, "
        f"languages {','.join(st['languages'])}, ≤ {st['max_sentences']} sentence(s), "
        f"seed {st['seed']}",
        "",
    ]
    if report["mode"] != "unary":
        lines += _stream_table(levels)
        lines += [
            "",
            f"Underruns count gaps longer than {st['gap_tolerance_ms']:g} ms (shorter ones are "
            "network jitter). *agree*: the server's `supertonic_underruns_total` delta lies "
            "within the count the client's arrival times allow.",
        ]
        if "t1" in report:
            lines += listeners.markdown(report)
    else:
        lines += _unary_table(levels)
    cpu = ", ".join(f"{lv['users']}: {lv['client_cpu_cores']:.2f}" for lv in levels)
    lines += [
        "",
        f"Client CPU per level, in cores (users: cores): {cpu}. Near one core the client's own "
        "event loop delays arrivals; spread users with --channels or more client processes.",
    ]
    errors = [
        (lv["users"], code, n)
        for lv in levels
        for code, n in lv["requests"]["errors_by_code"].items()
    ]
    if errors:
        lines += ["", "## Errors", "", "| users | code | count |", "|---:|---|---:|"]
        lines += [f"| {u} | {code} | {n} |" for u, code, n in errors]
    if charts:
        lines += ["", "## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    return "\n".join(lines) + "\n"


def write_reports(report: dict[str, Any], out_dir: Path, charts: bool = True) -> list[Path]:
    """Write report.json, report.md and (optionally) the PNG charts; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if charts:
        from loadtest.charts import write_charts  # matplotlib is an optional dependency

        written += write_charts(report, out_dir)
    report["charts"] = [p.name for p in written]
    json_path = out_dir / "report.json"
    json_path.write_text(json.dumps(report, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    md_path = out_dir / "report.md"
    md_path.write_text(render_markdown(report, [str(p) for p in written]), encoding="utf-8")
    return [json_path, md_path, *written]
