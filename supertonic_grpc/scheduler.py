"""The scheduler thread: one owner of the engine, fed by many streams through a locked inbox.

Every chunk of every request is a `Job`. Two priorities: HIGH for a request's first chunk
(someone is waiting in silence), NORMAL for the rest, ordered by playback deadline (when
that listener runs out of audio). A NORMAL job whose deadline is near is *urgent* and
goes ahead of everything, so running streams stay gapless while new ones start fast.

Each scheduling step is recorded as a `BatchDecision`, so tests can assert exact batches
with a fake engine. Cancelled requests' jobs are dropped before they reach the model.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from supertonic_grpc.engine import Synthesized, Utterance

log = logging.getLogger(__name__)


class Priority(enum.IntEnum):
    HIGH = 0
    NORMAL = 1


class QueueFull(Exception):
    """The queue is at capacity; `retry_after_s` estimates when it will have room."""

    def __init__(self, queued: int, capacity: int, retry_after_s: float) -> None:
        super().__init__(f"{queued} chunks queued (capacity {capacity})")
        self.retry_after_s = retry_after_s


class SchedulerStopped(Exception):
    """The scheduler is not running (shutting down)."""


class EngineLike(Protocol):
    def synthesize(self, items: Sequence[Utterance]) -> list[Synthesized]: ...


class MetricsLike(Protocol):
    """The subset of `metrics.Metrics` the scheduler feeds (all optional)."""

    queue_depth: Any
    queue_wait_seconds: Any
    compute_seconds: Any
    batch_compute_seconds: Any
    batch_size: Any
    chunks_total: Any
    audio_seconds_total: Any


@dataclass(eq=False)
class Ticket:
    """One request's handle: cancelling it drops its queued jobs."""

    request_id: int
    cancelled: bool = False


@dataclass(frozen=True)
class JobResult:
    synthesized: Synthesized
    queue_s: float
    compute_s: float
    batch_size: int


@dataclass(eq=False)
class Job:
    """One chunk to synthesize. `on_done` gets a JobResult or an exception, on the
    scheduler thread: it must be quick and must not raise."""

    utterance: Utterance
    priority: Priority
    deadline: float
    ticket: Ticket
    on_done: Callable[[JobResult | BaseException], None]
    submitted: float = 0.0
    seq: int = 0


@dataclass(frozen=True)
class BatchDecision:
    """What one scheduling step chose, and why."""

    batch_id: int
    request_ids: tuple[int, ...]  # in batch order
    priorities: tuple[Priority, ...]
    urgent: int  # NORMAL jobs promoted because their listener is about to run out
    dropped: int  # cancelled jobs discarded at this step
    waiting_after: int  # jobs left in the queue
    started: float
    compute_s: float = 0.0
    error: str = ""


@dataclass
class _Queues:
    high: list[tuple[float, int, Job]] = field(default_factory=list)  # by arrival
    normal: list[tuple[float, int, Job]] = field(default_factory=list)  # by deadline

    def __len__(self) -> int:
        return len(self.high) + len(self.normal)


@dataclass
class _BatchBuild:
    """A batch being formed: its jobs, their tokens, and the earliest NORMAL deadline."""

    jobs: list[Job] = field(default_factory=list)
    tokens: int = 0
    floor: float = float("inf")

    def add(self, job: Job) -> None:
        self.jobs.append(job)
        self.tokens += len(job.utterance.token_ids)
        if job.priority is Priority.NORMAL:
            self.floor = min(self.floor, job.deadline)


