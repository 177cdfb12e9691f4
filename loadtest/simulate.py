"""The listener load on the real scheduler, with a cost-model engine and a simulated clock.

``python -m loadtest.simulate --listeners 4,6,8``: the same listeners as ``--listeners``
(play at 1x, think ~1 s, staggered starts, the bundled texts, the server's chunking and
lookahead) drive the real `Scheduler` and policy, but the engine only advances a clock by
what each call would cost on the reference machine (`QUIET_2CORE`, fitted to the quiet
2-core figures in docs/BENCHMARKS.md). Every run is exactly reproducible, and takes
seconds whatever else the machine is doing, so scheduling policies can be compared where a
shared machine's timings cannot. It says nothing about the model's own speed: only the
real load test measures that.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from loadtest.corpus import LANGUAGES, Text, TextPicker, load_texts
from loadtest.listeners import P95_BOUND, T1_TEXT
from loadtest.stats import percentile
from supertonic_grpc.engine import DEFAULT_SPEED, Flight, Utterance
from supertonic_grpc.playback import PlaybackClock
from supertonic_grpc.scheduler import Job, JobResult, Limits, Priority, Scheduler, Ticket
from supertonic_grpc.settings import Settings
from supertonic_grpc.text.chunker import split_text
from supertonic_grpc.validation import fitting_chunk_chars
from supertonic_grpc.voices import demo_voice

SAMPLE_RATE, FRAME_SAMPLES, CONTEXT_FRAMES = 44100, 3072, 20
CHARS_PER_SECOND = 15.0  # demo pacing
LOOP_HOP_S = 0.005  # scheduler thread -> event loop -> the client's first message
_EMPTY = torch.zeros(1)


@dataclass(frozen=True)
class Costs:
    """Seconds per engine call: a fixed part plus a part per padded frame (or token)."""

    admit_s: float
    admit_per_token_s: float
    step_s: float
    step_per_frame_s: float
    vocode_s: float
    vocode_per_frame_s: float


# Fitted to the quiet 2-core Xeon, fp32, 5 steps: T1 0.171 s (34 characters, first piece
# only), batch 1 of ~100 characters 0.33 s, batch 8 1.72 s (RTF 20 and 31).
QUIET_2CORE = Costs(0.012, 5e-5, 0.022, 1.64e-4, 0.002, 1.14e-3)


class CostEngine:
    """The engine's step API, at the cost of `costs` on `clock`; audio is silence."""

    sample_rate, frame_samples, vocoder_context = SAMPLE_RATE, FRAME_SAMPLES, CONTEXT_FRAMES

    def __init__(self, clock: SimClock, costs: Costs) -> None:
        self.clock, self.costs = clock, costs

    def admit(self, items: Sequence[Utterance]) -> list[Flight]:
        c = self.costs
        self.clock.advance(c.admit_s + c.admit_per_token_s * sum(len(u.token_ids) for u in items))
        out = []
        for u in items:
            seconds = max(0.3, (len(u.token_ids) - 2) / CHARS_PER_SECOND) / u.speed
            frames = math.ceil(seconds * SAMPLE_RATE / FRAME_SAMPLES)
            out.append(Flight(u, frames, int(seconds * SAMPLE_RATE), _EMPTY, _EMPTY, _EMPTY))
            out[-1].lead_samples = round(u.lead_silence_s * SAMPLE_RATE)
        return out

    def step(self, flights: Sequence[Flight]) -> None:
        c = self.costs
        self.clock.advance(
            c.step_s + c.step_per_frame_s * len(flights) * max(f.frames for f in flights)
        )
        for f in flights:
            f.step += 1

    def vocode(self, pieces: Sequence[tuple[Flight, int]]) -> list[np.ndarray]:
        out = []
        for f, n in pieces:  # item by item, as on CPU
            start, end = f.vocoded_frames, min(f.frames, f.vocoded_frames + n)
            lo = max(0, start - CONTEXT_FRAMES)
            c = self.costs
            self.clock.advance(c.vocode_s + c.vocode_per_frame_s * (end - lo))
            stop = min(f.samples, end * FRAME_SAMPLES)
            samples = max(0, stop - start * FRAME_SAMPLES)
            if start == 0:
                samples += f.lead_samples
            out.append(np.zeros(samples, np.float32))
            f.vocoded_frames = end
        return out


