"""StreamingSynthesize: text in as an LLM writes it, audio out sentence by sentence.

The first request message carries the config; later ones carry text fragments or flushes.
A `StreamBuffer` turns fragments into segments (a complete sentence, an early first clause,
stalled text, a flush, the end of input); each segment is split into chunks that join the
call's one `ChunkStream`, so they reach the same scheduler with the same first-chunk
priority and playback deadlines as `Synthesize`. Offsets index the concatenation of every
text fragment. Cancelling the call cancels its ticket, which drops its queued work.

One loop per call waits on whichever comes first: the next request message, the next chunk
to send, or the buffer's stall deadline; a call with nothing to do for `stream_idle_s`
ends with DEADLINE_EXCEEDED.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_grpc.replies import AudioWriter
from supertonic_grpc.rpc import Call, cancel_code, failure_status
from supertonic_grpc.scheduler import JobResult, Ticket
from supertonic_grpc.streams import ChunkStream
from supertonic_grpc.text.stream_buffer import Segment, StreamBuffer, Trigger
from supertonic_grpc.validation import (
    RequestError,
    Voicing,
    invalid,
    plan_chunks,
    plan_voicing,
)

if TYPE_CHECKING:
    from supertonic_grpc.service import TextToSpeechService

MAX_BUFFER_DELAY_MS = 10_000
_EOF = object()
# While a call waits on the model, the event loop is woken this often (see _Waker).
WAKE_S = 0.01


class _Waker:
    """Wakes the event loop every `WAKE_S` while streaming calls are open, one task for all.

    Measured: with the loop idle in select() while the scheduler thread computes, gRPC's
    completion events (a client's cancel) are picked up only once something else wakes the
    loop, typically the end of the model step; a barge-in would then wait out the step.
    """

    def __init__(self) -> None:
        self.users = 0
        self.task: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        self.users += 1
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._tick())

    def release(self) -> None:
        self.users -= 1
        if self.users == 0 and self.task is not None:
            self.task.cancel()
            self.task = None

    @staticmethod
    async def _tick() -> None:
        while True:
            await asyncio.sleep(WAKE_S)


_WAKERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Waker] = weakref.WeakKeyDictionary()


def config_request(config: tts_pb2.StreamingSynthesizeConfig) -> tts_pb2.SynthesizeRequest:
    """The config as a SynthesizeRequest without text: the fields mean the same."""
    req = tts_pb2.SynthesizeRequest(
        voice=config.voice,
        language=config.language,
        speed=config.speed,
        steps=config.steps,
        audio_config=config.audio_config,
        chunking=config.chunking,
        enable_word_timings=config.enable_word_timings,
    )
    if config.HasField("seed"):
        req.seed = config.seed
    return req


def buffer_delay_s(config: tts_pb2.StreamingSynthesizeConfig, default_ms: int) -> float:
    ms = config.buffering.max_buffer_delay_ms or default_ms
    if not 0 < ms <= MAX_BUFFER_DELAY_MS:
        raise invalid(
            "config.buffering.max_buffer_delay_ms", f"{ms} is not in 1..{MAX_BUFFER_DELAY_MS}"
        )
    return ms / 1000.0


@dataclass
class _SegmentStart:
    """The first chunk of a released segment, for the sentence-to-audio metric."""

    trigger: Trigger
    completed_at: float
    after_idle: bool  # the listener's audio had run out before the text was complete


class StreamingCall:
    """One StreamingSynthesize call after its config: the loop and its state."""

    def __init__(
        self,
        svc: TextToSpeechService,
        requests: AsyncIterator[tts_pb2.StreamingSynthesizeRequest],
        config: tts_pb2.StreamingSynthesizeConfig,
        voicing: Voicing,
        started: float,
        context: grpc.aio.ServicerContext,
    ) -> None:
        self.svc = svc
        self.context = context
        self.settings = svc.settings
        self.requests = requests
        self.voicing = voicing
        self.buffer = StreamBuffer(
            max_delay_s=buffer_delay_s(config, self.settings.stream_buffer_delay_ms),
            early_first_clause=config.buffering.early_first_clause,
            max_pending_chars=voicing.max_chunk_chars,
        )
        self.stream = ChunkStream(svc.scheduler, voicing.plan(()), started, next(svc._ids))
        self.writer = AudioWriter(
            self.stream.plan, svc.metrics, "StreamingSynthesize", started, svc.model.state
        )
        self.clock = self.writer.clock
        self.segment_starts: dict[int, _SegmentStart] = {}
        self.segment_ends: set[int] = set()  # last chunk of each segment
        self.sent = 0
        self.messages = 0
        self.max_messages = 2 * self.settings.max_text_chars + 64
        self.input_closed = False
        self.finished = False  # the summary has been produced
        self.barged_in = False
        self.last_activity = time.monotonic()
        self.gone = asyncio.Event()  # the call ended from the client's side

    def hang_up(self) -> None:
        """The RPC has ended (client cancel, deadline, or normal end): drop queued work."""
        self.svc.scheduler.cancel(self.ticket)
        if not self.finished:
            self.gone.set()
            self._count_barge_in()

    def _count_barge_in(self) -> None:
        # Only the client's own cancel is a barge-in, not its deadline running out.
        if not self.barged_in and cancel_code(self.context) is grpc.StatusCode.CANCELLED:
            self.barged_in = True
            self.svc.metrics.barge_in_total.inc()

    @property
    def ticket(self) -> Ticket:
        return self.stream.ticket

    def _ready(self) -> bool:
        """Whether the next chunk to send has come back from the scheduler."""
        return self.sent < len(self.stream.futures) and self.stream.futures[self.sent].done()

    # --- input ---------------------------------------------------------------------------

    def _on_request(self, req: tts_pb2.StreamingSynthesizeRequest, now: float) -> None:
        self.messages += 1
        if self.messages > self.max_messages:
            # Each useful message adds text (or flushes it), so this only stops a client that
            # keeps a call and the buffer's scans busy with empty messages.
            raise invalid("request", f"more than {self.max_messages} messages in one call")
        kind = req.WhichOneof("request")
        if kind == "config":
            raise invalid("config", "only the first message may carry the config")
        if kind == "text":
            total = self.buffer.total_chars + len(req.text)
            if total > self.settings.max_text_chars:
                raise invalid(
                    "text", f"{total} characters in total, at most {self.settings.max_text_chars}"
                )
            if req.text:
                self._plan(self.buffer.push(req.text, now))
        elif kind == "flush":
            self._plan(self.buffer.flush(now))
        else:
            raise invalid("request", "a message must carry config, text or flush")

    def _plan(self, segments: list[Segment]) -> None:
        for seg in segments:
            chunks = plan_chunks(
                seg.text,
                self.voicing,
                settings=self.settings,
                tokenizer=self.svc.tokenizer,
                offset=seg.start,
                first_index=len(self.stream.plan.chunks),
            )
            if not chunks:
                continue  # only symbols or emoji: nothing to say
            first = len(self.stream.plan.chunks)
            idle = self.sent == len(self.stream.plan.chunks)  # nothing left to play
            if idle:
                self.clock.idle_until(seg.completed_at)
            self.segment_starts[first] = _SegmentStart(seg.trigger, seg.completed_at, idle)
            self.stream.extend(chunks)
            self.segment_ends.add(len(self.stream.plan.chunks) - 1)
        self._submit()

    def _submit(self) -> None:
        ahead = self.settings.lookahead_chunks
        while (
            len(self.stream.futures) < len(self.stream.plan.chunks)
            and len(self.stream.futures) - self.sent < ahead
        ):
            self.stream.submit_next(self.clock if self.clock.started else None)

    # --- output --------------------------------------------------------------------------

    def _messages(
        self, k: int, result: JobResult
    ) -> tuple[list[tts_pb2.StreamingSynthesizeResponse], list[float]]:
        """Chunk `k`'s audio, split as Synthesize splits it (no message over 1 MiB), and
        the seconds of audio each message carries."""
        # A sentence ends: its resampled tail need not wait for the next one.
        parts = self.writer.messages(self.stream.plan, k, result, 0, True, k in self.segment_ends)
        messages = [tts_pb2.StreamingSynthesizeResponse(chunk=m) for m, _ in parts]
        return messages, [sec for _, sec in parts]

    def _after_send(self, k: int, result: JobResult, seconds: list[float]) -> None:
        now = time.monotonic()
        start = self.segment_starts.pop(k, None)
        if start is not None:
            self.svc.metrics.sentence_to_audio_seconds.labels(start.trigger.value).observe(
                now - start.completed_at
            )
        for sec in seconds:  # waiting for text is no underrun
            self.writer.sent(sec, result.ready, now, underrun=start is None or not start.after_idle)
        self.writer.finished(result)
        self.sent += 1
        self.last_activity = now
        self._submit()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> AsyncIterator[tts_pb2.StreamingSynthesizeResponse]:
        read: asyncio.Future[object] | None = None
        gone = asyncio.ensure_future(self.gone.wait())
        try:
            while True:
                if read is None and not self.input_closed:
                    read = asyncio.ensure_future(anext(self.requests, _EOF))
                waiting: set[asyncio.Future[Any]] = {gone}
                if read is not None:
                    waiting.add(read)
                if self.sent < len(self.stream.futures):
                    waiting.add(self.stream.futures[self.sent])
                elif self.input_closed:
                    break  # every chunk sent and no more text will come
                now = time.monotonic()
                timeout = self.last_activity + self.settings.stream_idle_s - now
                stall = self.buffer.deadline()
                if stall is not None:
                    timeout = min(timeout, stall - now)
                done, _ = await asyncio.wait(
                    waiting, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
                )
                now = time.monotonic()
                if gone in done:
                    raise asyncio.CancelledError("the client went away")
                if read is not None and read in done:
                    msg, read = read.result(), None
                    self.last_activity = now
                    if msg is _EOF:
                        self.input_closed = True
                        self._plan(self.buffer.flush(now, Trigger.END))
                    else:
                        self._on_request(msg, now)  # type: ignore[arg-type]
                while self._ready():
                    k = self.sent
                    try:
                        result = self.stream.futures[k].result()
                    except Exception as exc:
                        raise RequestError(*failure_status(exc)) from exc
                    messages, seconds = self._messages(k, result)
                    # Accounted just before the write, so a client that has read the chunk
                    # sees it in the metrics; the next chunk is queued as early as possible.
                    self._after_send(k, result, seconds)
                    for message in messages:
                        yield message
                self._plan(self.buffer.poll(now))
                if (
                    not done
                    and self.sent == len(self.stream.futures)
                    and now - self.last_activity >= self.settings.stream_idle_s
                ):
                    raise RequestError(
                        grpc.StatusCode.DEADLINE_EXCEEDED,
                        f"stream idle: no request and no audio for "
                        f"{self.settings.stream_idle_s:g} s; half-close the stream to finish",
                    )
        except (asyncio.CancelledError, GeneratorExit):
            self._count_barge_in()  # the client left mid-call
            raise
        except BaseException:
            self.finished = True  # ended by the server (a bad message, idle): no barge-in
            raise
        finally:
            # Drop the queued work first, before any await can delay it.
            self.svc.scheduler.cancel(self.ticket)
            for task in (read, gone):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        try:
            yield tts_pb2.StreamingSynthesizeResponse(summary=self._summary())
        except GeneratorExit:
            # The write failed: the client left. (A cancel can first look like a
            # half-close, since the request stream ends too.)
            self._count_barge_in()
            raise
        self.finished = True

    def _summary(self) -> tts_pb2.SynthesizeSummary:
        return self.writer.summary(self.stream.plan, self.sent)


async def open_call(
    svc: TextToSpeechService,
    requests: AsyncIterator[tts_pb2.StreamingSynthesizeRequest],
    started: float,
    context: grpc.aio.ServicerContext,
) -> StreamingCall:
    """Read and validate the config message. Raises RequestError."""
    try:
        first = await asyncio.wait_for(anext(requests, _EOF), svc.settings.stream_idle_s)
    except TimeoutError:
        raise RequestError(
            grpc.StatusCode.DEADLINE_EXCEEDED,
            f"stream idle: no config within {svc.settings.stream_idle_s:g} s",
        ) from None
    if (
        not isinstance(first, tts_pb2.StreamingSynthesizeRequest)  # the end of the input
        or first.WhichOneof("request") != "config"
    ):
        raise invalid("config", "the first message must carry the config")
    config = first.config
    voicing = plan_voicing(
        config_request(config),
        settings=svc.settings,
        voices=svc.voices,
        native_rate=svc.model.sample_rate,
        streaming=True,
        prefix="config.",
    )
    return StreamingCall(svc, requests, config, voicing, started, context)


async def streaming_synthesize(
    svc: TextToSpeechService,
    requests: AsyncIterator[tts_pb2.StreamingSynthesizeRequest],
    call: Call,
) -> AsyncIterator[tts_pb2.StreamingSynthesizeResponse]:
    """The RPC's handler under `rpc.Rpcs` (which owns its code, count and slot)."""
    session = await open_call(svc, requests, call.started, call.context)
    # gRPC does not always cancel a bidi handler's task when the client cancels (it may
    # only notice at the next write), so the call's end is watched directly: a barge-in
    # drops the queued work at once and wakes the loop.
    # grpc-stubs declare the callback as a class, which no function can be.
    call.context.add_done_callback(lambda _: session.hang_up())  # type: ignore[arg-type]
    waker = _WAKERS.setdefault(asyncio.get_running_loop(), _Waker())
    waker.acquire()
    try:
        async for message in session.run():
            yield message
    finally:
        waker.release()
