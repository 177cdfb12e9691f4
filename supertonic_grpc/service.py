"""The TextToSpeech servicer: validate, submit chunks to the scheduler, stream audio back.

A stream keeps at most `lookahead_chunks` of its chunks queued or computing (see
`streams.ChunkStream`); each sent chunk frees a slot for the next, so the next chunk is ready
before the previous one ends, without one long text flooding the queue ahead of new
listeners.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import numpy as np

from supertonic_grpc import audio
from supertonic_grpc._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_grpc.engine import EngineError
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.playback import PlaybackClock
from supertonic_grpc.scheduler import JobResult, QueueFull, Scheduler, SchedulerStopped
from supertonic_grpc.settings import Settings
from supertonic_grpc.streaming_service import streaming_synthesize
from supertonic_grpc.streams import ChunkStream
from supertonic_grpc.text import LANGUAGES, TextChunk, Tokenizer
from supertonic_grpc.text.timings import word_timings
from supertonic_grpc.validation import (
    NATIVE_RATE,
    Plan,
    RequestError,
    plan_request,
    proto_encoding,
)
from supertonic_grpc.voices import VoiceBank

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """What the servicer reports about the model it serves."""

    state: str  # "real" or "demo"
    version: str
    sample_rate: int = NATIVE_RATE


def _cancel_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why the handler was cancelled: the client's deadline, or the client itself."""
    remaining = context.time_remaining()
    # The cancellation can land a hair before the deadline by the server's clock.
    if remaining is not None and remaining <= 0.05:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


def _status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, SchedulerStopped):
        return grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another replica"
    if isinstance(exc, EngineError):
        return grpc.StatusCode.INTERNAL, f"model failure: {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


def _word_timings(c: TextChunk, duration_s: float, offset: float) -> list[tts_pb2.WordTiming]:
    """Estimated word timings of one chunk, in the stream's offsets and audio timeline."""
    return [
        tts_pb2.WordTiming(
            word=w.word,
            text_start=w.start,
            text_end=w.end,
            start_seconds=w.start_s,
            end_seconds=w.end_s,
        )
        for w in word_timings(c.text, duration_s, offset=c.start, start_s=offset)
    ]


