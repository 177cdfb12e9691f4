"""One request's chunks in flight between the servicer and the scheduler thread.

The first chunk goes in at HIGH priority; later ones at NORMAL, with the time their listener
would run out of audio as deadline (the scheduler refines it with the predicted durations
once chunks are admitted). Results come back from the scheduler thread through
`loop.call_soon_threadsafe`, so the event loop never blocks on the model.

A streaming request receives each chunk as pieces, through one small queue per chunk:
a piece is released as soon as it is taken, so a stream never accumulates its audio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence

from supertonic_grpc.playback import PlaybackClock
from supertonic_grpc.scheduler import Job, JobResult, Priority, Scheduler, Ticket
from supertonic_grpc.validation import Plan, PlannedChunk

_OnDone = Callable[[JobResult | BaseException], None]

# Speaking rates (characters per second at speed 1.0) for deadlines before the duration is
# predicted: about 15 in the languages written in Latin letters; Korean syllable blocks are
# each a spoken syllable, far fewer per second.
CHARS_PER_SECOND = 15.0
CHARS_PER_SECOND_BY_LANGUAGE = {"ko": 7.0}


def estimate_seconds(chunk: PlannedChunk, language: str) -> float:
    rate = CHARS_PER_SECOND_BY_LANGUAGE.get(language, CHARS_PER_SECOND)
    return max(0.3, len(chunk.text.text) / rate / chunk.utterance.speed)


class ChunkStream:
    """One request's chunks in flight: results in order, a ticket for cancellation.

    With `pieces`, `pieces(k)` yields chunk k's audio piece by piece; without, `futures[k]`
    resolves to chunk k's whole audio (for replies that need the whole clip anyway).
    """

    def __init__(
        self,
        scheduler: Scheduler,
        plan: Plan,
        started: float,
        request_id: int,
        *,
        pieces: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.plan = plan
        self.started = started
        self.ticket = Ticket(request_id)
        self.loop = asyncio.get_running_loop()
        self.stream_pieces = pieces
        self.futures: list[asyncio.Future[JobResult]] = []
        self._queues: list[asyncio.Queue[JobResult | BaseException]] = []
        self.estimates = [estimate_seconds(c, plan.language) for c in plan.chunks]
        self.sent_chunks = 0  # chunks whose last piece has been taken

    @property
    def submitted(self) -> int:
        return len(self._queues) if self.stream_pieces else len(self.futures)

    def extend(self, chunks: Sequence[PlannedChunk]) -> None:
        """Append chunks planned after the stream started (StreamingSynthesize's text)."""
        self.plan = dataclasses.replace(self.plan, chunks=(*self.plan.chunks, *chunks))
        self.estimates += [estimate_seconds(c, self.plan.language) for c in chunks]

    def submit_next(self, clock: PlaybackClock | None) -> None:
        """Queue the next chunk; its deadline is when its listener would run out of audio."""
        k = self.submitted
        if k >= len(self.plan.chunks):
            return
        now = time.monotonic()
        if clock is not None and clock.started:
            deadline = clock.deadline(now) + sum(self.estimates[self.sent_chunks : k])
        else:
            # Playback has not started: it will, once the first chunk's first piece is out.
            deadline = now + self.scheduler.expected_first_audio_s() + sum(self.estimates[:k])
        if self.stream_pieces:
            queue: asyncio.Queue[JobResult | BaseException] = asyncio.Queue()
            on_done = self._to_queue(queue)
        else:
            fut: asyncio.Future[JobResult] = self.loop.create_future()
            on_done = self._to_future(fut)
        job = Job(
            utterance=self.plan.chunks[k].utterance,
            priority=Priority.HIGH if k == 0 else Priority.NORMAL,
            deadline=deadline,
            ticket=self.ticket,
            on_done=on_done,
            index=k,
            pieces=self.stream_pieces,
        )
        # Only a request's first chunk can be refused: a running stream always continues.
        self.scheduler.submit(job, force=k > 0)
        if self.stream_pieces:
            self._queues.append(queue)
        else:
            self.futures.append(fut)

    async def pieces(self, k: int) -> AsyncIterator[JobResult]:
        """Chunk k's pieces in order; raises the chunk's failure, if any."""
        queue = self._queues[k]
        while True:
            outcome = await queue.get()
            if isinstance(outcome, BaseException):
                raise outcome
            yield outcome
            if outcome.last_piece:
                break
        self.sent_chunks = k + 1

    def _to_queue(self, queue: asyncio.Queue[JobResult | BaseException]) -> _OnDone:
        def on_done(outcome: JobResult | BaseException) -> None:
            self.loop.call_soon_threadsafe(queue.put_nowait, outcome)

        return on_done

    def _to_future(self, fut: asyncio.Future[JobResult]) -> _OnDone:
        def on_done(outcome: JobResult | BaseException) -> None:
            self.loop.call_soon_threadsafe(_resolve, fut, outcome)

        return on_done


def _resolve(fut: asyncio.Future[JobResult], outcome: JobResult | BaseException) -> None:
    if fut.done():
        return
    if isinstance(outcome, BaseException):
        fut.set_exception(outcome)
    else:
        fut.set_result(outcome)