class SimClock:
    """Simulated seconds; arrivals due by the time an engine call ends are delivered then,
    so a newcomer can arrive in the middle of a tick, as on a real server."""

    def __init__(self) -> None:
        self.now = 0.0
        self._events: list[tuple[float, int, Callable[[float], None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def at(self, when: float, fn: Callable[[float], None]) -> None:
        """Call ``fn(when)`` once the clock has passed ``when``."""
        heapq.heappush(self._events, (when, next(self._seq), fn))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.fire()

    def fire(self) -> None:
        while self._events and self._events[0][0] <= self.now:
            when, _, fn = heapq.heappop(self._events)
            fn(when)

    def next_event(self) -> float | None:
        return self._events[0][0] if self._events else None


@dataclass
class SimStream:
    """One simulated Synthesize call: its chunks, pieces received, and playback."""

    text: Text
    start: float
    chunks: list[str]
    first_audio: float | None = None
    gaps: list[float] = field(default_factory=list)
    playback: PlaybackClock = field(default_factory=PlaybackClock)
    done: float | None = None

    @property
    def ttfa(self) -> float | None:
        return None if self.first_audio is None else self.first_audio - self.start + LOOP_HOP_S


class Simulation:
    """Listeners against one scheduler on a simulated clock (see the module docstring)."""

    def __init__(
        self,
        costs: Costs = QUIET_2CORE,
        settings: Settings | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.settings = settings or Settings()
        self.clock = SimClock()
        self.engine = CostEngine(self.clock, costs)
        max_batch = self.settings.resolved_max_batch("cpu")
        self.scheduler = Scheduler(
            self.engine,
            max_batch=max_batch,
            max_wait_s=0.0,
            max_batch_tokens=self.settings.resolved_max_batch_tokens("cpu"),
            clock=self.clock,
            history=100_000,
            limits=limits,
        )
        self.scheduler._running_flag = True  # driven tick by tick, no thread
        self.voice = demo_voice("M1")
        self._ids = itertools.count(1)

    def request(
        self,
        text: Text,
        on_end: Callable[[SimStream], None] | None = None,
        at: float | None = None,
        *,
        steps: int = 5,
        speed: float = DEFAULT_SPEED,
    ) -> SimStream:
        """Start one streaming request, as `service.Synthesize` would; it arrived `at`
        (default now: an arrival is seen at the end of the engine call it came during)."""
        s = self.settings
        longest = min(s.max_chunk_chars, fitting_chunk_chars(text.language, speed))
        chunks = [c.text for c in split_text(text.text, longest, s.first_chunk_chars)]
        arrived = self.clock.now if at is None else at
        stream = SimStream(text, arrived, chunks)
        ticket = Ticket(next(self._ids))
        estimates = [max(0.3, len(c) / CHARS_PER_SECOND / speed) for c in chunks]
        state = {"submitted": 0, "sent": 0}

        def submit() -> None:
            k = state["submitted"]
            if k >= len(chunks):
                return
            now = self.clock.now
            clock = stream.playback
            if clock.started:
                deadline = clock.deadline(now) + sum(estimates[state["sent"] : k])
            else:
                first = self.scheduler.expected_first_audio_s()
                deadline = now + first + sum(estimates[:k])
            utt = Utterance(
                token_ids=[1] * (len(chunks[k]) + 2),
                voice=self.voice,
                speed=speed,
                steps=steps,
                seed=k,
                lead_silence_s=0.3 / speed if k else 0.0,
            )
            job = Job(utt, Priority.HIGH if k == 0 else Priority.NORMAL, deadline, ticket,
                      on_done, index=k, pieces=True)  # fmt: skip
            state["submitted"] += 1
            self.scheduler.submit(job, force=k > 0)
            if k == 0:
                job.submitted = arrived  # the queue wait counts from the true arrival

        def on_done(outcome: JobResult | BaseException) -> None:
            if isinstance(outcome, BaseException):
                raise outcome
            now = self.clock.now
            if stream.first_audio is None:
                stream.first_audio = now
            gap = stream.playback.on_chunk_sent(now, outcome.synthesized.duration_s)
            if gap > 0.020:
                stream.gaps.append(gap)
            if outcome.last_piece:
                state["sent"] += 1
                if state["sent"] == len(chunks):
                    stream.done = now
                    if on_end is not None:
                        on_end(stream)
                else:
                    submit()

        for _ in range(self.settings.lookahead_chunks):
            submit()
        return stream

    def run_until_idle(self) -> None:
        s = self.scheduler
        while True:
            self.clock.fire()
            if s.step(block=False) is None:
                nxt = self.clock.next_event()
                if nxt is None:
                    return
                self.clock.now = max(self.clock.now, nxt)


def t1(costs: Costs = QUIET_2CORE, settings: Settings | None = None, **kw: object) -> float:
    """TTFA of the short first chunk alone on an idle server."""
    sim = Simulation(costs, settings, **kw)  # type: ignore[arg-type]
    stream = sim.request(T1_TEXT)
    sim.run_until_idle()
    assert stream.ttfa is not None
    return stream.ttfa


def listeners(
    level: int,
    duration_s: float = 30.0,
    *,
    costs: Costs = QUIET_2CORE,
    settings: Settings | None = None,
    limits: Limits | None = None,
    seed: int = 0,
    think_s: float = 1.0,
    stagger_s: float = 2.0,
) -> list[SimStream]:
    """`level` listeners for `duration_s` of simulated time; every stream they started."""
    sim = Simulation(costs, settings, limits)
    picker = TextPicker(load_texts(LANGUAGES, max_sentences=6), seed)
    streams: list[SimStream] = []
    for user in range(level):
        rng, think = picker.for_user(level, user), random.Random(f"think:{seed}:{level}:{user}")

        def start(when: float, rng: random.Random = rng) -> None:
            if when < duration_s:
                streams.append(sim.request(picker.pick(rng), on_end, at=when))

        def on_end(
            stream: SimStream,
            start: Callable[[float], None] = start,
            think: random.Random = think,
        ) -> None:
            assert stream.playback.end_time is not None
            pause = think.expovariate(1.0 / think_s) if think_s > 0 else 0.0
            sim.clock.at(stream.playback.end_time + pause, start)

        sim.clock.at(stagger_s * user / level, start)
    sim.run_until_idle()
    return streams


def heavy(
    count: int = 4, probes: int = 5, settle_s: float = 8.0, costs: Costs = QUIET_2CORE
) -> dict[str, float]:
    """`loadtest --heavy`: a newcomer's TTFA, idle and while `count` maximum-cost requests
    stream (5000 characters, steps 50, speed 0.5), probed one after another."""
    from loadtest.heavy import HEAVY_SPEED, HEAVY_STEPS, NEWCOMER, heavy_text

    idle = Simulation(costs)
    first = idle.request(NEWCOMER)
    idle.run_until_idle()
    assert first.ttfa is not None
    sim = Simulation(costs)
    big = Text(id="heavy", language="en", text=heavy_text())
    for _ in range(count):
        sim.request(big, steps=HEAVY_STEPS, speed=HEAVY_SPEED)
    loaded: list[SimStream] = []

    def probe(when: float) -> None:
        def again(stream: SimStream) -> None:
            if len(loaded) < probes:
                sim.clock.at(sim.clock.now + 0.3, probe)

        loaded.append(sim.request(NEWCOMER, again, at=when))

    sim.clock.at(settle_s, probe)
    while len(loaded) < probes or loaded[-1].ttfa is None:
        sim.clock.fire()
        if sim.scheduler.step(block=False) is None:
            sim.clock.now = sim.clock.next_event() or sim.clock.now
    ttfas = [s.ttfa for s in loaded if s.ttfa is not None]
    return {
        "idle_s": first.ttfa,
        "median_s": statistics.median(ttfas),
        "max_s": max(ttfas),
        "ratio_median": statistics.median(ttfas) / first.ttfa,
        "ratio_max": max(ttfas) / first.ttfa,
    }


def serving(batch: int, seconds: float = 20.0, costs: Costs = QUIET_2CORE) -> dict[str, float]:
    """`make bench`'s serving phase: 2B+2 closed-loop clients, one ~100-character chunk per
    request, `--max-batch B`, no frame budget; audio seconds per second beside the engine's
    own (a batch of B synthesized whole), as the bench's server/engine ratio."""
    settings = Settings(max_batch=batch, max_batch_tokens=100_000, first_chunk_chars=300)
    sim = Simulation(costs, settings)
    lengths = [80 + (17 * k) % 41 for k in range(64)]  # 80..120 characters, mixed
    audio = [0.0]
    warmup = 5.0

    def client(k: int) -> Callable[[float], None]:
        def send(when: float) -> None:
            if when >= warmup + seconds:
                return
            text = Text(id=f"b{k}", language="en", text="a" * lengths[k % len(lengths)])

            def done(stream: SimStream) -> None:
                if warmup <= sim.clock.now < warmup + seconds:
                    audio[0] += stream.playback.audio_seconds
                sim.clock.at(sim.clock.now, client(k + 2 * batch + 2))

            sim.request(text, done, at=when)

        return send

    for k in range(2 * batch + 2):
        sim.clock.at(0.0, client(k))
    sim.run_until_idle()
    served = audio[0] / seconds
    c = costs
    frames = [math.ceil(n / CHARS_PER_SECOND / DEFAULT_SPEED * SAMPLE_RATE / FRAME_SAMPLES)
              for n in lengths[:batch]]  # fmt: skip
    alone = (
        c.admit_s + c.admit_per_token_s * sum(n + 2 for n in lengths[:batch])
        + 5 * (c.step_s + c.step_per_frame_s * batch * max(frames))
        + sum(c.vocode_s + c.vocode_per_frame_s * f for f in frames)
    )  # fmt: skip
    engine = sum(n / CHARS_PER_SECOND / DEFAULT_SPEED for n in lengths[:batch]) / alone
    return {"server_rtf": served, "engine_rtf": engine, "ratio": served / engine}


def report(level: int, streams: Sequence[SimStream], t1_s: float) -> dict[str, float]:
    ttfas = sorted(s.ttfa for s in streams if s.ttfa is not None)
    p95 = percentile(ttfas, 95) or 0.0
    gapless = sum(1 for s in streams if not s.gaps) / len(streams)
    return {
        "level": level,
        "streams": len(streams),
        "p50": statistics.median(ttfas),
        "p95": p95,
        "max": ttfas[-1],
        "p95_over_t1": p95 / t1_s,
        "gapless": gapless,
        "worst_gap": max((g for s in streams for g in s.gaps), default=0.0),
        "passes": float(gapless == 1.0 and p95 <= P95_BOUND * t1_s),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadtest.simulate", description=__doc__)
    parser.add_argument("--listeners", default="4,6,8")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--seeds", type=int, default=3, help="runs per level, pooled")
    parser.add_argument("--heavy", type=int, default=0, help="also the heavy case, N requests")
    parser.add_argument("--serving", action="store_true", help="also make bench's serving phase")
    args = parser.parse_args(argv)
    t1_s = t1()
    print(f"T1 {t1_s:.3f} s (simulated, {QUIET_2CORE})")
    for level in (int(x) for x in args.listeners.split(",")):
        streams = [
            s for seed in range(args.seeds) for s in listeners(level, args.duration, seed=seed)
        ]
        r = report(level, streams, t1_s)
        print(
            f"{level:3d} listeners: {r['streams']:.0f} streams, TTFA p50 {r['p50']:.3f} "
            f"p95 {r['p95']:.3f} max {r['max']:.3f} (p95/T1 {r['p95_over_t1']:.2f}), "
            f"gapless {r['gapless']:.0%}, worst gap {r['worst_gap']:.2f} s"
        )
    for b in (1, 8) if args.serving else ():
        r = serving(b, seconds=40.0)
        print(
            f"serving B={b}: server {r['server_rtf']:.2f}x real time, engine "
            f"{r['engine_rtf']:.2f}x: {r['ratio']:.3f}"
        )
    if args.heavy:
        h = heavy(args.heavy)
        print(
            f"heavy x{args.heavy}: newcomer idle {h['idle_s']:.3f} s, loaded median "
            f"{h['median_s']:.3f} ({h['ratio_median']:.2f}x) max {h['max_s']:.3f} "
            f"({h['ratio_max']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
