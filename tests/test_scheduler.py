"""The step-level scheduler with a fake engine and a fake clock: exact schedules, no model."""

from __future__ import annotations

import threading

import pytest

from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND, EngineError
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.scheduler import (
    EngineShortfall,
    JobResult,
    Limits,
    Priority,
    QueueFull,
    Scheduler,
    SchedulerStopped,
    Ticket,
)
from supertonic_grpc.settings import Settings
from supertonic_grpc.validation import fitting_chunk_chars
from tests.fake_engine import FakeClock, FakeEngine, job

HIGH, NORMAL = Priority.HIGH, Priority.NORMAL


def started(scheduler: Scheduler) -> Scheduler:
    # The tests drive `step(block=False)` by hand; the flag only gates `submit`.
    scheduler._running_flag = True
    return scheduler


def run(s: Scheduler, limit: int = 200) -> list:
    ticks = []
    while (d := s.step(block=False)) is not None:
        ticks.append(d)
        assert len(ticks) < limit
    return ticks


def results(out: list, ticket: Ticket | None = None) -> list[JobResult]:
    return [o for o in out if isinstance(o, JobResult)]


def test_a_tick_admits_steps_and_vocodes_a_chunk_in_pieces() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), clock=clock))
    out: list = []
    s.submit(job(Ticket(1), HIGH, clock.now, out, tokens=25, steps=2))
    ticks = run(s)
    assert [t.admitted for t in ticks] == [((1, 0),), ()]
    assert [t.stepped for t in ticks] == [((1, 0, 0),), ((1, 0, 1),)]
    # First piece right after the last step (10 frames, ~0.7 s), handed over, then the rest.
    assert [t.vocoded for t in ticks] == [(), ((1, 0, 0), (1, 0, 1))]
    assert [(r.piece, r.last_piece, len(r.synthesized.audio)) for r in results(out)] == [
        (0, False, 100),
        (1, True, 150),
    ]
    assert s.queued() == 0


def test_a_job_without_pieces_gets_its_whole_chunk_once() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), clock=clock))
    out: list = []
    s.submit(job(Ticket(1), HIGH, clock.now, out, tokens=90, steps=1, pieces=False))
    run(s)
    (only,) = results(out)
    assert only.last_piece and len(only.synthesized.audio) == 900


def test_a_newcomer_starts_at_the_next_step_while_long_chunks_are_mid_flight() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock, step_cost=0.001), max_batch=8, clock=clock))
    out: list = []
    for rid in (1, 2):  # later chunks of running streams, plenty of slack
        s.submit(job(Ticket(rid), NORMAL, clock.now + 60, out, tokens=80, steps=10, index=1))
    run_for = [s.step(block=False) for _ in range(3)]
    assert [t.request_ids for t in run_for] == [(1, 2)] * 3
    s.submit(job(Ticket(9), HIGH, clock.now, out, tokens=20, steps=2))
    a, b, c = (s.step(block=False) for _ in range(3))
    # The newcomer is admitted at the next tick and steps alone until its first piece.
    assert a.admitted == ((9, 0),) and a.stepped == ((9, 0, 0),)
    assert b.stepped == ((9, 0, 1),) and b.vocoded == ((9, 0, 0), (9, 0, 1))
    # Then the long chunks resume exactly where they were.
    assert c.stepped == ((1, 1, 3), (2, 1, 3))


def test_later_chunks_step_in_deadline_order_when_rows_are_scarce() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), max_batch=1, clock=clock))
    out: list = []
    for rid, slack in ((1, 50.0), (2, 10.0), (3, 30.0)):
        s.submit(job(Ticket(rid), NORMAL, clock.now + slack, out, steps=1))
    stepped = [t.request_ids for t in run(s) if t.stepped]
    assert stepped == [(2,), (3,), (1,)]


def test_first_chunks_are_admitted_oldest_first() -> None:
    clock = FakeClock()
    limits = Limits(max_batch=2, max_running=2)
    s = started(Scheduler(FakeEngine(clock), clock=clock, limits=limits))
    out: list = []
    for rid in (10, 11, 12):
        s.submit(job(Ticket(rid), HIGH, clock.now, out, steps=1))
        clock.now += 0.001
    first = s.step(block=False)
    assert first.admitted == ((10, 0), (11, 0))
    assert s.step(block=False).admitted == ((12, 0),)


def test_an_expensive_first_chunk_does_not_hold_a_cheap_one_behind_it() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), max_batch_tokens=300, clock=clock))
    out: list = []
    for rid in (1, 2):  # 50-step first chunks of slow speech, earlier
        s.submit(job(Ticket(rid), HIGH, clock.now, out, tokens=150, steps=50))
    s.step(block=False)
    s.submit(job(Ticket(9), HIGH, clock.now, out, tokens=40, steps=5))
    ticks = [s.step(block=False) for _ in range(5)]
    assert all(9 in t.request_ids for t in ticks)  # least remaining work first: never waits
    assert any(isinstance(o, JobResult) and o.piece == 0 for o in out)


