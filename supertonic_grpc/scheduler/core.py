"""The scheduler thread: one owner of the engine, fed by many streams through a locked inbox.

Every chunk of every request is a `Job`. The thread's unit of work is one *tick* over the
chunks in flight (see `policy`): admit new chunks, take one flow step over a chosen set of
running chunks (each at its own step index), vocode the next piece of chunks whose flow is
done. Chunks join and leave the running set between ticks (continuous batching), so a new
listener's first chunk starts at the next tick, not after a whole batch.

Each tick is recorded as a `StepDecision`, so tests assert exact schedules with a fake
engine and a fake clock. Cancelled requests leave at the next tick, queued or running.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from supertonic_grpc.scheduler.cost import VOCODER_CONTEXT_FRAMES
from supertonic_grpc.scheduler.decision import StepDecision
from supertonic_grpc.scheduler.jobs import (
    EngineLike,
    Job,
    MetricsLike,
    Priority,
    QueueFull,
    SchedulerStopped,
    Ticket,
)
from supertonic_grpc.scheduler.policy import CostModel, Limits, Policy, Running
from supertonic_grpc.scheduler.stages import Stages

log = logging.getLogger(__name__)

T = TypeVar("T")


class Scheduler:
    """Runs ticks over the chunks of many requests on one thread."""

    def __init__(
        self,
        engine: EngineLike,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.0,
        max_queue: int = 512,
        max_batch_tokens: int = 1_000_000,
        mix_priorities: bool = False,
        metrics: MetricsLike | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: int = 1000,
        limits: Limits | None = None,
        trace: Callable[[StepDecision], None] | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.engine = engine
        self.max_batch = max_batch
        # An idle scheduler waits this long after a first arrival so a burst is admitted
        # together; a busy one never waits (newcomers join at the next tick).
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.limits = limits or Limits(
            max_batch=max_batch,
            max_step_frames=max_batch_tokens,
            max_running=2 * max_batch,
            mix=mix_priorities,
        )
        self.metrics = metrics
        self.clock = clock
        self.history: deque[StepDecision] = deque(maxlen=history)
        self.trace = trace  # sees every tick (`--trace-ticks`); must be quick
        self.cost = CostModel()
        self.sample_rate = int(getattr(engine, "sample_rate", 44100))
        self.frame_samples = int(getattr(engine, "frame_samples", 3072))
        context = int(getattr(engine, "vocoder_context", VOCODER_CONTEXT_FRAMES))
        self.policy = Policy(
            self.limits, self.cost, self.sample_rate, self.frame_samples, context_frames=context
        )
        self._high: list[tuple[float, int, Job]] = []  # by arrival
        self._normal: list[tuple[float, int, Job]] = []  # by submitted deadline
        self._running_count = 0
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._ticks = itertools.count()
        self._calls: deque[tuple[Callable[[EngineLike], Any], Future[Any]]] = deque()
        self._thread: threading.Thread | None = None
        self._running_flag = False
        self._high_run_s = 0.0  # engine time of consecutive ticks spent on first chunks
        self._admitting: list[Job] = []  # taken from the queues for this tick's admission
        self.stages = Stages(
            engine, self.cost, metrics, clock, self.sample_rate, context_frames=context
        )

    # --- the event-loop side (any thread) ----------------------------------------------

    def submit(self, job: Job, *, force: bool = False) -> None:
        """Queue a job. Raises QueueFull at capacity (unless `force`: a running stream's
        next chunk is never refused), SchedulerStopped when not running."""
        with self._cond:
            if not self._running_flag:
                raise SchedulerStopped("scheduler is not running")
            backlog = len(self._high) + len(self._normal) + self._running_count
            if not force and backlog >= self.max_queue:
                raise QueueFull(backlog, self.max_queue, self.retry_after_s())
            job.submitted = self.clock()
            job.seq = next(self._seq)
            if job.priority is Priority.HIGH:
                heapq.heappush(self._high, (job.submitted, job.seq, job))
            else:
                heapq.heappush(self._normal, (job.deadline, job.seq, job))
            self._update_depth()
            self._cond.notify()

    def cancel(self, ticket: Ticket) -> int:
        """Mark a request cancelled and drop its queued jobs; its running chunks leave at
        the next tick, so its cost stops there. Returns how many queued jobs were dropped."""
        with self._cond:
            ticket.cancelled = True
            dropped = self._drop_queued()
            self._update_depth()
            self._cond.notify()
        return dropped

    def call(self, fn: Callable[[EngineLike], T]) -> Future[T]:
        """Run `fn(engine)` on the scheduler thread between ticks (warm-up, probes)."""
        fut: Future[T] = Future()
        with self._cond:
            if not self._running_flag:
                raise SchedulerStopped("scheduler is not running")
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    def queued(self) -> int:
        """Chunks accepted and not yet finished, waiting or in the engine; a cancelled
        request's running chunks no longer count (they leave at the next tick)."""
        with self._cond:
            waiting = len(self._high) + len(self._normal)
            taken = sum(1 for j in self._admitting if not j.ticket.cancelled)
            live = sum(1 for r in list(self._running) if not r.ticket.cancelled)
            return waiting + taken + live

    def queued_for(self, ticket: Ticket) -> int:
        with self._cond:
            waiting = sum(1 for h in (self._high, self._normal) for e in h if e[2].ticket is ticket)
            return waiting + sum(1 for r in list(self._running) if r.ticket is ticket)

    def expected_first_audio_s(self) -> float:
        """Recent time from a first chunk's admission to its first piece; 0.5 s before any."""
        return self.stages.first_audio_ema_s or 0.5

    def retry_after_s(self) -> float:
        """A rough wait until the backlog drains: backlog x recent time per chunk / rows."""
        backlog = len(self._high) + len(self._normal) + self._running_count
        per_chunk = (self.stages.chunk_ema_s or 0.5) / max(1, self.max_batch)
        return max(0.5, min(60.0, backlog * per_chunk))

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._running_flag:
                return
            self._running_flag = True
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the tick in flight; queued and running jobs fail with SchedulerStopped."""
        with self._cond:
            self._running_flag = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            leftovers = [e[2] for h in (self._high, self._normal) for e in h]
            leftovers += [r.job for r in self._running]
            self._high, self._normal, self.stages.running = [], [], []
            self._running_count = 0
            calls, self._calls = list(self._calls), deque()
            self._update_depth()
        self.stages.fail(leftovers, SchedulerStopped("server shutting down"))
        for _, fut in calls:
            fut.set_exception(SchedulerStopped("server shutting down"))

    @property
    def running(self) -> bool:
        return self._running_flag

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread is still there to run ticks."""
        return self._thread is not None and self._thread.is_alive()

    @property
    def _running(self) -> list[Running]:
        return self.stages.running

    # --- the scheduler thread --------------------------------------------------------------

    def _loop(self) -> None:
        bind = getattr(self.engine, "bind_thread", None)  # fake engines have none
        if bind is not None:
            bind()
        while self._running_flag:
            try:
                self.step()
            except Exception:  # never let one bad tick kill the only engine thread
                log.exception("scheduler tick failed")

    def step(self, block: bool = True) -> StepDecision | None:
        """One tick: pending calls, else admission + one flow step + vocoding."""
        with self._cond:
            while block and self._running_flag and not self._has_work():
                self._cond.wait(0.5)
            if self._calls:
                self._run_call()
                return None
            if block and not self._running and self._high and self.max_wait_s > 0:
                # Idle: give a burst of arrivals a moment to be admitted together.
                wait_until = self.clock() + self.max_wait_s
                while self._running_flag and len(self._high) < self.max_batch:
                    remaining = wait_until - self.clock()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
            now = self.clock()
            dropped = self._drop_queued() + self._drop_running()
            jobs = self.policy.admissions(
                [e[2] for e in sorted(self._high)],
                [e[2] for e in self._normal],
                self._running,
                now,
                self._high_run_s,
            )
            self._unqueue(jobs)
            self._admitting = jobs
            self._update_depth()
            waiting = len(self._high) + len(self._normal)
        if not jobs and not self._running:
            if not dropped:
                return None
            decision = StepDecision(next(self._ticks), now, (), (), (), 0, dropped, waiting, 0)
            self.history.append(decision)
            return decision
        return self._tick(now, jobs, dropped)

    def _has_work(self) -> bool:
        return bool(self._calls or self._high or self._normal or self._running)

    def _run_call(self) -> None:
        fn, fut = self._calls.popleft()
        self._cond.release()
        try:
            fut.set_result(fn(self.engine))
        except Exception as exc:
            fut.set_exception(exc)
        finally:
            self._cond.acquire()

    def _tick(self, now: float, jobs: list[Job], dropped: int) -> StepDecision:
        errors: list[str] = []
        start = self.clock()
        admitted = self.stages.admit(jobs, start, errors)
        with self._cond:
            self._admitting = []
        t_step = self.clock()
        groups, urgent = self.policy.step_groups(self._running, now, self._high_run_s)
        high_work = any(r.high for g in groups for r in g)
        stepped: tuple[tuple[int, int, int], ...] = ()
        vocoded: tuple[tuple[int, int, int], ...] = ()
        early: list[Running] = []
        stepped_now: set[Running] = set()
        for group in groups:
            if self._newcomer_waiting() and self.policy.step_can_yield(
                group,
                self._running,
                self.clock(),
                self.policy.newcomers_left_s(self._running, self._high_jobs()),
            ):
                continue  # a newcomer arrived during this tick: it goes first
            stepped += self.stages.step(group, errors)
            stepped_now.update(group)
            # A first chunk's first piece goes out as soon as its flow is done, before
            # the later chunks' step of the same tick.
            done = [r for r in group if r.high and r.flight.denoised and r in self._running]
            vocoded += self.stages.vocode(
                [(r, self.limits.first_piece_frames) for r in done], errors
            )
            early += done
        t_vocode = self.clock()
        # While first chunks are in flight or queued (even one that arrived during this
        # tick, or in a tick they yield to later chunks), later pieces are short and only
        # the due ones are decoded.
        # Unless the running set is full with work queued: then a finished chunk's slot is
        # what queued later chunks wait for (and a closed-loop client, its reply), and
        # decoding it only when due, at playback pace, left a saturated CPU server
        # stepping 6 rows of 8.
        crowded = self._crowded()
        contended = self._contended() and not crowded
        pieces = self.policy.vocode_set(
            self._running,
            now,
            contended,
            bool(stepped) and not crowded,
            self.policy.newcomers_left_s(self._running, self._high_jobs()),
        )
        pieces = [p for p in pieces if p[0] not in early]  # their follow-up comes below
        firsts = early + [r for r, _ in pieces if r.high]
        vocoded += self._vocode(pieces, errors)
        # A first piece plays for only ~0.7 s: decode what follows it right after it is out,
        # unless it can wait for the other newcomers' first pieces (see follow_set).
        # Newcomers still without first audio: queued, or admitted and stepping.
        queued = self._high_jobs()
        newcomers = queued + [r.job for r in self._running if r.high]
        follow = self.policy.follow_set(
            [r for r in firsts if r in self._running],
            newcomers,
            self._running,
            self.clock(),
            self.policy.newcomers_left_s(self._running, queued),
        )
        vocoded += self._vocode(follow, errors)
        compute = self.clock() - start
        self._high_run_s = self._high_run_s + compute if high_work else 0.0
        for r in self._running:
            r.held_s = 0.0 if r in stepped_now else r.held_s + compute
        with self._cond:
            self._running_count = len(self._running)
            waiting = len(self._high) + len(self._normal)
        decision = StepDecision(
            tick=next(self._ticks),
            started=now,
            admitted=tuple((j.ticket.request_id, j.index) for j in admitted),
            admitted_priorities=tuple(j.priority for j in admitted),
            stepped=stepped,
            vocoded=vocoded,
            urgent=urgent,
            dropped=dropped,
            waiting_after=waiting,
            running_after=len(self._running),
            compute_s=compute,
            error="; ".join(errors),
            queue_waits=tuple(start - j.submitted for j in admitted),
            stage_s=(t_step - start, t_vocode - t_step, start + compute - t_vocode),
            first_pieces=tuple(
                (r.ticket.request_id, r.first_piece_at) for r in firsts if r.first_piece_at
            ),
        )
        self.history.append(decision)
        if self.trace is not None:
            self.trace(decision)
        m = self.metrics
        if m is not None:
            m.batch_compute_seconds.observe(compute)
            if stepped:
                m.batch_size.observe(len(stepped))
            m.running_chunks.set(len(self._running))
        return decision

    def _vocode(
        self, pieces: list[tuple[Running, int]], errors: list[str]
    ) -> tuple[tuple[int, int, int], ...]:
        """First pieces in one call; on CPU later pieces one call each, and once a
        newcomer has arrived only those whose listener cannot wait for it."""
        if self.limits.mix or not pieces:  # GPU: one batched call
            return self.stages.vocode(pieces, errors)
        firsts = [p for p in pieces if p[0].high]
        done = self.stages.vocode(firsts, errors)
        for r, frames in (p for p in pieces if not p[0].high):
            if r not in self._running:
                continue
            if (
                self._newcomer_waiting()
                and not self._crowded()
                and self.policy.piece_can_yield(r, frames, self._running, self.clock())
            ):
                continue
            done += self.stages.vocode([(r, frames)], errors)
        return done

    def _contended(self) -> bool:
        """First chunks are queued or in flight without their first piece."""
        return self._newcomer_waiting() or any(r.high for r in self._running)

    def _crowded(self) -> bool:
        """The running set is full and work is queued (read without the lock, as
        `_newcomer_waiting`): no queued later chunk can start until a running one
        finishes (first chunks are bounded by their own count, not by the set's size)."""
        queued = bool(self._high or self._normal)
        return queued and len(self._running) >= self.limits.max_running

    def _high_jobs(self) -> list[Job]:
        """The queued first chunks (read without the lock, as `_newcomer_waiting`)."""
        return [e[2] for e in list(self._high)]

    def _newcomer_waiting(self) -> bool:
        """A first chunk is queued (read without the lock: a stale answer costs one tick)."""
        return bool(self._high)

    # --- bookkeeping --------------------------------------------------------------------

    def _drop_queued(self) -> int:
        """Remove cancelled jobs from the queues (under the lock)."""
        dropped = 0
        for name in ("_high", "_normal"):
            heap = getattr(self, name)
            kept = [e for e in heap if not e[2].ticket.cancelled]
            if len(kept) != len(heap):
                dropped += len(heap) - len(kept)
                heapq.heapify(kept)
                setattr(self, name, kept)
        return dropped

    def _drop_running(self) -> int:
        """Cancelled chunks leave the running set: their cost stops at this tick."""
        kept = [r for r in self._running if not r.ticket.cancelled]
        dropped = len(self._running) - len(kept)
        self.stages.running = kept
        self._running_count = len(kept)
        return dropped

    def _unqueue(self, jobs: Sequence[Job]) -> None:
        if not jobs:
            return
        taken = {id(j) for j in jobs}
        for name in ("_high", "_normal"):
            heap = getattr(self, name)
            kept = [e for e in heap if id(e[2]) not in taken]
            if len(kept) != len(heap):
                heapq.heapify(kept)
                setattr(self, name, kept)
        self._running_count = len(self._running) + len(jobs)

    def _update_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels("high").set(len(self._high))
            self.metrics.queue_depth.labels("normal").set(len(self._normal))
