"""One request's chunks in flight between the servicer and the scheduler thread.

The first chunk goes in at HIGH priority; later ones at NORMAL, with the time their listener
would run out of audio as deadline. Results come back from the scheduler thread through
`loop.call_soon_threadsafe`, so the event loop never blocks on the model.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Sequence

from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND
from supertonic_grpc.playback import PlaybackClock
from supertonic_grpc.scheduler import Job, JobResult, Priority, Scheduler, Ticket
from supertonic_grpc.validation import Plan, PlannedChunk


def _estimate_seconds(chunk: PlannedChunk) -> float:
    # Before synthesis only the text is known; a natural speaking rate is a fair guess.
    return max(0.3, len(chunk.text.text) / DEMO_CHARS_PER_SECOND / chunk.utterance.speed)


class ChunkStream:
    """One request's chunks in flight: futures in order, a ticket for cancellation."""

    def __init__(self, scheduler: Scheduler, plan: Plan, started: float, request_id: int) -> None:
        self.scheduler = scheduler
        self.plan = plan
        self.started = started
        self.ticket = Ticket(request_id)
        self.loop = asyncio.get_running_loop()
        self.futures: list[asyncio.Future[JobResult]] = []
        self.estimates = [_estimate_seconds(c) for c in plan.chunks]

    def extend(self, chunks: Sequence[PlannedChunk]) -> None:
        """Append chunks planned after the stream started (StreamingSynthesize's text)."""
        self.plan = dataclasses.replace(self.plan, chunks=(*self.plan.chunks, *chunks))
        self.estimates += [_estimate_seconds(c) for c in chunks]

    def submit_next(self, clock: PlaybackClock | None) -> None:
        """Queue the next chunk; its deadline is when its listener would run out of audio."""
        k = len(self.futures)
        if k >= len(self.plan.chunks):
            return
        fut: asyncio.Future[JobResult] = self.loop.create_future()
        now = time.monotonic()
        if clock is not None and clock.started:
            sent = clock.chunks
            deadline = clock.deadline(now) + sum(self.estimates[sent:k])
        else:
            # Playback has not started: it will, once the first chunk's batch is done.
            first_audio = now + self.scheduler.expected_batch_s()
            deadline = first_audio + sum(self.estimates[:k])
        job = Job(
            utterance=self.plan.chunks[k].utterance,
            priority=Priority.HIGH if k == 0 else Priority.NORMAL,
            deadline=deadline,
            ticket=self.ticket,
            on_done=lambda outcome, f=fut: self.loop.call_soon_threadsafe(_resolve, f, outcome),
        )
        # Only a request's first chunk can be refused: a running stream always continues.
        self.scheduler.submit(job, force=k > 0)
        self.futures.append(fut)


def _resolve(fut: asyncio.Future[JobResult], outcome: JobResult | BaseException) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