def test_mixed_step_counts_share_steps_and_leave_when_done() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), clock=clock))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now + 60, out, tokens=5, steps=2))
    s.submit(job(Ticket(2), NORMAL, clock.now + 60, out, tokens=5, steps=4))
    ticks = run(s)
    assert [t.stepped for t in ticks[:4]] == [
        ((1, 0, 0), (2, 0, 0)),
        ((1, 0, 1), (2, 0, 1)),
        ((2, 0, 2),),
        ((2, 0, 3),),
    ]
    assert ticks[1].vocoded == ((1, 0, 0),) and ticks[3].vocoded == ((2, 0, 0),)


def test_cancel_between_steps_frees_the_slot_and_stops_the_cost() -> None:
    clock = FakeClock()
    limits = Limits(max_batch=1, max_running=1)
    s = started(Scheduler(FakeEngine(clock), clock=clock, limits=limits))
    out: list = []
    gone, waiting = Ticket(1), Ticket(2)
    s.submit(job(gone, NORMAL, clock.now + 60, out, tokens=10, steps=20))
    s.submit(job(waiting, NORMAL, clock.now + 90, out, tokens=10, steps=1))
    s.step(block=False)
    s.step(block=False)
    work = gone.work
    assert work == 20 and waiting.work == 0  # the only slot is taken
    s.cancel(gone)
    nxt = s.step(block=False)
    assert nxt.dropped == 1 and nxt.admitted == ((2, 0),) and nxt.request_ids == (2,)
    run(s)
    assert gone.work == work
    assert s.queued_for(gone) == 0 and s.queued() == 0


def test_a_ticket_cancelled_while_queued_never_reaches_the_engine() -> None:
    clock = FakeClock()
    engine = FakeEngine(clock)
    s = started(Scheduler(engine, clock=clock))
    out: list = []
    t = Ticket(1)
    s.submit(job(t, HIGH, clock.now, out))
    t.cancelled = True
    decision = s.step(block=False)
    assert decision is not None and decision.dropped == 1 and decision.admitted == ()
    assert engine.calls["admit"] == 0


def test_an_engine_that_returns_too_few_results_fails_those_jobs() -> None:
    for stage in ("admit", "step", "vocode"):
        clock = FakeClock()
        s = started(Scheduler(FakeEngine(clock, short=stage), clock=clock))
        out: list = []
        s.submit(job(Ticket(1), NORMAL, clock.now + 9, out, steps=1))
        s.submit(job(Ticket(2), NORMAL, clock.now + 9, out, steps=1))
        run(s)
        assert s.queued() == 0, stage  # nobody is left waiting forever
        assert any(isinstance(o, EngineShortfall) for o in out), stage


def test_an_engine_that_raises_fails_only_the_items_of_that_call() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock, fail="step", fail_on=1), max_batch=1, clock=clock))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now + 1, out, steps=1))
    s.submit(job(Ticket(2), NORMAL, clock.now + 2, out, steps=1))
    ticks = run(s)
    assert "boom" in ticks[1].error
    assert isinstance(out[0], JobResult) and out[0].last_piece
    assert isinstance(out[1], EngineError)
    assert s.queued() == 0


def test_a_hopeless_stream_does_not_take_the_step_from_one_that_can_be_saved() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock, step_cost=0.01), max_batch=1, clock=clock))
    out: list = []
    # Stream 1 is already 5 s behind; stream 2 runs dry in 0.2 s and can still make it.
    s.submit(job(Ticket(1), NORMAL, clock.now - 5, out, tokens=10, steps=1))
    s.submit(job(Ticket(2), NORMAL, clock.now + 0.2, out, tokens=10, steps=1))
    first = s.step(block=False)
    assert first.request_ids == (2,) and first.urgent == 1


def test_an_urgent_later_chunk_steps_without_feasible_company_on_cpu() -> None:
    def stepped(mix: bool) -> list[tuple[int, ...]]:
        clock = FakeClock()
        engine = FakeEngine(clock, step_cost=0.001)
        s = started(Scheduler(engine, max_batch=4, clock=clock, mix_priorities=mix))
        out: list = []
        s.submit(job(Ticket(1), NORMAL, clock.now + 60, out, tokens=100, steps=3, index=1))
        s.submit(job(Ticket(2), NORMAL, clock.now + 0.9, out, tokens=100, steps=3, index=1))
        return [t.request_ids for t in run(s) if t.stepped]

    # CPU: a row costs nearly what a call does, so the chunk whose listener runs dry in
    # 0.9 s takes its three steps alone; the one with a minute of slack steps after it.
    assert stepped(mix=False) == [(2,), (2,), (2,), (1,), (1,), (1,)]
    # GPU: extra rows are nearly free, so they share every step.
    assert stepped(mix=True) == [(1, 2), (1, 2), (1, 2)]