class TextToSpeechService(tts_pb2_grpc.TextToSpeechServicer):
    """Thin servicer: protobuf in, scheduler jobs, protobuf out."""

    def __init__(
        self,
        *,
        scheduler: Scheduler,
        voices: VoiceBank,
        tokenizer: Tokenizer,
        settings: Settings,
        metrics: Metrics,
        model: ModelInfo,
    ) -> None:
        self.scheduler = scheduler
        self.voices = voices
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = metrics
        self.model = model
        self.ready = False  # set once warm-up has finished
        self.draining = False
        self.active = 0
        self._ids = itertools.count(1)

    # --- HTTP probes (served beside /metrics) --------------------------------------------

    def status(self) -> dict[str, object]:
        """What a load balancer or an operator wants to know, including demo mode."""
        ready = self.ready and not self.draining
        return {
            "status": "SERVING" if ready else "NOT_SERVING",
            "warming_up": not self.ready,
            "draining": self.draining,
            "model_state": self.model.state,
            "model_version": self.model.version,
            "active_streams": self.active,
            "queued_chunks": self.scheduler.queued(),
        }

    def liveness(self) -> tuple[str, str, bytes]:
        """`/healthz`: 200 while the process and its scheduler thread are alive."""
        alive = self.scheduler.running or self.draining
        return (
            "200 OK" if alive else "503 Service Unavailable",
            "application/json",
            json.dumps(self.status()).encode(),
        )

    def readiness(self) -> tuple[str, str, bytes]:
        """`/readyz`: 200 once warm and until draining starts."""
        body = self.status()
        ok = body["status"] == "SERVING"
        return (
            "200 OK" if ok else "503 Service Unavailable",
            "application/json",
            json.dumps(body).encode(),
        )

    # --- helpers -----------------------------------------------------------------------

    def _admit(self, req: tts_pb2.SynthesizeRequest, streaming: bool) -> Plan:
        self._check_serving()
        plan = plan_request(
            req,
            settings=self.settings,
            voices=self.voices,
            tokenizer=self.tokenizer,
            streaming=streaming,
        )
        self._check_capacity()
        return plan

    def _check_serving(self) -> None:
        if self.draining:
            self.metrics.rejected_total.labels("draining").inc()
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        if not self.ready:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is warming up; retry soon")

    def _check_capacity(self) -> None:
        if self.active >= self.settings.max_streams:
            self.metrics.rejected_total.labels("too_many_streams").inc()
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active} requests in progress (limit {self.settings.max_streams})",
            )

    async def _reject(
        self,
        context: grpc.aio.ServicerContext,
        rpc: str,
        err: RequestError,
        retry_after_s: float | None = None,
    ) -> None:
        self.metrics.requests_total.labels(rpc, err.code.name).inc()
        if retry_after_s is not None:
            context.set_trailing_metadata((("retry-after-ms", str(int(retry_after_s * 1000))),))
        await context.abort(err.code, err.message)

    def _chunk_message(
        self, plan: Plan, k: int, result: JobResult, payload: bytes, offset: float
    ) -> tts_pb2.AudioChunk:
        c = plan.chunks[k].text
        return tts_pb2.AudioChunk(
            index=k,
            audio=payload,
            encoding=proto_encoding(plan.encoding),
            sample_rate_hz=plan.sample_rate,
            text=c.text,
            text_start=c.start,
            text_end=c.end,
            audio_offset_seconds=offset,
            duration_seconds=result.synthesized.duration_s,
            piece=0,
            last_piece=True,
            timings=tts_pb2.ChunkTimings(
                queue_seconds=result.queue_s,
                compute_seconds=result.compute_s,
                batch_size=result.batch_size,
            ),
            words=_word_timings(c, result.synthesized.duration_s, offset)
            if plan.word_timings
            else (),
        )

    def _summary(
        self,
        plan: Plan,
        chunks: int,
        audio_s: float,
        ttfa: float,
        started: float,
        queue_s: float,
        compute_s: float,
    ) -> tts_pb2.SynthesizeSummary:
        return tts_pb2.SynthesizeSummary(
            chunks=chunks,
            audio_seconds=audio_s,
            time_to_first_audio_seconds=ttfa,
            total_seconds=time.monotonic() - started,
            queue_seconds=queue_s,
            compute_seconds=compute_s,
            sample_rate_hz=plan.sample_rate,
            encoding=proto_encoding(plan.encoding),
            voice=plan.voice.name,
            language=plan.language,
            seed=plan.seed,
            model_state=tts_pb2.DEMO if self.model.state == "demo" else tts_pb2.REAL,
        )

    # --- RPCs --------------------------------------------------------------------------

    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        rpc, started = "Synthesize", time.monotonic()
        try:
            plan = self._admit(request, streaming=True)
        except RequestError as err:
            await self._reject(context, rpc, err)
            return
        stream = ChunkStream(self.scheduler, plan, started, next(self._ids))
        try:
            stream.submit_next(None)
        except QueueFull as exc:
            self.metrics.rejected_total.labels("queue_full").inc()
            await self._reject(
                context,
                rpc,
                RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {exc}; retry later"
                ),
                exc.retry_after_s,
            )
            return
        except SchedulerStopped:
            await self._reject(
                context, rpc, RequestError(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
            )
            return
        self.active += 1
        self.metrics.active_streams.inc()
        code = grpc.StatusCode.OK
        try:
            async for message in self._stream(stream, context):
                yield message
        except asyncio.CancelledError:
            code = _cancel_code(context)
            raise
        except RequestError as ab:
            code = ab.code
            await context.abort(ab.code, ab.message)
        finally:
            self.scheduler.cancel(stream.ticket)
            self.active -= 1
            self.metrics.active_streams.dec()
            self.metrics.requests_total.labels(rpc, code.name).inc()

    async def _stream(
        self, stream: ChunkStream, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        plan = stream.plan
        clock = PlaybackClock()
        resampler = (
            audio.StreamResampler(NATIVE_RATE, plan.sample_rate)
            if plan.sample_rate != NATIVE_RATE
            else None
        )
        for _ in range(self.settings.lookahead_chunks - 1):
            stream.submit_next(clock)
        offset = ttfa = queue_s = compute_s = 0.0
        for k in range(len(plan.chunks)):
            try:
                result = await stream.futures[k]
            except Exception as exc:
                raise RequestError(*_status_for(exc)) from exc
            samples = result.synthesized.audio
            if resampler is not None:
                tail = k == len(plan.chunks) - 1
                samples = resampler.process(samples)
                if tail:
                    samples = np.concatenate([samples, resampler.flush()])
            payload = audio.encode(samples, plan.encoding, plan.sample_rate)
            message = self._chunk_message(plan, k, result, payload, offset)
            yield tts_pb2.SynthesizeResponse(chunk=message)
            now = time.monotonic()
            if k == 0:
                ttfa = now - stream.started
                self.metrics.time_to_first_audio_seconds.labels("Synthesize").observe(ttfa)
            self.metrics.observe_playback(clock.on_chunk_sent(now, result.synthesized.duration_s))
            offset += result.synthesized.duration_s
            queue_s += result.queue_s
            compute_s += result.compute_s
            stream.submit_next(clock)
        summary = self._summary(
            plan, len(plan.chunks), offset, ttfa, stream.started, queue_s, compute_s
        )
        yield tts_pb2.SynthesizeResponse(summary=summary)

    async def SynthesizeOnce(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.SynthesizeOnceResponse:
        rpc, started = "SynthesizeOnce", time.monotonic()
        try:
            plan = self._admit(request, streaming=False)
            if self.scheduler.queued() + len(plan.chunks) > self.settings.max_queue:
                self.metrics.rejected_total.labels("queue_full").inc()
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    "server busy: the queue is full; retry later",
                )
        except RequestError as err:
            await self._reject(
                context,
                rpc,
                err,
                self.scheduler.retry_after_s()
                if err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
                else None,
            )
            raise AssertionError("unreachable") from None
        stream = ChunkStream(self.scheduler, plan, started, next(self._ids))
        self.active += 1
        self.metrics.active_streams.inc()
        code = grpc.StatusCode.OK
        try:
            for _ in plan.chunks:
                stream.submit_next(None)
            try:
                results = await asyncio.gather(*stream.futures)
            except Exception as exc:
                code, message = _status_for(exc)
                await context.abort(code, message)
                raise
            return self._once_response(plan, results, started)
        except asyncio.CancelledError:
            code = _cancel_code(context)
            raise
        finally:
            self.scheduler.cancel(stream.ticket)
            self.active -= 1
            self.metrics.active_streams.dec()
            self.metrics.requests_total.labels(rpc, code.name).inc()

    def _once_response(
        self, plan: Plan, results: list[JobResult], started: float
    ) -> tts_pb2.SynthesizeOnceResponse:
        whole = np.concatenate([r.synthesized.audio for r in results])
        if plan.sample_rate != NATIVE_RATE:
            whole = audio.resample(whole, NATIVE_RATE, plan.sample_rate)
        chunks, offset = [], 0.0
        for k, r in enumerate(results):
            chunks.append(self._chunk_message(plan, k, r, b"", offset))
            offset += r.synthesized.duration_s
        latency = time.monotonic() - started
        self.metrics.time_to_first_audio_seconds.labels("SynthesizeOnce").observe(latency)
        summary = self._summary(
            plan,
            len(results),
            offset,
            latency,
            started,
            sum(r.queue_s for r in results),
            sum(r.compute_s for r in results),
        )
        return tts_pb2.SynthesizeOnceResponse(
            audio=audio.encode(whole, plan.encoding, plan.sample_rate),
            encoding=proto_encoding(plan.encoding),
            sample_rate_hz=plan.sample_rate,
            chunks=chunks,
            summary=summary,
        )

    async def StreamingSynthesize(
        self,
        request_iterator: AsyncIterator[tts_pb2.StreamingSynthesizeRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[tts_pb2.StreamingSynthesizeResponse]:
        async for message in streaming_synthesize(self, request_iterator, context):
            yield message

    async def ListVoices(
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        self.metrics.requests_total.labels("ListVoices", "OK").inc()
        return tts_pb2.ListVoicesResponse(
            voices=[
                tts_pb2.Voice(
                    name=v.name,
                    gender=v.gender,
                    languages=list(v.languages or LANGUAGES),
                    native_sample_rate_hz=self.model.sample_rate,
                )
                for v in self.voices
            ],
            model_state=tts_pb2.DEMO if self.model.state == "demo" else tts_pb2.REAL,
            model_version=self.model.version,
            default_voice=self.voices.default,
            languages=list(LANGUAGES),
        )
