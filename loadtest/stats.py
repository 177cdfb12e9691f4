"""Pure statistics of a load test: percentiles, the listener's playback, per-level summaries.

No gRPC and no I/O here, so every figure in a report can be checked against a hand-made
schedule of chunk arrivals. Times are seconds on one monotonic clock.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

# A gap shorter than this is network/event-loop jitter rather than an audible dropout; the
# server's counter sees the send side, so only gaps above it are expected on both sides.
DEFAULT_GAP_TOLERANCE_S = 0.020


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between closest ranks.

    Matches ``numpy.percentile(..., method="linear")``; None for no values.
    """
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile q must be within 0..100, got {q!r}")
    data = sorted(values)
    if not data:
        return None
    rank = (len(data) - 1) * q / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def summarize(values: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max/mean of ``values`` (all None when empty)."""
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
        "count": len(values),
    }


def ratio_interval(
    values: Sequence[float],
    base: Sequence[float],
    q: float = 95.0,
    *,
    level: float = 90.0,
    draws: int = 2000,
    seed: int = 0,
) -> tuple[float, float] | None:
    """A bootstrap interval (``level`` percent) of percentile ``q`` of ``values`` over the
    median of ``base``: both resampled with replacement, ``draws`` times, from a fixed
    seed. p95 of a level's few dozen first audios is its second or third slowest, and T1
    is the median of a handful of tries, so a point ratio alone reads as more exact than
    it is. None when either side is empty."""
    if not values or not base:
        return None
    rng = random.Random(seed)
    n, m = len(values), len(base)
    ratios = sorted(
        (percentile(rng.choices(values, k=n), q) or 0.0)
        / max(1e-12, statistics.median(rng.choices(base, k=m)))
        for _ in range(draws)
    )
    tail = (100.0 - level) / 2.0
    low, high = percentile(ratios, tail), percentile(ratios, 100.0 - tail)
    assert low is not None and high is not None
    return low, high


@dataclass
class Playback:
    """What a listener who plays each chunk as soon as it can would hear.

    ``starts[i]``/``ends[i]``: when chunk i plays; ``gaps[i]``: silence heard before chunk i
    (0 for the first chunk); ``slack[i]``: how much audio was still buffered when chunk i
    arrived (negative for a gap), used to find near misses.
    """

    starts: list[float]
    ends: list[float]
    gaps: list[float]
    slack: list[float]

    def underruns(self, tolerance_s: float = 0.0) -> list[float]:
        """The gaps longer than ``tolerance_s`` (every gap > 0 with the default)."""
        return [g for g in self.gaps if g > tolerance_s]


def playback(arrivals: Sequence[float], durations: Sequence[float]) -> Playback:
    """Replay chunks arriving at ``arrivals`` with ``durations``; see :class:`Playback`.

    Playback starts at the first arrival; each chunk starts at max(arrival, previous end).
    Mirrors the server's ``PlaybackClock`` but on the receive side.
    """
    if len(arrivals) != len(durations):
        raise ValueError("arrivals and durations must have the same length")
    starts: list[float] = []
    ends: list[float] = []
    gaps: list[float] = []
    slack: list[float] = []
    prev_end: float | None = None
    for arrival, duration in zip(arrivals, durations, strict=True):
        if duration < 0 or not math.isfinite(duration):
            raise ValueError(f"chunk duration must be finite and >= 0, got {duration!r}")
        if prev_end is None:
            start, gap, buffered = arrival, 0.0, 0.0
        else:
            start = max(arrival, prev_end)
            gap = max(0.0, arrival - prev_end)
            buffered = prev_end - arrival
        starts.append(start)
        ends.append(start + duration)
        gaps.append(gap)
        slack.append(buffered)
        prev_end = start + duration
    return Playback(starts, ends, gaps, slack)


@dataclass
class StreamRecord:
    """One request as the client saw it. Times are monotonic seconds."""

    user: int
    text_id: str
    language: str
    start: float
    end: float = 0.0
    first_audio: float | None = None
    arrivals: list[float] = field(default_factory=list)
    durations: list[float] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)
    code: str = "OK"
    error: str = ""
    server_ttfa: float | None = None  # the server's own figure, from the summary message

    @property
    def ok(self) -> bool:
        """Whether the request finished with status OK."""
        return self.code == "OK"

    @property
    def ttfa(self) -> float | None:
        """Time from sending the request to the first audio (None if none arrived)."""
        return None if self.first_audio is None else self.first_audio - self.start

    @property
    def audio_seconds(self) -> float:
        """Audio received, in seconds of playback."""
        return sum(self.durations)

    def playback(self) -> Playback:
        """The listener's playback of this stream."""
        return playback(self.arrivals, self.durations)


def underrun_bounds(streams: Iterable[StreamRecord], tolerance_s: float) -> tuple[int, int]:
    """The range of server underrun counts consistent with what the client saw.

    The server clocks sends, the client arrivals; they differ by a delay that varies by up to
    ``tolerance_s``. So a gap the client saw above the tolerance surely was a gap at the
    server (lower bound), while any chunk that arrived within ``tolerance_s`` of the end of
    playback (a small gap or a near miss) may or may not have been one (upper bound).
    """
    low = high = 0
    for stream in streams:
        for i, slack in enumerate(stream.playback().slack):
            if i == 0:
                continue
            if -slack > tolerance_s:
                low += 1
                high += 1
            elif slack < tolerance_s:
                high += 1
    return low, high


def stream_summary(stream: StreamRecord, t0: float, tolerance_s: float) -> dict[str, Any]:
    """A compact JSON-able row for one stream, times relative to ``t0`` (the level start)."""
    gaps = stream.playback().gaps
    return {
        "user": stream.user,
        "text_id": stream.text_id,
        "language": stream.language,
        "start_s": round(stream.start - t0, 6),
        "seconds": round(stream.end - stream.start, 6),
        "ttfa_s": None if stream.ttfa is None else round(stream.ttfa, 6),
        "server_ttfa_s": stream.server_ttfa,
        "chunks": len(stream.arrivals),
        "audio_s": round(stream.audio_seconds, 6),
        "underruns": sum(1 for g in gaps if g > tolerance_s),
        "gap_s": round(float(sum(g for g in gaps if g > tolerance_s)), 6),
        "max_gap_s": round(max(gaps, default=0.0), 6),
        "code": stream.code,
        "error": stream.error,
    }


def first_audio_times(streams: Iterable[StreamRecord]) -> list[float]:
    """The TTFA of every stream that succeeded and had audio: what a level's percentiles
    (and the interval of its p95/T1) are taken over."""
    return [s.ttfa for s in streams if s.ok and s.ttfa is not None]


def summarize_streams(
    streams: Sequence[StreamRecord], wall_s: float, tolerance_s: float
) -> dict[str, Any]:
    """The per-level figures of a streaming run: TTFA, gaps, throughput, errors."""
    ok = [s for s in streams if s.ok]
    ttfas = first_audio_times(streams)
    server_ttfas = [s.server_ttfa for s in ok if s.server_ttfa is not None]
    all_gaps = [g for s in streams for g in s.playback().gaps]
    loud = [g for g in all_gaps if g > tolerance_s]
    gapless = [s for s in ok if not s.playback().underruns(tolerance_s)]
    audio = sum(s.audio_seconds for s in streams)
    batches = [b for s in streams for b in s.batch_sizes]
    low, high = underrun_bounds(streams, tolerance_s)
    return {
        "requests": request_counts(streams),
        "ttfa_s": summarize(ttfas),
        "server_ttfa_s": summarize(server_ttfas),
        "gapless_share": len(gapless) / len(ok) if ok else None,
        "underruns": {
            "count": len(loud),
            "gap_seconds": float(sum(loud)),
            "max_gap_s": max(all_gaps, default=0.0),
            "raw_count": sum(1 for g in all_gaps if g > 0.0),
            "raw_gap_seconds": float(sum(all_gaps)),
            "tolerance_s": tolerance_s,
            "server_count_bounds": [low, high],
        },
        "chunks": sum(len(s.arrivals) for s in streams),
        "audio_seconds": audio,
        "wall_seconds": wall_s,
        "x_real_time": audio / wall_s if wall_s > 0 else 0.0,
        "client_avg_batch_size": sum(batches) / len(batches) if batches else None,
    }


def summarize_unary(
    streams: Sequence[StreamRecord], wall_s: float, tolerance_s: float
) -> dict[str, Any]:
    """The per-level figures of a unary run: latency, requests/s, x real time, errors."""
    del tolerance_s  # a unary reply has no playback gaps
    ok = [s for s in streams if s.ok]
    audio = sum(s.audio_seconds for s in ok)
    return {
        "requests": request_counts(streams),
        "latency_s": summarize([s.end - s.start for s in ok]),
        "requests_per_second": len(ok) / wall_s if wall_s > 0 else 0.0,
        "audio_seconds": audio,
        "wall_seconds": wall_s,
        "x_real_time": audio / wall_s if wall_s > 0 else 0.0,
    }


def request_counts(streams: Sequence[StreamRecord]) -> dict[str, Any]:
    """Started/ok/failed counts and failures by status code name."""
    codes = Counter(s.code for s in streams if not s.ok)
    ok = sum(1 for s in streams if s.ok)
    return {
        "started": len(streams),
        "ok": ok,
        "failed": len(streams) - ok,
        "errors_by_code": dict(sorted(codes.items())),
    }


def pick_timeline(streams: Sequence[StreamRecord], tolerance_s: float) -> list[tuple[str, Any]]:
    """The streams worth drawing: the one with the longest gap and a typical one.

    Typical = the successful stream with the median TTFA among those with several chunks.
    """
    candidates = [s for s in streams if len(s.arrivals) >= 1]
    if not candidates:
        return []
    picked: list[tuple[str, StreamRecord]] = []
    worst = max(candidates, key=lambda s: (max(s.playback().gaps, default=0.0), len(s.arrivals)))
    if max(worst.playback().gaps, default=0.0) > tolerance_s:
        picked.append(("worst gap", worst))
    multi = [s for s in candidates if s.ok and len(s.arrivals) > 1 and s is not worst] or [
        s for s in candidates if s is not worst
    ]
    if multi:
        multi.sort(key=lambda s: s.ttfa or 0.0)
        picked.append(("typical", multi[len(multi) // 2]))
    if not picked:
        picked.append(("typical", worst))
    return picked
