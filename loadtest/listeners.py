"""Listeners, not batches: real-time listeners, bursts, T1 and the capacity search.

A *listener* plays every stream at 1x from the arrival of its first audio, keeps listening
until playback ends, thinks (exponential, mean ``think_s``), then asks again; listeners
start staggered over ``stagger_s``. A *burst* starts N streams at the same instant, once.

*T1* is the time to first audio of a short first chunk alone on the idle server, measured
in the same run: before the first level and again after each one, so a level is judged
against the T1 samples that bracket it (a shared machine's speed drifts over minutes, and
a capacity search runs many). A level *passes* when every stream was gapless, none failed,
and the p95 TTFA is at most ``2 x T1``; its report adds a bootstrap interval of p95/T1.
``find_capacity`` searches the highest passing level.
"""

from __future__ import annotations

import asyncio
import logging
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from loadtest.corpus import Text, TextPicker
from loadtest.runner import LevelResult, RunConfig, one_request, requests_loop, run_level
from loadtest.stats import StreamRecord, first_audio_times, ratio_interval
from supertonic_client._proto.supertonic.v1 import tts_pb2_grpc

log = logging.getLogger("loadtest")

# A short sentence: its first chunk is the whole sentence (a 34-character first chunk).
T1_TEXT = Text(id="t1", language="en", text="The quick brown fox jumps over it.")
P95_BOUND = 2.0  # a level passes when p95 TTFA <= P95_BOUND x T1


def listening_ends(rec: StreamRecord) -> float:
    """When the listener hears the end of this stream (its request's end if no audio)."""
    ends = rec.playback().ends
    return max(ends[-1], rec.end) if ends else rec.end


async def listener(
    stub: tts_pb2_grpc.TextToSpeechStub,
    cfg: RunConfig,
    picker: TextPicker,
    level: int,
    user: int,
    stop_at: float,
    records: list[StreamRecord],
) -> None:
    """One real-time listener: request, listen to the end, think, repeat until ``stop_at``."""
    think = random.Random(f"think:{cfg.seed}:{level}:{user}")

    def pause(rec: StreamRecord) -> float:
        wait = listening_ends(rec) - time.monotonic()
        return wait + (think.expovariate(1.0 / cfg.think_s) if cfg.think_s > 0 else 0.0)

    await asyncio.sleep(cfg.stagger_s * user / max(1, level))
    await requests_loop(stub, cfg, picker, level, user, stop_at, records, pause)


def burst_start(level: int) -> Callable[..., Awaitable[None]]:
    """A user loop for a burst of ``level`` streams: all wait at one barrier, then each
    sends one request."""
    barrier = asyncio.Barrier(level)

    async def burst_user(
        stub: tts_pb2_grpc.TextToSpeechStub,
        cfg: RunConfig,
        picker: TextPicker,
        lv: int,
        user: int,
        stop_at: float,
        records: list[StreamRecord],
    ) -> None:
        del stop_at  # a burst is one request per stream, however long it takes
        text = picker.pick(picker.for_user(lv, user))
        rec = StreamRecord(user=user, text_id=text.id, language=text.language, start=0.0)
        records.append(rec)
        await barrier.wait()
        await one_request(stub, cfg, text, rec)

    return burst_user


async def measure_t1(
    stub: tts_pb2_grpc.TextToSpeechStub, cfg: RunConfig, repeats: int = 5, text: Text = T1_TEXT
) -> dict[str, Any]:
    """TTFA of a short first chunk alone on the idle server: the median of ``repeats``."""
    ttfas = []
    for _ in range(repeats):
        rec = StreamRecord(user=-2, text_id=text.id, language=text.language, start=0.0)
        await one_request(stub, cfg, text, rec)
        if rec.ok and rec.ttfa is not None:
            ttfas.append(rec.ttfa)
        await asyncio.sleep(0.2)  # idle between tries: nothing else in flight
    if not ttfas:
        raise RuntimeError("T1: no request of the short text succeeded")
    return {
        "text": text.text,
        "repeats": repeats,
        "t1_s": statistics.median(ttfas),
        "samples_s": ttfas,
    }


