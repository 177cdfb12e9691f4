"""Where a newcomer's first audio waits, from a server's ``--trace-ticks`` file.

``python -m loadtest.ticks TRACE.jsonl``: for every first chunk (HIGH, chunk 0), the time
from its submission to the tick that admitted it (the tick in flight), then the ticks until
its first piece was vocoded, split into their stages (admission, flow steps, vocoding) and
how many other chunks shared them. Medians and p95 over all newcomers.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from loadtest.stats import percentile


@dataclass(frozen=True)
class FirstAudio:
    """One newcomer's path to its first piece, in seconds of the scheduler's clock."""

    request_id: int
    total_s: float  # submit -> its first piece handed over
    queue_s: float  # submit -> the start of the tick that admitted it (the tick in flight)
    ticks: int  # ticks from that one to the one that vocoded its first piece, inclusive
    admit_s: float  # admission stages of those ticks (everyone's)
    step_s: float  # flow-step stages of those ticks (its steps, its company's, first pieces)
    vocode_s: float  # vocoding before its first piece: the earlier ticks' and its own tick's
    company: int  # other chunks stepped in those ticks (each counted once per tick)


def first_audio(rows: Iterable[dict[str, Any]]) -> list[FirstAudio]:
    """Each first chunk's path through the ticks, in the order their first piece came."""
    open_: dict[int, dict[str, Any]] = {}
    out = []
    for row in rows:
        for (rid, index), prio, wait in zip(
            row["admitted"], row["admitted_priorities"], row["queue_waits"], strict=False
        ):
            if index == 0 and prio == "HIGH":
                submitted = row["started"] - wait
                open_[rid] = {"submitted": submitted, "queue_s": wait, "ticks": 0, "co": 0,
                              "stage": [0.0, 0.0, 0.0]}  # fmt: skip
        for rid, acc in open_.items():
            acc["ticks"] += 1
            acc["stage"] = [a + b for a, b in zip(acc["stage"], row["stage_s"], strict=True)]
            acc["co"] += sum(1 for s in row["stepped"] if s[0] != rid)
        tick_start = row["started"]
        for rid, when in row["first_pieces"]:
            if rid not in open_:
                continue
            acc = open_.pop(rid)
            admit_s, step_s, vocode_s = acc["stage"]
            # Of this tick's vocoding, only what came before the piece was handed over.
            this_vocode = row["stage_s"][2]
            before = when - (tick_start + row["stage_s"][0] + row["stage_s"][1])
            vocode_s += max(0.0, min(this_vocode, before)) - this_vocode
            out.append(FirstAudio(rid, when - acc["submitted"], acc["queue_s"], acc["ticks"],
                                  admit_s, step_s, vocode_s, acc["co"]))  # fmt: skip
    return out


def summary(paths: Sequence[FirstAudio]) -> dict[str, dict[str, float]]:
    """Median, p95 and max of each part of the path."""
    parts = ("queue_s", "admit_s", "step_s", "vocode_s", "total_s", "ticks", "company")
    out = {}
    for name in parts:
        values = [float(getattr(p, name)) for p in paths]
        out[name] = {
            "median": statistics.median(values),
            "p95": percentile(values, 95) or 0.0,
            "max": max(values),
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtest.ticks", description=__doc__)
    parser.add_argument("trace", help="a server's --trace-ticks file")
    parser.add_argument("--slowest", type=int, default=0, help="also list the N slowest")
    args = parser.parse_args(argv)
    with open(args.trace, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    paths = first_audio(rows)
    if not paths:
        print("no first chunk reached its first piece in this trace", file=sys.stderr)
        return 1
    print(f"{len(paths)} first chunks, {len(rows)} ticks")
    print(f"{'part':<10} {'median':>8} {'p95':>8} {'max':>8}")
    for name, q in summary(paths).items():
        print(f"{name:<10} {q['median']:8.3f} {q['p95']:8.3f} {q['max']:8.3f}")
    for p in sorted(paths, key=lambda p: -p.total_s)[: args.slowest]:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
