"""How a newcomer's first chunk gets through a busy scheduler: exact schedules with a fake
engine and a fake clock (see also tests/test_scheduler.py)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from loadtest import ticks
from supertonic_grpc.engine import Flight
from supertonic_grpc.scheduler import (
    Affine,
    CostModel,
    JobResult,
    Limits,
    Policy,
    Priority,
    Running,
    Scheduler,
    Ticket,
    TickTrace,
)
from tests.fake_engine import FakeClock, FakeEngine, job

HIGH, NORMAL = Priority.HIGH, Priority.NORMAL
_EMPTY = torch.zeros(1)


def started(scheduler: Scheduler) -> Scheduler:
    scheduler._running_flag = True  # driven by hand with step(block=False)
    return scheduler


def results(out: list) -> list[JobResult]:
    return [o for o in out if isinstance(o, JobResult)]


def running(rid: int, priority: Priority, deadline: float, frames: int, steps_left: int) -> Running:
    """A chunk already in the engine, `steps_left` flow steps from done (5 in all)."""
    j = job(Ticket(rid), priority, deadline, [], tokens=frames, steps=5, index=int(priority))
    flight = Flight(j.utterance, frames, frames * 10, _EMPTY, _EMPTY, _EMPTY, step=5 - steps_left)
    return Running(j, flight, admitted=0.0)


def policy(**limits: object) -> Policy:
    # A fixed cost model (nothing learned): 5e-4 s per padded frame of a step, 1e-3 s per
    # vocoded frame, at least 32 frames each.
    return Policy(Limits(**limits), CostModel(), sample_rate=100, frame_samples=10)  # type: ignore[arg-type]


def test_later_pieces_are_short_and_only_the_due_ones_while_a_first_chunk_waits() -> None:
    p = policy()
    due = running(1, NORMAL, 0.5, frames=100, steps_left=0)  # its listener runs dry in 0.5 s
    later = running(2, NORMAL, 60.0, frames=100, steps_left=0)  # a minute of slack
    pair = [due, later]
    # Uncontended: whole 120-frame pieces (here the rest of the chunk), in deadline order,
    # within the tick's vocoding budget.
    assert p.vocode_set(pair, 0.0, high_work=False) == [(due, 100), (later, 100)]
    # A first chunk is waiting: only the due piece, and a short one.
    assert p.vocode_set(pair, 0.0, high_work=True) == [(due, 40)]


def test_a_piece_yields_a_tick_when_its_slack_covers_the_newcomers_and_its_decode() -> None:
    p = policy()
    newcomer = running(9, HIGH, 0.0, frames=30, steps_left=2)
    # Two steps of 32 frames (the floor) and the 10-frame first piece: 0.042 s.
    ahead = p.newcomers_left_s([newcomer], [])
    assert ahead == pytest.approx(2 * 0.016 + 0.010)
    # 40 frames and 20 of context decode in 0.06 s; with the margin, 0.502 s is needed.
    piece = running(1, NORMAL, 0.53, frames=100, steps_left=0)
    assert p.piece_can_yield(piece, 40, [piece], now=0.0, ahead_s=ahead)
    assert not p.piece_can_yield(piece, 40, [piece], now=0.03, ahead_s=ahead)
    # Planning is stricter: a piece this close to due is decoded while newcomers wait.
    assert not p.piece_can_wait(piece, 40, [piece], now=0.0)
    # ...unless its slack covers the newcomers' remaining work as well: then it is left for
    # after their first pieces. A 40-frame piece (contended) needs 0.042 + 0.06 + 0.4 s.
    assert p.vocode_set([piece], 0.0, high_work=True, ahead_s=ahead) == []
    assert p.vocode_set([piece], 0.06, high_work=True, ahead_s=ahead) == [(piece, 40)]


def test_an_urgent_later_chunk_waits_for_a_newcomer_when_its_slack_covers_it() -> None:
    p = policy()
    newcomer = running(9, HIGH, 0.0, frames=30, steps_left=2)
    # The later chunk needs 2 x 0.05 s of steps + 0.14 s of vocoding = 0.24 s: urgent while
    # its slack is at most 2 x 0.24 + 0.4 = 0.88 s. The newcomer needs 0.042 s more.
    can_wait = running(1, NORMAL, 0.8, frames=100, steps_left=2)
    groups, urgent = p.step_groups([newcomer, can_wait], now=0.0, high_run_s=0.0)
    assert groups == [[newcomer]] and urgent == 0
    cannot = running(1, NORMAL, 0.6, frames=100, steps_left=2)
    groups, urgent = p.step_groups([newcomer, cannot], now=0.0, high_run_s=0.0)
    assert groups == [[newcomer], [cannot]] and urgent == 1


def test_an_urgent_chunk_of_a_50_step_stream_does_not_add_its_steps_to_a_newcomers() -> None:
    p = policy()
    newcomer = running(9, HIGH, 0.0, frames=30, steps_left=2)
    costly = running(1, NORMAL, 0.6, frames=100, steps_left=2)  # slack too short to wait
    costly.flight.utterance = dataclasses.replace(costly.flight.utterance, steps=50)
    costly.flight.step = 48  # as urgent as the 5-step one above: 2 steps to go
    groups, urgent = p.step_groups([newcomer, costly], now=0.0, high_run_s=0.0)
    assert groups == [[newcomer]] and urgent == 0
    # It gets the engine between bursts of first chunks, as a hopeless stream does.
    groups, _ = p.step_groups([newcomer, costly], now=0.0, high_run_s=p.limits.high_burst_s)
    assert groups == [[costly]]
    # Up to expensive_ratio times the newcomer's steps it still may (20 against 5).
    costly.flight.utterance = dataclasses.replace(costly.flight.utterance, steps=20)
    costly.flight.step = 18
    assert p.step_groups([newcomer, costly], now=0.0, high_run_s=0.0)[0] == [[newcomer], [costly]]


def test_a_later_chunk_is_not_held_back_for_a_costly_first_chunk_in_flight() -> None:
    p = policy()
    heavy = running(9, HIGH, 0.0, frames=100, steps_left=30)
    heavy.flight.utterance = dataclasses.replace(heavy.flight.utterance, steps=50)
    listener = job(Ticket(1), NORMAL, 60.0, [], tokens=40, steps=5, index=1)  # a minute of slack
    # A 50-step first chunk is in flight for seconds: the listener's next chunk is admitted
    # now, not held until it is due.
    assert p.admissions([], [listener], [heavy], now=0.0) == [listener]
    # A comparable newcomer (5 steps) is in flight for a fraction of a second: it waits.
    newcomer = running(8, HIGH, 0.0, frames=30, steps_left=3)
    assert p.admissions([], [listener], [newcomer], now=0.0) == []
    assert p.admissions([], [listener], [heavy, newcomer], now=0.0) == []


def test_a_newcomer_arriving_mid_tick_makes_that_ticks_vocoding_yield() -> None:
    clock = FakeClock()
    engine = FakeEngine(clock, step_cost=0.001)
    s = started(Scheduler(engine, clock=clock))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now + 60, out, tokens=200, steps=2, index=1))
    assert s.step(block=False).stepped == ((1, 1, 0),)
    engine.during_step = lambda: s.submit(job(Ticket(9), HIGH, clock.now, out, tokens=30))
    second = s.step(block=False)
    # Chunk (1, 1) is denoised, but its listener has a minute of audio: it is not decoded
    # while the newcomer, which arrived during this step, waits for the next tick.
    assert second.stepped == ((1, 1, 1),) and second.vocoded == ()
    third = s.step(block=False)
    assert third.admitted == ((9, 0),) and third.stepped == ((9, 0, 0),)


@pytest.mark.parametrize("queued", [False, True])
def test_a_full_running_set_with_work_queued_decodes_what_could_wait(queued: bool) -> None:
    clock = FakeClock()
    engine = FakeEngine(clock, step_cost=0.001)
    s = started(Scheduler(engine, limits=Limits(max_batch=2, max_running=2), clock=clock))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now + 60, out, tokens=100, steps=1, index=1))

    def arrivals() -> None:
        s.submit(job(Ticket(2), HIGH, clock.now, out, tokens=5, steps=4))
        if queued:  # a listener's next chunk, with no room to start
            s.submit(job(Ticket(3), NORMAL, clock.now + 60, out, tokens=5, steps=1, index=1))

    engine.during_step = arrivals
    first = s.step(block=False)  # chunk (1, 1) denoised; its minute of audio can wait
    assert first.stepped == ((1, 1, 0),) and first.vocoded == ()
    second = s.step(block=False)
    assert second.admitted == ((2, 0),)  # the newcomer takes the last slot
    in_flight = [r.job.ticket.request_id for r in s._running]
    if queued:
        # Chunk (3, 1) cannot start until a slot frees: holding (1, 1) back for the newcomer
        # would hold every queued chunk too, so its piece is decoded now and it leaves.
        assert second.vocoded == ((1, 1, 0),) and in_flight == [2]
    else:  # nothing waits for its slot: it waits for its due time
        assert second.vocoded == () and in_flight == [1, 2]


def test_a_first_piece_goes_out_before_the_urgent_later_chunks_step() -> None:
    clock = FakeClock()
    engine = FakeEngine(clock, step_cost=0.001)
    s = started(Scheduler(engine, max_batch_tokens=300, clock=clock))
    out: list = []
    # Its listener runs dry in 0.5 s and it needs ~0.27 s: it cannot wait for the newcomer.
    s.submit(job(Ticket(1), NORMAL, clock.now + 0.5, out, tokens=250, steps=1, index=1))
    first: list = []
    s.submit(job(Ticket(2), HIGH, clock.now, first, tokens=30, steps=1))
    t0 = clock.now
    tick = s.step(block=False)
    assert tick.stepped == ((2, 0, 0), (1, 1, 0)) and tick.urgent == 1
    # Handed over right after its own 30-frame step, before the urgent 250-frame one.
    assert results(first)[0].ready == t0 + 0.030
    assert tick.first_pieces == ((2, t0 + 0.030),)


def test_the_piece_after_a_first_piece_waits_for_a_much_cheaper_newcomers_first_audio() -> None:
    def schedule(other_tokens: int | None) -> tuple[list[int], list[tuple]]:
        clock = FakeClock()
        engine = FakeEngine(clock)
        # A 0.5 s first piece, so what follows it has little slack.
        s = started(Scheduler(engine, clock=clock, limits=Limits(first_piece_frames=5)))
        out: list = []
        s.submit(job(Ticket(1), HIGH, clock.now, out, tokens=200, steps=2))  # 400 frame-steps
        s.step(block=False)
        if other_tokens is not None:  # arrives during the chunk's last step
            other = job(Ticket(2), HIGH, clock.now, [], tokens=other_tokens, steps=2)
            engine.during_step = lambda: s.submit(other)
        ticks = []
        while (tick := s.step(block=False)) is not None:
            ticks.append((tick.stepped, tick.vocoded))
        return [len(p.synthesized.audio) // 10 for p in results(out)], ticks

    sizes, ticks = schedule(None)
    assert sizes == [5, 120, 75] and ticks[0] == (((1, 0, 1),), ((1, 0, 0), (1, 0, 1)))
    # A much cheaper newcomer (40 frame-steps, under a quarter): the first piece goes out
    # alone, and what follows waits while its slack covers the newcomer's remaining work:
    # it is decoded right after the newcomer's first piece.
    sizes, ticks = schedule(other_tokens=20)
    assert ticks[0] == (((1, 0, 1),), ((1, 0, 0),))
    assert ticks[1] == (((2, 0, 0),), ())
    assert ticks[2] == (((2, 0, 1),), ((2, 0, 0), (1, 0, 1), (2, 0, 1)))
    # A comparable one (300 frame-steps): the slack does not cover its work; as usual.
    sizes, ticks = schedule(other_tokens=150)
    assert sizes == [5, 120, 75] and ticks[0] == (((1, 0, 1),), ((1, 0, 0), (1, 0, 1)))


def test_the_rest_of_a_short_first_chunk_is_priced_at_its_length_and_yields() -> None:
    p = policy()
    # A 30-frame first chunk whose 10-frame first piece is out: 20 frames are left.
    first = running(1, HIGH, 0.6, frames=30, steps_left=0)
    first.pieces, first.flight.vocoded_frames = 1, 10
    newcomer = job(Ticket(9), HIGH, 0.0, [], tokens=30, steps=5)  # as costly: a long piece
    assert p.follow_frames(first, [newcomer]) == 20
    # Its rest decodes in 0.04 s (20 frames and 20 of context), not a 120-frame piece's
    # 0.14 s: with the newcomer's 0.1 s ahead and the 0.4 s margin it fits the 0.6 s slack,
    # so it waits for the newcomer's first piece.
    assert p.follow_set([first], [newcomer], [first], now=0.0, ahead_s=0.1) == []
    assert p.follow_set([first], [newcomer], [first], now=0.1, ahead_s=0.1) == [(first, 20)]


def test_every_tick_is_traced_and_a_first_chunks_path_is_read_back(tmp_path) -> None:
    clock = FakeClock()
    path = tmp_path / "ticks.jsonl"
    trace = TickTrace(path)
    s = started(Scheduler(FakeEngine(clock, step_cost=0.001), clock=clock, trace=trace))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now + 60, out, tokens=100, steps=3, index=1))
    s.step(block=False)  # a tick in flight when the newcomer arrives
    s.submit(job(Ticket(7), HIGH, clock.now, out, tokens=20, steps=2))
    clock.now += 0.05  # it waits 50 ms for the engine
    while s.step(block=False) is not None:
        pass
    trace.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len(s.history) and rows[1]["admitted"] == [[7, 0]]
    (path7,) = ticks.first_audio(rows)
    assert path7.request_id == 7 and path7.ticks == 2
    assert np.isclose(path7.total_s, 0.05 + 0.020 + 0.020)  # queued, then 2 steps alone
    assert path7.company == 0


def test_a_short_newcomer_does_not_share_its_step_with_a_50_step_first_chunk() -> None:
    p = policy()
    newcomer = running(9, HIGH, 0.0, frames=30, steps_left=5)
    heavy = running(1, HIGH, 0.0, frames=200, steps_left=5)
    heavy.flight.utterance = dataclasses.replace(heavy.flight.utterance, steps=50)
    heavy.flight.step = 5  # 45 flow steps to go, over 200 frames
    # Padding the newcomer to 200 frames would cost it 0.1 s a step instead of 0.016 s.
    groups, _ = p.step_groups([heavy, newcomer], now=0.0, high_run_s=0.0)
    assert groups == [[newcomer]]
    # However long first chunks have had the engine, until the heavy one has waited for
    # the burst bound; then it is due one step: with the newcomer when both fit the step's
    # frame budget, else in a call of its own after the newcomer's.
    groups, _ = p.step_groups([heavy, newcomer], now=0.0, high_run_s=p.limits.high_burst_s)
    assert groups == [[newcomer]]
    heavy.held_s = p.limits.high_burst_s
    assert ids(p.step_groups([heavy, newcomer], now=0.0, high_run_s=0.0)[0]) == [[1, 9]]
    tight = policy(max_step_frames=300)
    assert tight.step_groups([heavy, newcomer], now=0.0, high_run_s=0.0)[0] == [
        [newcomer],
        [heavy],
    ]
    # Comparable first chunks (a short sentence and a 60-character one) share the step.
    longer = running(2, HIGH, 0.0, frames=49, steps_left=5)
    assert ids(p.step_groups([longer, newcomer], now=0.0, high_run_s=0.0)[0]) == [[2, 9]]


def ids(groups: list[list[Running]]) -> list[list[int]]:
    return [sorted(r.ticket.request_id for r in g) for g in groups]


def cpu_like() -> CostModel:
    """The 2-core CPU's shape: 17 ms a call, 0.24 ms a padded frame."""
    return CostModel(step=Affine(0.017, 2.4e-4))