def bracket_t1(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """A level's T1: the median of the idle tries just before it and just after it."""
    samples = [*before["samples_s"], *after["samples_s"]]
    return {
        "text": before["text"],
        "repeats": len(samples),
        "t1_s": statistics.median(samples),
        "before_s": before["t1_s"],
        "after_s": after["t1_s"],
        "samples_s": samples,
    }


def judge(figures: dict[str, Any], t1_s: float) -> dict[str, Any]:
    """p95/T1 and whether the level passes (100% gapless, no errors, p95 <= 2 x T1)."""
    p95 = figures["ttfa_s"]["p95"]
    ratio = None if p95 is None else p95 / t1_s
    req = figures["requests"]
    passes = (
        ratio is not None
        and ratio <= P95_BOUND
        and req["failed"] == 0
        and req["ok"] > 0
        and figures["gapless_share"] == 1.0
    )
    return {"p95_over_t1": ratio, "passes": passes}


async def find_capacity(
    run: Callable[[int], Awaitable[bool]], start: int = 1, limit: int = 64
) -> int:
    """The highest level for which ``run(level)`` passes: doubling, then bisection.
    Returns 0 when even ``start`` fails."""
    good, level = 0, start
    while level <= limit:
        if not await run(level):
            break
        good, level = level, level * 2
    else:
        return good
    low, high = good, level  # good passes (or is 0), high fails
    while high - low > 1:
        mid = (low + high) // 2
        if await run(mid):
            low = mid
        else:
            high = mid
    return low


async def drive_levels(
    cfg: RunConfig, args: Any, stubs: list[tts_pb2_grpc.TextToSpeechStub], picker: TextPicker
) -> dict[str, Any]:
    """T1 on the idle server, then each level followed by T1 again (or the capacity
    search); each level is judged against the T1 tries around it."""
    t1 = await measure_t1(stubs[0], cfg, args.t1_repeats)
    log.info("T1 (short first chunk alone, idle): %.3f s", t1["t1_s"])
    loop_for = (lambda n: burst_start(n)) if cfg.mode == "burst" else (lambda n: listener)
    levels: list[LevelResult] = []
    latest = t1

    async def run(n: int) -> bool:
        nonlocal latest
        result = await run_level(cfg, stubs, picker, n, loop_for(n))
        after = await measure_t1(stubs[0], cfg, args.t1_repeats)
        level_t1, latest = bracket_t1(latest, after), after
        verdict = judge(result.figures, level_t1["t1_s"])
        interval = ratio_interval(first_audio_times(result.records), level_t1["samples_s"])
        result.figures.update(verdict, t1=level_t1, p95_over_t1_interval=interval)
        levels.append(result)
        t = result.figures["ttfa_s"]
        log.info(
            "%s %d: ttfa p50 %s p95 %s (p95/T1 %s, 90%% interval %s; T1 %.3f s around it), "
            "gapless %s, errors %s -> %s",
            cfg.mode, n, _f(t["p50"]), _f(t["p95"]), _f(verdict["p95_over_t1"], 2),
            _interval(interval), level_t1["t1_s"], result.figures["gapless_share"],
            result.figures["requests"]["errors_by_code"], "pass" if verdict["passes"] else "FAIL",
        )  # fmt: skip
        return bool(verdict["passes"])

    capacity = None
    if args.find_capacity:
        capacity = await find_capacity(run, 1, args.capacity_max)
        levels.sort(key=lambda lv: lv.users)
    else:
        for n in cfg.users:
            await run(n)
    return {"levels": levels, "t1": t1, "capacity": capacity}


def add_to_report(report: dict[str, Any], run: dict[str, Any]) -> None:
    """T1, the pass rule and the capacity found, beside the levels' figures."""
    report["t1"] = run["t1"]
    report["pass_rule"] = f"100% gapless, no errors, p95 TTFA <= {P95_BOUND:g} x T1"
    report["capacity"] = run["capacity"]


def markdown(report: dict[str, Any]) -> list[str]:
    """The listener-specific lines of the Markdown report."""
    t1 = report["t1"]
    st = report["settings"]
    lines = [
        "",
        f"T1 (TTFA of {t1['text']!r} alone on the idle server, median of {t1['repeats']}): "
        f"**{t1['t1_s']:.3f} s** before the first level; it is measured again after each "
        "level, and a level is judged against the median of the tries just before and after "
        f"it (*T1 around*). A level passes with {report['pass_rule']}. The interval is a 90% "
        "bootstrap interval of p95/T1 (streams and T1 tries resampled): a level whose "
        "interval spans 2.0 is at the bound within this run's sampling noise.",
    ]
    if report["mode"] == "listen":
        lines.append(
            f"Listeners play at 1x from their first audio, think {st['think_s']:g} s on average "
            f"(exponential), start staggered over {st['stagger_s']:g} s."
        )
    lines += [
        "",
        "| level | T1 around s | p95/T1 | 90% interval | worst gap s | passes |",
        "|---:|---:|---:|:---:|---:|:---:|",
    ]
    for lv in report["levels"]:
        around = lv.get("t1", {}).get("t1_s")
        lines.append(
            f"| {lv['users']} | {_f(around)} | {_f(lv.get('p95_over_t1'), 2)} "
            f"| {_interval(lv.get('p95_over_t1_interval'))} "
            f"| {_f(lv['underruns']['max_gap_s'])} | {'yes' if lv.get('passes') else '**no**'} |"
        )
    if report.get("capacity") is not None:
        lines += [
            "",
            f"**Capacity: {report['capacity']} real-time listeners** ({report['pass_rule']}).",
        ]
    return lines


def _f(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(bounds: Sequence[float] | None) -> str:
    return "–" if bounds is None else f"{bounds[0]:.2f}–{bounds[1]:.2f}"