def test_an_urgent_later_chunk_steps_beside_a_flood_of_newcomers() -> None:
    clock = FakeClock()
    limits = Limits(max_batch=1, max_running=8, high_burst_s=0.05)
    s = started(Scheduler(FakeEngine(clock, step_cost=0.001), clock=clock, limits=limits))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now + 0.4, out, tokens=10, steps=5))
    for rid in range(10, 16):  # a flood of newcomers
        s.submit(job(Ticket(rid), HIGH, clock.now, out, tokens=10, steps=5))
    ticks = [s.step(block=False) for _ in range(12)]
    # Its slack does not cover the newcomers' work, so it takes each step in a call of its
    # own beside theirs, and the first newcomer is not stopped for it.
    newcomers = [(10, 0, 1), (10, 0, 2), (10, 0, 3), (10, 0, 4), (11, 0, 0)]
    assert [t.stepped for t in ticks[1:6]] == [(n, (1, 0, k)) for k, n in enumerate(newcomers)]
    assert all(t.urgent == 1 for t in ticks[1:6])


def test_first_chunk_bursts_yield_to_a_hopeless_stream_after_a_bound() -> None:
    clock = FakeClock()
    limits = Limits(max_batch=1, max_running=8, high_burst_s=0.05)
    s = started(Scheduler(FakeEngine(clock, step_cost=0.01), clock=clock, limits=limits))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now - 5, out, tokens=10, steps=5))  # 5 s behind
    for rid in range(10, 16):  # a flood of newcomers
        s.submit(job(Ticket(rid), HIGH, clock.now, out, tokens=10, steps=5))
    ticks = [s.step(block=False) for _ in range(12)]
    stepped = [t.request_ids for t in ticks if t.stepped]
    assert stepped[0] == (10,)
    # Not beside the newcomers: alone, once first chunks have had `high_burst_s`.
    assert (1,) in stepped
    assert all(ids == (1,) or 1 not in ids for ids in stepped)


def test_fair_share_takes_one_chunk_per_request_before_a_second() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), max_batch=2, clock=clock))
    out: list = []
    greedy, other = Ticket(1), Ticket(2)
    s.submit(job(greedy, NORMAL, clock.now + 10, out, index=1, steps=3))
    s.submit(job(greedy, NORMAL, clock.now + 11, out, index=2, steps=3))
    s.submit(job(other, NORMAL, clock.now + 20, out, index=1, steps=3))
    assert s.step(block=False).stepped == ((1, 1, 0), (2, 1, 0))


def test_step_frame_budget_bounds_a_step_but_always_takes_one() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), max_batch=8, max_batch_tokens=100, clock=clock))
    out: list = []
    for rid, tokens in ((1, 40), (2, 40), (3, 30), (4, 250)):
        s.submit(job(Ticket(rid), NORMAL, clock.now + rid, out, tokens=tokens, steps=1))
    first = s.step(block=False)
    assert first.request_ids == (1, 2)  # 3 rows x 40 frames would exceed 100
    ticks = run(s)
    assert (4,) in [t.request_ids for t in ticks]  # alone over budget: still served


def test_heavy_requests_do_not_delay_a_newcomers_first_audio_beyond_a_bound() -> None:
    """Four maximum-cost requests (5000 chars, steps 50, speed 0.5) are running; a new
    40-character request must get its first audio within 3x of what it gets on an idle
    server. The heavy chunks are as long as validation allows at speed 0.5, with latents as
    long as the demo speaking rate gives them."""
    cost = dict(step_cost=5e-4, vocode_cost=1e-3, admit_cost=0.01)
    chars = fitting_chunk_chars("en", 0.5)
    frames = int(chars / DEMO_CHARS_PER_SECOND / 0.5 * 44100 / 3072)

    def first_audio(heavy: int) -> float:
        clock = FakeClock()
        engine = FakeEngine(clock, **cost)
        budget = Settings().resolved_max_batch_tokens("cpu")
        s = started(Scheduler(engine, max_batch_tokens=budget, clock=clock))
        out: list = []
        for rid in range(1, heavy + 1):
            t = Ticket(rid)
            for k in (1, 2):  # lookahead 2; hopelessly behind or barely on time
                s.submit(job(t, NORMAL, clock.now + k - 1, out, tokens=frames, steps=50, index=k))
        for _ in range(7):
            s.step(block=False)  # the heavy chunks are mid-flight
        newcomer: list = []
        submitted: list[float] = []

        def arrive() -> None:  # mid-way through a heavy step: it waits for that tick
            submitted.append(clock.now)
            s.submit(job(Ticket(99), HIGH, clock.now, newcomer, tokens=49, steps=5))

        if heavy:
            engine.during_step = arrive
        else:
            arrive()
        for _ in range(1000):
            if newcomer:
                break
            s.step(block=False)
        return clock.now - submitted[0]

    idle = first_audio(0)
    assert first_audio(4) <= 3 * idle


