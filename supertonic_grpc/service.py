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
from typing import Any

import grpc
import numpy as np

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_grpc import audio
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.playback import PlaybackClock
from supertonic_grpc.rpc import Call, Limits, Rpcs, failure_status
from supertonic_grpc.scheduler import JobResult, Scheduler
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

# No stream message is larger than 1 MiB: every gRPC client's default receive limit is
# 4 MiB, and small messages keep a slow network's latency per message low. The audio gets
# all of it but a margin for the message's other fields (text, offsets, word timings).
MAX_MESSAGE_BYTES = 1 << 20
MAX_MESSAGE_AUDIO_BYTES = MAX_MESSAGE_BYTES - (64 << 10)


@dataclass(frozen=True)
class ModelInfo:
    """What the servicer reports about the model it serves."""

    state: str  # "real" or "demo"
    version: str
    sample_rate: int = NATIVE_RATE


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
            streaming=streaming,
        )

    def _audio_messages(
        self,
        plan: Plan,
        k: int,
        result: JobResult,
        samples: np.ndarray,
        offset: float,
        piece: int,
        last_piece: bool,
    ) -> list[tuple[tts_pb2.AudioChunk, float]]:
        """One piece of chunk `k`'s audio as messages of at most `MAX_MESSAGE_AUDIO_BYTES`
        of audio each, numbered from `piece`, with each message's duration in seconds."""
        per_message = MAX_MESSAGE_AUDIO_BYTES // audio.bytes_per_sample(plan.encoding)
        parts = max(1, -(-len(samples) // per_message))
        out = []
        for i in range(parts):
            part = samples[i * per_message : (i + 1) * per_message]
            seconds = len(part) / plan.sample_rate
            payload = audio.encode(part, plan.encoding, plan.sample_rate)
            last = last_piece and i == parts - 1
            message = self._chunk_message(
                plan, k, result, payload, offset, seconds, piece + i, last
            )
            out.append((message, seconds))
            offset += seconds
        return out

    def _chunk_message(
        self,
        plan: Plan,
        k: int,
        result: JobResult,
        payload: bytes,
        offset: float,
        seconds: float | None = None,
        piece: int = 0,
        last_piece: bool = True,
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
            duration_seconds=result.synthesized.duration_s if seconds is None else seconds,
            piece=piece,
            last_piece=last_piece,
            timings=tts_pb2.ChunkTimings(
                queue_seconds=result.queue_s,
                compute_seconds=result.compute_s,
                batch_size=result.batch_size,
            ),
            words=self._words(plan, k, result, offset) if plan.word_timings and piece == 0 else (),
        )

    def _words(self, plan: Plan, k: int, result: JobResult, offset: float) -> list[Any]:
        """A chunk's words, on its first piece: over the chunk's whole speech, which starts
        after the pause that joins it to the previous chunk."""
        lead = plan.chunks[k].utterance.lead_silence_s
        speech = result.chunk_seconds or result.synthesized.duration_s - lead
        return _word_timings(plan.chunks[k].text, speech, offset + lead)

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
        """Each chunk's pieces as they are vocoded, split so no message carries more than
        `MAX_MESSAGE_AUDIO_BYTES`. Durations and offsets are per message, from the samples
        actually sent, so concatenating every message's audio gives the whole clip."""
        plan = stream.plan
        clock = PlaybackClock()
        resampler = (
            audio.StreamResampler(NATIVE_RATE, plan.sample_rate)
            if plan.sample_rate != NATIVE_RATE
            else None
        )
        for _ in range(self.settings.lookahead_chunks - 1):
            stream.submit_next(clock)
        offset = queue_s = compute_s = 0.0
        ttfa: float | None = None
        last_chunk = len(plan.chunks) - 1
        for k in range(len(plan.chunks)):
            piece = 0
            try:
                async for result in stream.pieces(k):
                    samples = result.synthesized.audio
                    if resampler is not None:
                        samples = resampler.process(samples)
                        if k == last_chunk and result.last_piece:
                            samples = np.concatenate([samples, resampler.flush()])
                    for message, seconds in self._audio_messages(
                        plan, k, result, samples, offset, piece, result.last_piece
                    ):
                        yield tts_pb2.SynthesizeResponse(chunk=message)
                        if ttfa is None:
                            ttfa = time.monotonic() - stream.started
                            self.metrics.time_to_first_audio_seconds.labels("Synthesize").observe(
                                ttfa
                            )
                        # Written now: a slow reader is back-pressure, not a gap.
                        gap = clock.on_chunk_written(result.ready, time.monotonic(), seconds)
                        self.metrics.observe_playback(gap)
                        offset += seconds
                        piece += 1
                    if result.last_piece:
                        queue_s += result.queue_s
                        compute_s += result.compute_s
            except RequestError:
                raise
            except Exception as exc:
                raise RequestError(*failure_status(exc)) from exc
            stream.submit_next(clock)
        summary = self._summary(
            plan, len(plan.chunks), offset, ttfa or 0.0, stream.started, queue_s, compute_s
        )
        yield tts_pb2.SynthesizeResponse(summary=summary)

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