def test_later_chunks_of_very_different_lengths_step_in_calls_of_their_own() -> None:
    p = Policy(Limits(), cpu_like(), sample_rate=100, frame_samples=10)
    short = running(1, NORMAL, 60.0, frames=55, steps_left=3)
    long_ = running(2, NORMAL, 60.0, frames=183, steps_left=3)
    near = running(3, NORMAL, 60.0, frames=170, steps_left=3)
    # Padding 55 frames to 183 would cost 128 x 0.24 ms = 31 ms; another call costs 20 ms.
    # Calls in deadline order of their first members (here: by request, all alike).
    assert ids(p.step_groups([short, long_], now=0.0, high_run_s=0.0)[0]) == [[1], [2]]
    # 13 frames of padding cost less than a call: one call.
    assert ids(p.step_groups([long_, near], now=0.0, high_run_s=0.0)[0]) == [[2, 3]]
    assert ids(p.step_groups([short, long_, near], now=0.0, high_run_s=0.0)[0]) == [[1], [2, 3]]
    # A cost model with no fixed part learned (the prior) cannot price a call: one call.
    assert ids(policy().step_groups([short, long_], now=0.0, high_run_s=0.0)[0]) == [[1, 2]]
    # On a GPU extra rows are nearly free: one call, whatever the lengths.
    gpu = Policy(Limits(mix=True), cpu_like(), sample_rate=100, frame_samples=10)
    assert ids(gpu.step_groups([short, long_], now=0.0, high_run_s=0.0)[0]) == [[1, 2]]


