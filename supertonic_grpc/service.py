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

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_grpc import audio, replies
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.rpc import Call, Limits, Rpcs, failure_status
from supertonic_grpc.scheduler import JobResult, Scheduler
from supertonic_grpc.settings import Settings
from supertonic_grpc.streaming_service import streaming_synthesize
from supertonic_grpc.streams import ChunkStream
from supertonic_grpc.text import LANGUAGES, Tokenizer
from supertonic_grpc.validation import (
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
    sample_rate: int  # the model's own, from its config


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
        self.fatal: str | None = None  # why the server can no longer serve
        self.rpcs = Rpcs(
            metrics,
            Limits(
                max_streams=settings.max_streams,
                max_streams_per_peer=settings.max_streams_per_peer,
                write_timeout_s=settings.write_timeout_s,
                max_reply_bytes=settings.max_reply_bytes,
            ),
            gate=self._gate,
        )
        self._ids = itertools.count(1)

    @property
    def active(self) -> int:
        """Slot-taking requests (streams and unary syntheses) in progress."""
        return self.rpcs.active

    # --- HTTP probes (served beside /metrics) --------------------------------------------

    def status(self) -> dict[str, object]:
        """What a load balancer or an operator wants to know, including demo mode."""
        ready = self.ready and not self.draining
        return {
            "status": "SERVING" if ready else "NOT_SERVING",
            "warming_up": not self.ready,
            "draining": self.draining,
            "fatal": self.fatal,
            "model_state": self.model.state,
            "model_version": self.model.version,
            "active_requests": self.active,
            "queued_chunks": self.scheduler.queued(),
        }

    def liveness(self) -> tuple[str, str, bytes]:
        """`/healthz`: 200 while the process and its scheduler thread are alive and nothing
        fatal (a failed warm-up, a broken device) happened."""
        alive = self.fatal is None and (self.scheduler.alive or self.draining)
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

    def _gate(self) -> None:
        """Refuse work while warming up or draining (run by `Rpcs` before taking a slot)."""
        if self.draining:
            self.metrics.rejected_total.labels("draining").inc()
            raise RequestError(
                grpc.StatusCode.UNAVAILABLE, "server is draining for shutdown; retry on another one"
            )
        if self.fatal is not None:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "server failed; retry on another one")
        if not self.ready:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "server is warming up; retry soon")

    def _plan(self, req: tts_pb2.SynthesizeRequest, streaming: bool) -> Plan:
        return plan_request(
            req,
            settings=self.settings,
            voices=self.voices,
            tokenizer=self.tokenizer,
            native_rate=self.model.sample_rate,
            streaming=streaming,
        )

    # --- RPCs --------------------------------------------------------------------------

    async def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> None:
        await self.rpcs.stream("Synthesize", request, context, self._synthesize)

    async def _synthesize(
        self, request: tts_pb2.SynthesizeRequest, call: Call
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        plan = self._plan(request, streaming=True)
        stream = ChunkStream(self.scheduler, plan, call.started, next(self._ids), pieces=True)
        try:
            stream.submit_next(None)
            async for message in self._stream(stream, call.context):
                yield message
        finally:
            self.scheduler.cancel(stream.ticket)

    async def _stream(
        self, stream: ChunkStream, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[tts_pb2.SynthesizeResponse]:
        """Each chunk's pieces as they are vocoded (see `replies.AudioWriter`)."""
        plan = stream.plan
        writer = replies.AudioWriter(
            plan, self.metrics, "Synthesize", stream.started, self.model.state
        )
        for _ in range(self.settings.lookahead_chunks - 1):
            stream.submit_next(writer.clock)
        last_chunk = len(plan.chunks) - 1
        for k in range(len(plan.chunks)):
            piece = 0
            try:
                async for result in stream.pieces(k):
                    flush = k == last_chunk and result.last_piece
                    for message, seconds in writer.messages(
                        plan, k, result, piece, result.last_piece, flush
                    ):
                        yield tts_pb2.SynthesizeResponse(chunk=message)
                        writer.sent(seconds, result.ready)
                        piece += 1
                    if result.last_piece:
                        writer.finished(result)
            except RequestError:
                raise
            except Exception as exc:
                raise RequestError(*failure_status(exc)) from exc
            stream.submit_next(writer.clock)
        yield tts_pb2.SynthesizeResponse(summary=writer.summary(plan, len(plan.chunks)))

    async def SynthesizeOnce(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.SynthesizeOnceResponse:
        return await self.rpcs.unary("SynthesizeOnce", request, context, self._synthesize_once)

    async def _synthesize_once(
        self, request: tts_pb2.SynthesizeRequest, call: Call
    ) -> tts_pb2.SynthesizeOnceResponse:
        plan = self._plan(request, streaming=False)
        stream = ChunkStream(self.scheduler, plan, call.started, next(self._ids))
        limit = self.settings.max_reply_bytes
        per_second = plan.sample_rate * audio.bytes_per_sample(plan.encoding)
        if sum(stream.estimates) * per_second > limit:
            raise RequestError(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"text: about {sum(stream.estimates):.0f} s of audio would not fit one "
                f"{limit}-byte reply; use Synthesize to stream it",
            )
        try:
            # The same lookahead as a stream: a long text never floods the queue.
            for _ in range(self.settings.lookahead_chunks):
                stream.submit_next(None)
            results, seconds = [], 0.0
            for k in range(len(plan.chunks)):
                try:
                    result = await stream.futures[k]
                except Exception as exc:
                    raise RequestError(*failure_status(exc)) from exc
                results.append(result)
                seconds += result.synthesized.duration_s
                if seconds * per_second > limit:
                    raise RequestError(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"the audio outgrew one {limit}-byte reply; use Synthesize to stream it",
                    )
                stream.submit_next(None)
            # Resampling and encoding a whole clip takes up to a second: off the event loop.
            return await asyncio.to_thread(self._once_response, plan, results, call.started)
        finally:
            self.scheduler.cancel(stream.ticket)

    def _once_response(
        self, plan: Plan, results: list[JobResult], started: float
    ) -> tts_pb2.SynthesizeOnceResponse:
        whole = np.concatenate([r.synthesized.audio for r in results])
        if plan.sample_rate != plan.native_rate:
            whole = audio.resample(whole, plan.native_rate, plan.sample_rate)
        chunks, offset = [], 0.0
        for k, r in enumerate(results):
            chunks.append(replies.chunk_message(plan, k, r, b"", offset))
            offset += r.synthesized.duration_s
        latency = time.monotonic() - started
        self.metrics.time_to_first_audio_seconds.labels("SynthesizeOnce").observe(latency)
        summary = replies.summary(
            plan,
            self.model.state,
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
    ) -> None:
        await self.rpcs.stream(
            "StreamingSynthesize",
            request_iterator,
            context,
            lambda requests, call: streaming_synthesize(self, requests, call),
        )

    async def ListVoices(
        self, request: tts_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> tts_pb2.ListVoicesResponse:
        return await self.rpcs.unary("ListVoices", request, context, self._list_voices, slot=False)

    async def _list_voices(
        self, request: tts_pb2.ListVoicesRequest, call: Call
    ) -> tts_pb2.ListVoicesResponse:
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
            default_voice=self.voices.get(self.settings.default_voice).name,
            languages=list(LANGUAGES),
        )
