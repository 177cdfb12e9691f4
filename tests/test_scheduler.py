"""Scheduler decisions with a fake engine and a fake clock: exact batches, no model."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import pytest

from supertonic_grpc.engine import EngineError, Synthesized, Utterance
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.scheduler import (
    Job,
    JobResult,
    Priority,
    QueueFull,
    Scheduler,
    SchedulerStopped,
    Ticket,
)
from supertonic_grpc.voices import demo_voice

VOICE = demo_voice("M1")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEngine:
    """Records every batch; each item's audio is its token count, so results are checkable."""

    def __init__(self, fail_on: int | None = None, cost: float = 0.0, clock=None) -> None:
        self.batches: list[list[Utterance]] = []
        self.fail_on = fail_on
        self.cost = cost
        self.clock = clock

    def synthesize(self, items: Sequence[Utterance]) -> list[Synthesized]:
        self.batches.append(list(items))
        if self.clock is not None:
            self.clock.now += self.cost
        if self.fail_on is not None and len(self.batches) - 1 == self.fail_on:
            raise EngineError("boom")
        return [Synthesized(np.zeros(len(u.token_ids), np.float32), 0.5) for u in items]


def make_job(
    ticket: Ticket, priority: Priority, deadline: float, outcomes: list, n_tokens: int = 5
) -> Job:
    return Job(
        utterance=Utterance([1] * n_tokens, VOICE, steps=2),
        priority=priority,
        deadline=deadline,
        ticket=ticket,
        on_done=outcomes.append,
    )


def started(scheduler: Scheduler) -> Scheduler:
    # The tests drive `step(block=False)` by hand; `_running` only gates `submit`.
    scheduler._running = True
    return scheduler


def test_first_chunk_goes_ahead_of_a_saturated_queue_of_later_chunks() -> None:
    clock = FakeClock()
    engine = FakeEngine()
    s = started(Scheduler(engine, max_batch=4, max_wait_s=0, clock=clock))
    out: list = []
    running = [Ticket(i) for i in range(1, 7)]
    for t in running:  # later chunks with comfortable deadlines
        s.submit(make_job(t, Priority.NORMAL, clock.now + 60, out))
    newcomer = Ticket(99)
    s.submit(make_job(newcomer, Priority.HIGH, clock.now, out))

    first = s.step(block=False)
    assert first is not None
    assert first.request_ids == (99,)
    assert first.priorities == (Priority.HIGH,)
    second = s.step(block=False)
    assert second is not None and second.request_ids == (1, 2, 3, 4)
    third = s.step(block=False)
    assert third is not None and third.request_ids == (5, 6)
    assert [len(b) for b in engine.batches] == [1, 4, 2]


def test_high_jobs_are_served_oldest_first_and_normal_jobs_by_deadline() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(), max_batch=8, max_wait_s=0, clock=clock))
    out: list = []
    for rid, deadline in ((1, 50.0), (2, 10.0), (3, 30.0)):
        s.submit(make_job(Ticket(rid), Priority.NORMAL, clock.now + deadline, out))
    for rid in (10, 11):
        s.submit(make_job(Ticket(rid), Priority.HIGH, clock.now, out))
        clock.now += 0.001
    assert s.step(block=False).request_ids == (10, 11)
    assert s.step(block=False).request_ids == (2, 3, 1)


def test_urgent_later_chunk_is_promoted_ahead_of_first_chunks() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(), max_batch=2, max_wait_s=0, clock=clock))
    out: list = []
    s.submit(make_job(Ticket(1), Priority.HIGH, clock.now, out))
    s.submit(make_job(Ticket(2), Priority.NORMAL, clock.now + 0.05, out))  # about to run dry
    s.submit(make_job(Ticket(3), Priority.NORMAL, clock.now + 60, out))
    decision = s.step(block=False)
    assert decision.request_ids == (2, 1)
    assert decision.urgent == 1
    assert s.step(block=False).request_ids == (3,)


def test_mixing_fills_a_first_chunk_batch_with_later_chunks_only_when_enabled() -> None:
    for mix, expected in ((False, [(1,), (2, 3)]), (True, [(1, 2, 3)])):
        clock = FakeClock()
        s = started(
            Scheduler(FakeEngine(), max_batch=4, max_wait_s=0, clock=clock, mix_priorities=mix)
        )
        out: list = []
        s.submit(make_job(Ticket(1), Priority.HIGH, clock.now, out))
        s.submit(make_job(Ticket(2), Priority.NORMAL, clock.now + 30, out))
        s.submit(make_job(Ticket(3), Priority.NORMAL, clock.now + 40, out))
        got = []
        while (d := s.step(block=False)) is not None:
            got.append(d.request_ids)
        assert got == expected


def test_cancelled_request_leaves_no_queued_work_and_never_reaches_the_engine() -> None:
    clock = FakeClock()
    engine = FakeEngine()
    s = started(Scheduler(engine, max_batch=8, max_wait_s=0, clock=clock))
    out: list = []
    gone, stays = Ticket(1), Ticket(2)
    for _ in range(3):
        s.submit(make_job(gone, Priority.NORMAL, clock.now + 5, out))
    s.submit(make_job(stays, Priority.NORMAL, clock.now + 5, out))
    assert s.queued_for(gone) == 3
    assert s.cancel(gone) == 3
    assert s.queued_for(gone) == 0
    assert s.queued() == 1
    s.step(block=False)
    assert [u for b in engine.batches for u in b] == [engine.batches[0][0]]
    assert len(out) == 1 and isinstance(out[0], JobResult)


