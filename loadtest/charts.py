"""PNG charts of a report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

# Before pyplot is imported: CI machines and servers have no display.
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

_PCTS = (("p50", "o-"), ("p95", "s-"), ("p99", "^-"), ("max", "x--"))


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _users_axis(ax: Any, users: list[int]) -> None:
    # Levels are usually powers of two or decades; a log axis spaces them evenly.
    if len(users) > 1 and max(users) / min(users) >= 8:
        ax.set_xscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks(users)
    ax.set_xticklabels([str(u) for u in users])
    ax.set_xlabel("concurrent users")
    ax.grid(True, alpha=0.3)


def latency_chart(report: dict[str, Any], path: Path) -> Path:
    """TTFA (stream) or latency (unary) percentiles vs concurrency."""
    key, title = (
        ("ttfa_s", "Time to first audio") if report["mode"] != "unary" else ("latency_s", "Latency")
    )
    levels = report["levels"]
    users = [lv["users"] for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for pct, style in _PCTS:
        values = [lv[key][pct] for lv in levels]
        points = [(u, v) for u, v in zip(users, values, strict=True) if v is not None]
        if points:
            ax.plot(*zip(*points, strict=True), style, label=pct)
    _users_axis(ax, users)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("seconds")
    ax.set_title(f"{title} vs concurrency")
    ax.legend()
    return _save(fig, path)


def throughput_chart(report: dict[str, Any], path: Path) -> Path:
    """Audio seconds generated per wall second (and requests/s in unary mode)."""
    levels = report["levels"]
    users = [lv["users"] for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(users, [lv["x_real_time"] for lv in levels], "o-", label="x real time")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    _users_axis(ax, users)
    ax.set_ylim(bottom=0)
    ax.set_ylabel("audio seconds per wall second")
    ax.set_title("Throughput vs concurrency")
    if report["mode"] == "unary":
        twin = ax.twinx()
        twin.plot(
            users, [lv["requests_per_second"] for lv in levels], "s--", color="C1", label="req/s"
        )
        twin.set_ylim(bottom=0)
        twin.set_ylabel("requests per second")
        twin.legend(loc="lower right")
    ax.legend(loc="upper left")
    return _save(fig, path)


def timeline_chart(report: dict[str, Any], path: Path) -> Path | None:
    """Per picked stream: chunk arrivals (ticks) over the playback they allow (bars).

    Red spans are gaps the listener heard.
    """
    rows = report.get("timeline") or []
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 1.3 + 1.1 * len(rows)))
    labels = []
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        spans = list(zip(row["play_start_s"], row["durations_s"], strict=True))
        colors = ["C0" if k % 2 == 0 else "C9" for k in range(len(spans))]
        ax.broken_barh(spans, (y - 0.3, 0.35), facecolors=colors)
        gaps = [
            (end_prev, gap)
            for end_prev, gap in zip([0.0, *row["play_end_s"][:-1]], row["gaps_s"], strict=True)
            if gap > 0
        ]
        if gaps:
            ax.broken_barh(gaps, (y - 0.3, 0.35), facecolors="red")
        ax.vlines(row["arrivals_s"], y + 0.1, y + 0.4, colors="black", lw=1.2)
        if row["ttfa_s"] is not None:
            ax.plot([0.0, row["ttfa_s"]], [y + 0.25, y + 0.25], color="grey", ls=":", lw=1)
        labels.append(f"{row['label']}\n{row['users']} users, {row['text_id']}")
    ax.set_yticks(range(len(rows) - 1, -1, -1))
    ax.set_yticklabels(labels)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.set_xlabel("seconds since the request was sent")
    ax.set_title("Chunk arrivals (ticks) vs playback (bars; red = gap)")
    ax.grid(True, axis="x", alpha=0.3)
    return _save(fig, path)


def write_charts(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """Every chart of ``report`` into ``out_dir``; returns the files written."""
    name = "ttfa" if report["mode"] != "unary" else "latency"
    paths = [
        latency_chart(report, out_dir / f"{name}.png"),
        throughput_chart(report, out_dir / "throughput.png"),
    ]
    timeline = timeline_chart(report, out_dir / "timeline.png")
    if timeline is not None:
        paths.append(timeline)
    return paths