def test_deadlines_follow_the_audio_actually_delivered() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), clock=clock))
    out: list = []
    t = Ticket(1)
    s.submit(job(t, HIGH, clock.now, out, tokens=30, steps=1))
    s.step(block=False)  # first piece: 1 s of audio handed over now
    nxt = job(t, NORMAL, clock.now + 99, out, tokens=10, index=1)
    # Chunk 0 still owes 2 s after its first piece, so chunk 1 is due in 3 s, not 99.
    assert s.policy.deadline(nxt, s._running) == pytest.approx(clock.now + 3.0)


def test_queue_capacity_refuses_new_work_with_a_retry_hint_but_not_continuations() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock), max_batch=1, max_queue=2, clock=clock))
    out: list = []
    t = Ticket(1)
    s.submit(job(t, HIGH, clock.now, out))
    s.submit(job(t, NORMAL, clock.now, out, index=1))
    with pytest.raises(QueueFull) as exc:
        s.submit(job(Ticket(2), HIGH, clock.now, out))
    assert exc.value.retry_after_s > 0
    s.submit(job(t, NORMAL, clock.now, out, index=2), force=True)
    assert s.queued() == 3


def test_results_carry_queue_wait_compute_time_and_batch_size() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(clock, step_cost=0.01), max_batch=4, clock=clock))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now + 9, out, tokens=5, steps=1))
    clock.now += 0.5
    s.submit(job(Ticket(2), NORMAL, clock.now + 9, out, tokens=5, steps=1))
    s.step(block=False)
    assert [r.batch_size for r in results(out)] == [2, 2]
    assert [r.queue_s for r in results(out)] == pytest.approx([0.5, 0.0])
    assert [r.compute_s for r in results(out)] == pytest.approx([0.1, 0.1])


def test_metrics_record_steps_depth_and_waits() -> None:
    clock = FakeClock()
    metrics = Metrics()
    s = started(Scheduler(FakeEngine(clock), max_batch=4, clock=clock, metrics=metrics))
    out: list = []
    for rid in range(3):
        s.submit(job(Ticket(rid), NORMAL, clock.now + 9, out, steps=1))
    text = metrics.render().decode()
    assert 'supertonic_queue_depth{priority="normal"} 3.0' in text
    run(s)
    text = metrics.render().decode()
    assert 'supertonic_queue_depth{priority="normal"} 0.0' in text
    assert "supertonic_batch_size_sum 3.0" in text
    assert 'supertonic_chunks_total{priority="normal"} 3.0' in text
    assert "supertonic_running_chunks 0.0" in text


def test_thread_runs_jobs_and_calls_then_stop_fails_leftovers() -> None:
    engine = FakeEngine()
    s = Scheduler(engine, max_batch=4, max_wait_s=0.001)
    s.start()
    done = threading.Event()
    out: list = []

    def on_done(outcome: object) -> None:
        out.append(outcome)
        if isinstance(outcome, JobResult) and outcome.last_piece:
            done.set()

    j = job(Ticket(1), HIGH, 0.0, out)
    j.on_done = on_done
    s.submit(j)
    assert done.wait(5)
    assert s.call(lambda e: e.calls["admit"]).result(5) == 1
    s.stop()
    with pytest.raises(SchedulerStopped):
        s.submit(job(Ticket(2), HIGH, 0.0, out))


def test_an_urgent_later_chunk_steps_beside_a_newcomer_in_its_own_call() -> None:
    clock = FakeClock()
    engine = FakeEngine(clock)
    s = started(Scheduler(engine, max_batch_tokens=300, clock=clock))
    out: list = []
    s.submit(job(Ticket(1), NORMAL, clock.now + 0.8, out, tokens=250, steps=2, index=1))
    s.submit(job(Ticket(2), HIGH, clock.now, out, tokens=30, steps=2))
    tick = s.step(block=False)
    # Both step (neither waits for the other), in two engine calls: no padding 30 to 250.
    assert tick.stepped == ((2, 0, 0), (1, 1, 0)) and tick.urgent == 1
    assert [[f.frames for f in call] for call in engine.steps] == [[30], [250]]
