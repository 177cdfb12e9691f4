"""The listener load on the real scheduler, with a cost-model engine and a simulated clock.

``python -m loadtest.simulate --listeners 4,6,8``: the same listeners as ``--listeners``
(play at 1x, think ~1 s, staggered starts, the bundled texts, the server's chunking and
lookahead) drive the real `Scheduler` and policy, but the engine only advances a clock by
what each call would cost on the reference machine (`QUIET_2CORE`, fitted to the quiet
2-core figures in docs/BENCHMARKS.md; `--costs` picks another fitted machine). Every run is
exactly reproducible, and takes seconds whatever else the machine is doing, so scheduling
policies can be compared where a shared machine's timings cannot. It says nothing about
the model's own speed: only the real load test measures that.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections.abc import Callable, Sequence

from loadtest.corpus import LANGUAGES, Text, TextPicker, load_texts
from loadtest.listeners import P95_BOUND, T1_TEXT
from loadtest.simengine import (
    CHARS_PER_SECOND,
    COSTS,
    FRAME_SAMPLES,
    QUIET_2CORE,
    SAMPLE_RATE,
    Costs,
    SimStream,
    Simulation,
)
from loadtest.stats import percentile
from supertonic_grpc.engine import DEFAULT_SPEED
from supertonic_grpc.scheduler import Limits
from supertonic_grpc.settings import Settings


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
    parser.add_argument(
        "--costs", choices=sorted(COSTS), default="quiet", help="the machine whose costs to use"
    )
    args = parser.parse_args(argv)
    costs = COSTS[args.costs]
    t1_s = t1(costs)
    print(f"T1 {t1_s:.3f} s (simulated, {args.costs}: {costs})")
    for level in (int(x) for x in args.listeners.split(",")):
        streams = [
            s
            for seed in range(args.seeds)
            for s in listeners(level, args.duration, costs=costs, seed=seed)
        ]
        r = report(level, streams, t1_s)
        print(
            f"{level:3d} listeners: {r['streams']:.0f} streams, TTFA p50 {r['p50']:.3f} "
            f"p95 {r['p95']:.3f} max {r['max']:.3f} (p95/T1 {r['p95_over_t1']:.2f}), "
            f"gapless {r['gapless']:.0%}, worst gap {r['worst_gap']:.2f} s"
        )
    for b in (1, 8) if args.serving else ():
        r = serving(b, seconds=40.0, costs=costs)
        print(
            f"serving B={b}: server {r['server_rtf']:.2f}x real time, engine "
            f"{r['engine_rtf']:.2f}x: {r['ratio']:.3f}"
        )
    if args.heavy:
        h = heavy(args.heavy, costs=costs)
        print(
            f"heavy x{args.heavy}: newcomer idle {h['idle_s']:.3f} s, loaded median "
            f"{h['median_s']:.3f} ({h['ratio_median']:.2f}x) max {h['max_s']:.3f} "
            f"({h['ratio_max']:.2f}x)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