class Scheduler:
    """Batches jobs from many requests into engine calls on one thread."""

    def __init__(
        self,
        engine: EngineLike,
        *,
        max_batch: int = 8,
        max_wait_s: float = 0.005,
        max_queue: int = 512,
        max_batch_tokens: int = 1_000_000,
        mix_priorities: bool = False,
        metrics: MetricsLike | None = None,
        clock: Callable[[], float] = time.monotonic,
        history: int = 1000,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1")
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.max_batch_tokens = max_batch_tokens
        # On CPU a batch costs about its size, so a first chunk should not wait behind
        # later chunks that have slack; on a GPU extra rows are nearly free.
        self.mix_priorities = mix_priorities
        self.metrics = metrics
        self.clock = clock
        self.history: deque[BatchDecision] = deque(maxlen=history)
        self._q = _Queues()
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._batch_ids = itertools.count()
        self._calls: deque[tuple[Callable[[EngineLike], Any], Future[Any]]] = deque()
        self._thread: threading.Thread | None = None
        self._running = False
        self._batch_ema_s = 0.0
        self._sec_per_token = 0.0  # learned cost model for deadline-feasible batching
        self._audio_rate = 0.0  # audio seconds per compute second, for retry hints

    # --- the event-loop side (any thread) ----------------------------------------------

    def submit(self, job: Job, *, force: bool = False) -> None:
        """Queue a job. Raises QueueFull at capacity (unless `force`: a running stream's
        next chunk is never refused), SchedulerStopped when not running."""
        with self._cond:
            if not self._running:
                raise SchedulerStopped("scheduler is not running")
            if not force and len(self._q) >= self.max_queue:
                raise QueueFull(len(self._q), self.max_queue, self.retry_after_s())
            job.submitted = self.clock()
            job.seq = next(self._seq)
            if job.priority is Priority.HIGH:
                heapq.heappush(self._q.high, (job.submitted, job.seq, job))
            else:
                heapq.heappush(self._q.normal, (job.deadline, job.seq, job))
            self._update_depth()
            self._cond.notify()

    def cancel(self, ticket: Ticket) -> int:
        """Mark a request cancelled and drop its queued jobs; returns how many were dropped."""
        with self._cond:
            ticket.cancelled = True
            dropped = 0
            for name in ("high", "normal"):
                heap = getattr(self._q, name)
                kept = [e for e in heap if e[2].ticket is not ticket]
                if len(kept) != len(heap):
                    dropped += len(heap) - len(kept)
                    heapq.heapify(kept)
                    setattr(self._q, name, kept)
            self._update_depth()
        return dropped

    def call(self, fn: Callable[[EngineLike], Any]) -> Future[Any]:
        """Run `fn(engine)` on the scheduler thread between batches (warm-up, probes)."""
        fut: Future[Any] = Future()
        with self._cond:
            if not self._running:
                raise SchedulerStopped("scheduler is not running")
            self._calls.append((fn, fut))
            self._cond.notify()
        return fut

    def queued(self) -> int:
        with self._cond:
            return len(self._q)

    def queued_for(self, ticket: Ticket) -> int:
        with self._cond:
            return sum(
                1 for h in (self._q.high, self._q.normal) for e in h if e[2].ticket is ticket
            )

    def expected_batch_s(self) -> float:
        """Recent time per batch (a moving average); 0.5 s before the first batch."""
        return self._batch_ema_s or 0.5

    def retry_after_s(self) -> float:
        """A rough wait until the queue drains: queued jobs x recent time per job."""
        per_job = self._batch_ema_s / max(1, self.max_batch) if self._batch_ema_s else 0.5
        return max(0.5, min(60.0, len(self._q) * per_job))

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the batch in flight; queued jobs fail with SchedulerStopped."""
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
        with self._cond:
            leftovers = [e[2] for h in (self._q.high, self._q.normal) for e in h]
            self._q = _Queues()
            calls, self._calls = list(self._calls), deque()
            self._update_depth()
        for job in leftovers:
            _deliver(job, SchedulerStopped("server shutting down"))
        for _, fut in calls:
            fut.set_exception(SchedulerStopped("server shutting down"))

    @property
    def running(self) -> bool:
        return self._running

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread is still there to run batches."""
        return self._thread is not None and self._thread.is_alive()

    # --- the scheduler thread --------------------------------------------------------------

    def _loop(self) -> None:
        while self._running:
            try:
                self.step()
            except Exception:  # never let one bad step kill the only engine thread
                log.exception("scheduler step failed")

    def step(self, block: bool = True) -> BatchDecision | None:
        """One scheduling step: run pending calls, then form and run at most one batch."""
        jobs, decision = self._next_batch(block)
        if decision is None:
            return None
        return self._run_batch(jobs, decision)

    def _next_batch(self, block: bool) -> tuple[list[Job], BatchDecision | None]:
        with self._cond:
            while block and self._running and not self._q and not self._calls:
                self._cond.wait(0.5)
            if self._calls:
                fn, fut = self._calls.popleft()
                self._cond.release()
                try:
                    fut.set_result(fn(self.engine))
                except Exception as exc:
                    fut.set_exception(exc)
                finally:
                    self._cond.acquire()
                return [], None
            if not self._q:
                return [], None
            # Give concurrent requests a moment to join this batch.
            wait_until = self.clock() + self.max_wait_s
            while block and self._running and len(self._q) < self.max_batch:
                remaining = wait_until - self.clock()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return self._select()

    def _pop_live(self, heap: list[tuple[float, int, Job]], dropped: list[Job]) -> Job | None:
        while heap:
            job = heapq.heappop(heap)[2]
            if not job.ticket.cancelled:
                return job
            dropped.append(job)
        return None

    def _take(
        self, heap: list[tuple[float, int, Job]], build: _BatchBuild, dropped: list[Job]
    ) -> bool:
        """Move the heap's best live job into the batch if it fits; False when it does not."""
        job = self._pop_live(heap, dropped)
        if job is None:
            return False
        if build.jobs and not self._fits(job, build):
            key = job.deadline if heap is self._q.normal else job.submitted
            heapq.heappush(heap, (key, job.seq, job))
            return False
        build.add(job)
        return True

    def _fits(self, job: Job, build: _BatchBuild) -> bool:
        cost = len(job.utterance.token_ids)
        if len(build.jobs) >= self.max_batch or build.tokens + cost > self.max_batch_tokens:
            return False
        if not self._sec_per_token:
            return True
        # Deadline-feasible batching: a job with slack must not make the batch finish after
        # a deadline it would otherwise meet (one listener's gap to save another's slack).
        # Past deadlines no longer constrain it: then throughput is what helps most.
        floor = build.floor
        if job.priority is Priority.NORMAL:
            floor = min(floor, job.deadline)
        now = self.clock()
        alone = now + self._sec_per_token * build.tokens
        together = now + self._sec_per_token * (build.tokens + cost)
        return not (alone <= floor < together)

    def _select(self) -> tuple[list[Job], BatchDecision | None]:
        now = self.clock()
        # A later chunk is urgent when waiting one more batch would make its listener run
        # dry: its deadline is closer than about the time one batch takes.
        urgent_window = max(0.25, 1.5 * self._batch_ema_s)
        build = _BatchBuild()
        dropped: list[Job] = []
        urgent = 0
        # 1. Listeners about to run out of audio.
        while self._q.normal and self._q.normal[0][0] - now <= urgent_window:
            if not self._take(self._q.normal, build, dropped):
                break
            urgent += 1
        # 2. First chunks, oldest first.
        while self._q.high and self._take(self._q.high, build, dropped):
            pass
        # 3. Later chunks by deadline, unless that would slow down first chunks.
        if self.mix_priorities or not any(j.priority is Priority.HIGH for j in build.jobs):
            while self._q.normal and self._take(self._q.normal, build, dropped):
                pass
        chosen = build.jobs
        self._update_depth()
        waiting = len(self._q)
        if not chosen:
            return [], None if not dropped else self._record_drop(dropped, now, waiting)
        decision = BatchDecision(
            batch_id=next(self._batch_ids),
            request_ids=tuple(j.ticket.request_id for j in chosen),
            priorities=tuple(j.priority for j in chosen),
            urgent=urgent,
            dropped=len(dropped),
            waiting_after=waiting,
            started=now,
        )
        return chosen, decision

    def _record_drop(self, dropped: list[Job], now: float, waiting: int) -> BatchDecision:
        decision = BatchDecision(next(self._batch_ids), (), (), 0, len(dropped), waiting, now)
        self.history.append(decision)
        return decision

    def _run_batch(self, jobs: list[Job], decision: BatchDecision) -> BatchDecision:
        if not jobs:
            return decision
        start = self.clock()
        try:
            results: list[Synthesized] | None = self.engine.synthesize([j.utterance for j in jobs])
            error: BaseException | None = None
        except Exception as exc:  # confined to this batch: its jobs fail, the server goes on
            log.exception("batch %d of %d failed", decision.batch_id, len(jobs))
            results, error = None, exc
        compute = self.clock() - start
        self._batch_ema_s = (
            compute if not self._batch_ema_s else 0.8 * self._batch_ema_s + 0.2 * compute
        )
        per_token = compute / max(1, sum(len(j.utterance.token_ids) for j in jobs))
        self._sec_per_token = (
            per_token if not self._sec_per_token else 0.8 * self._sec_per_token + 0.2 * per_token
        )
        decision = dataclasses.replace(decision, compute_s=compute, error=str(error or ""))
        self.history.append(decision)
        self._observe(jobs, results, start, compute)
        for i, job in enumerate(jobs):
            if results is None:
                _deliver(job, error or RuntimeError("batch failed"))
            else:
                _deliver(job, JobResult(results[i], start - job.submitted, compute, len(jobs)))
        return decision

    def _observe(
        self, jobs: list[Job], results: list[Synthesized] | None, start: float, compute: float
    ) -> None:
        m = self.metrics
        if m is None:
            return
        m.batch_size.observe(len(jobs))
        m.batch_compute_seconds.observe(compute)
        for job in jobs:
            label = job.priority.name.lower()
            m.queue_wait_seconds.labels(label).observe(max(0.0, start - job.submitted))
            m.compute_seconds.labels(label).observe(compute)
            m.chunks_total.labels(label).inc()
        if results:
            m.audio_seconds_total.inc(sum(r.duration_s for r in results))

    def _update_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.labels("high").set(len(self._q.high))
            self.metrics.queue_depth.labels("normal").set(len(self._q.normal))


def _deliver(job: Job, outcome: JobResult | BaseException) -> None:
    try:
        job.on_done(outcome)
    except Exception:  # a broken callback must not take the scheduler down
        log.exception("job callback failed")