def test_a_newcomer_arriving_mid_tick_goes_before_the_ticks_later_calls_that_can_wait() -> None:
    def schedule(deadline_2: float) -> list[tuple]:
        clock = FakeClock()
        engine = FakeEngine(clock, step_cost=2.4e-4, step_fixed=0.017)
        s = started(Scheduler(engine, clock=clock))
        s.cost.step = Affine(0.017, 2.4e-4)  # as learned on a CPU: calls by length
        out: list = []
        s.submit(job(Ticket(1), NORMAL, clock.now + 60, out, tokens=55, steps=3, index=1))
        s.submit(job(Ticket(2), NORMAL, clock.now + deadline_2, out, tokens=183, steps=3, index=1))
        engine.during_step = lambda: s.submit(job(Ticket(9), HIGH, clock.now, out, tokens=30))
        return [s.step(block=False).stepped for _ in range(2)]

    # The newcomer arrives during the first call (chunk 1's, 30 ms). Chunk 2's call (61 ms)
    # has a minute of slack and waits: the newcomer is admitted 30 ms after it arrived,
    # not 91 ms.
    first, second = schedule(deadline_2=60.0)
    assert first == ((1, 1, 0),)
    assert second[0] == (9, 0, 0)
    # A call whose listener is about to run dry runs all the same (alone: chunk 1 has the
    # slack to wait for a tick without an urgent chunk).
    first, _ = schedule(deadline_2=0.5)
    assert first == ((2, 1, 0),)
