"""ChunkStream: pieces in order, deadlines from per-language rates, no audio kept once sent."""

from __future__ import annotations

import asyncio
import gc
import weakref

import numpy as np
import pytest
from planning import plan

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_grpc.engine import Synthesized
from supertonic_grpc.playback import PlaybackClock
from supertonic_grpc.scheduler import Job, JobResult, Priority
from supertonic_grpc.streams import ChunkStream, estimate_seconds
from supertonic_grpc.validation import Plan


class _Scheduler:
    def __init__(self) -> None:
        self.jobs: list[Job] = []

    def submit(self, job: Job, *, force: bool = False) -> None:
        self.jobs.append(job)

    def expected_first_audio_s(self) -> float:
        return 0.5


def _plan(text: str, language: str = "en") -> Plan:
    req = tts_pb2.SynthesizeRequest(
        text=text,
        language=language,
        chunking=tts_pb2.ChunkingConfig(max_chunk_chars=40, first_chunk_chars=20),
    )
    return plan(req)


def _piece(n: int, piece: int, last: bool) -> JobResult:
    return JobResult(Synthesized(np.ones(n, np.float32), n / 44100), 0.0, 0.1, 1, piece, last)


def test_pieces_come_in_order_and_are_not_kept_once_taken() -> None:
    async def run() -> list[int]:
        sched = _Scheduler()
        stream = ChunkStream(sched, _plan("One two three. Four five six."), 0.0, 1, pieces=True)
        stream.submit_next(None)
        (job,) = sched.jobs
        assert job.pieces and job.priority is Priority.HIGH and job.index == 0
        first, second = _piece(100, 0, False), _piece(50, 1, True)
        watch = weakref.ref(first.synthesized.audio)
        job.on_done(first)
        job.on_done(second)
        del first, second
        sizes = []
        async for result in stream.pieces(0):
            sizes.append(len(result.synthesized.audio))
            del result
        gc.collect()
        assert watch() is None  # the stream let go of the audio it handed out
        assert stream.sent_chunks == 1
        return sizes

    assert asyncio.run(run()) == [100, 50]


def test_a_failure_ends_the_chunk_with_its_exception() -> None:
    async def run() -> None:
        sched = _Scheduler()
        stream = ChunkStream(sched, _plan("Hello there."), 0.0, 1, pieces=True)
        stream.submit_next(None)
        sched.jobs[0].on_done(RuntimeError("engine gone"))
        with pytest.raises(RuntimeError, match="engine gone"):
            async for _ in stream.pieces(0):
                pass

    asyncio.run(run())


def test_deadline_estimates_use_the_language_speaking_rate() -> None:
    en, ko = _plan("가나다라마바사아자차카타파하.", "ko"), _plan("abcdefghijklmn.", "en")
    assert estimate_seconds(en.chunks[0], "ko") > 2 * estimate_seconds(ko.chunks[0], "en")

    async def later_deadline() -> float:
        sched = _Scheduler()
        stream = ChunkStream(sched, _plan("One two three. Four five six."), 0.0, 1, pieces=True)
        clock = PlaybackClock()
        clock.on_chunk_sent(100.0, 2.0)
        stream.submit_next(None)
        stream.submit_next(clock)
        return sched.jobs[1].deadline

    # Chunk 1 is due when the audio sent so far ends, plus what chunk 0 still owes.
    assert asyncio.run(later_deadline()) >= 102.0