def test_a_ticket_cancelled_without_cancel_call_is_dropped_at_selection() -> None:
    clock = FakeClock()
    engine = FakeEngine()
    s = started(Scheduler(engine, max_batch=8, max_wait_s=0, clock=clock))
    out: list = []
    t = Ticket(1)
    s.submit(make_job(t, Priority.HIGH, clock.now, out))
    t.cancelled = True
    decision = s.step(block=False)
    assert decision is not None and decision.dropped == 1 and decision.request_ids == ()
    assert engine.batches == []


def test_model_failure_fails_only_its_batch_and_the_next_batch_succeeds() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(fail_on=0), max_batch=1, max_wait_s=0, clock=clock))
    out: list = []
    s.submit(make_job(Ticket(1), Priority.HIGH, clock.now, out))
    s.submit(make_job(Ticket(2), Priority.HIGH, clock.now, out))
    first = s.step(block=False)
    second = s.step(block=False)
    assert "boom" in first.error and second.error == ""
    assert isinstance(out[0], EngineError)
    assert isinstance(out[1], JobResult)


def test_queue_capacity_refuses_new_work_with_a_retry_hint_but_not_continuations() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(), max_batch=1, max_queue=2, max_wait_s=0, clock=clock))
    out: list = []
    t = Ticket(1)
    s.submit(make_job(t, Priority.HIGH, clock.now, out))
    s.submit(make_job(t, Priority.NORMAL, clock.now, out))
    with pytest.raises(QueueFull) as exc:
        s.submit(make_job(Ticket(2), Priority.HIGH, clock.now, out))
    assert exc.value.retry_after_s > 0
    s.submit(make_job(t, Priority.NORMAL, clock.now, out), force=True)
    assert s.queued() == 3


def test_results_carry_queue_wait_compute_time_and_batch_size() -> None:
    clock = FakeClock()
    s = started(
        Scheduler(FakeEngine(cost=0.25, clock=clock), max_batch=4, max_wait_s=0, clock=clock)
    )
    out: list = []
    s.submit(make_job(Ticket(1), Priority.NORMAL, clock.now + 9, out, n_tokens=7))
    clock.now += 0.5
    s.submit(make_job(Ticket(2), Priority.NORMAL, clock.now + 9, out, n_tokens=3))
    s.step(block=False)
    assert [r.batch_size for r in out] == [2, 2]
    assert [r.queue_s for r in out] == pytest.approx([0.5, 0.0])
    assert [r.compute_s for r in out] == pytest.approx([0.25, 0.25])
    assert [len(r.synthesized.audio) for r in out] == [7, 3]


def test_metrics_record_batches_depth_and_waits() -> None:
    clock = FakeClock()
    metrics = Metrics()
    s = started(Scheduler(FakeEngine(), max_batch=4, max_wait_s=0, clock=clock, metrics=metrics))
    out: list = []
    for rid in range(3):
        s.submit(make_job(Ticket(rid), Priority.NORMAL, clock.now + 9, out))
    text = metrics.render().decode()
    assert 'supertonic_queue_depth{priority="normal"} 3.0' in text
    s.step(block=False)
    text = metrics.render().decode()
    assert 'supertonic_queue_depth{priority="normal"} 0.0' in text
    assert "supertonic_batch_size_sum 3.0" in text
    assert 'supertonic_chunks_total{priority="normal"} 3.0' in text


def test_thread_runs_jobs_and_calls_then_stop_fails_leftovers() -> None:
    engine = FakeEngine()
    s = Scheduler(engine, max_batch=4, max_wait_s=0.001)
    s.start()
    done = threading.Event()
    out: list = []

    def on_done(outcome: object) -> None:
        out.append(outcome)
        done.set()

    job = make_job(Ticket(1), Priority.HIGH, 0.0, out)
    job.on_done = on_done
    s.submit(job)
    assert done.wait(5)
    assert s.call(lambda e: len(e.batches)).result(5) == 1
    s.stop()
    with pytest.raises(SchedulerStopped):
        s.submit(make_job(Ticket(2), Priority.HIGH, 0.0, out))


def test_token_budget_bounds_a_batch_but_always_admits_one_job() -> None:
    clock = FakeClock()
    engine = FakeEngine()
    s = started(Scheduler(engine, max_batch=8, max_batch_tokens=100, max_wait_s=0, clock=clock))
    out: list = []
    for rid, tokens in ((1, 60), (2, 60), (3, 30), (4, 250)):
        s.submit(make_job(Ticket(rid), Priority.NORMAL, clock.now + rid, out, n_tokens=tokens))
    assert s.step(block=False).request_ids == (1,)  # 2 would overflow; order is kept
    assert s.step(block=False).request_ids == (2, 3)
    assert s.step(block=False).request_ids == (4,)  # alone over budget: still served
    assert s.queued() == 0


def test_a_job_with_slack_does_not_join_a_batch_it_would_make_late() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(), max_batch=8, max_wait_s=0, clock=clock))
    s._sec_per_token = 0.01  # as learned from earlier batches
    out: list = []
    s.submit(make_job(Ticket(1), Priority.NORMAL, clock.now + 1.0, out, n_tokens=50))
    s.submit(make_job(Ticket(2), Priority.NORMAL, clock.now + 30, out, n_tokens=100))
    assert s.step(block=False).request_ids == (1,)  # together: 1.5 s > the 1.0 s deadline
    assert s.step(block=False).request_ids == (2,)


def test_a_deadline_already_lost_does_not_stop_batching_for_throughput() -> None:
    clock = FakeClock()
    s = started(Scheduler(FakeEngine(), max_batch=8, max_wait_s=0, clock=clock))
    s._sec_per_token = 0.01
    out: list = []
    s.submit(make_job(Ticket(1), Priority.NORMAL, clock.now + 0.1, out, n_tokens=50))
    s.submit(make_job(Ticket(2), Priority.NORMAL, clock.now + 30, out, n_tokens=100))
    assert s.step(block=False).request_ids == (1, 2)
