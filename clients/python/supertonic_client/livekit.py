"""LiveKit Agents: a streaming `tts.TTS` with aligned transcripts, over supertonic-grpc.

    from livekit.agents import AgentSession
    from supertonic_client.livekit import TTS

    session = AgentSession(stt=..., llm=..., tts=TTS(address="localhost:50051", voice="F1"))

Each `SynthesizeStream` is one `StreamingSynthesize` call: the agent's tokens go in as they
come (the server finds the sentences; a flush speaks what is buffered), audio comes back as
16-bit PCM at `sample_rate`, and every word's estimated start and end come with it as
`TimedString`s for LiveKit's synchronized transcripts. Closing the stream (an interruption)
cancels the call, so the server drops its queued work at once.

Needs the `livekit` extra: ``pip install "supertonic-client[livekit]"``.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from livekit.agents import (
    DEFAULT_API_CONNECT_OPTIONS,
    APIConnectionError,
    APIConnectOptions,
    APIStatusError,
    APITimeoutError,
    tts,
)
from livekit.agents.types import TimedString

from supertonic_client.audio import Encoding
from supertonic_client.client import AsyncSupertonicClient, AsyncTextStream, SupertonicError

__all__ = ["TTS", "SynthesizeStream"]

# gRPC codes a retry may fix (before any audio was pushed, LiveKit retries these).
_RETRYABLE = {"UNAVAILABLE", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"}


def _api_error(exc: SupertonicError) -> Exception:
    if exc.code.name == "DEADLINE_EXCEEDED":
        return APITimeoutError(exc.message)
    if exc.code.name == "UNAVAILABLE":
        return APIConnectionError(exc.message)
    return APIStatusError(
        f"supertonic: {exc}",
        status_code=-1,
        body=exc.code.name,
        retryable=exc.code.name in _RETRYABLE,
    )


class TTS(tts.TTS):
    """Supertonic-2 over gRPC: streaming, with aligned (estimated) word timings."""

    def __init__(
        self,
        *,
        address: str = "localhost:50051",
        voice: str = "",
        language: str = "en",
        speed: float = 0.0,
        steps: int = 0,
        sample_rate: int = 24000,
        seed: int | None = None,
        max_buffer_delay_ms: int = 0,
        early_first_clause: bool = True,
        tls: bool = False,
    ) -> None:
        """`voice`, `language`, `speed`, `steps`, `seed`: as in a Synthesize request (0 and
        "" mean the server's defaults); `sample_rate` 8000..48000 Hz, resampled on the
        server; `max_buffer_delay_ms`, `early_first_clause`: the server's text buffering."""
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self._address = address
        self._tls = tls
        self._options: dict[str, Any] = {
            "voice": voice,
            "language": language,
            "speed": speed,
            "steps": steps,
            "seed": seed,
            "sample_rate_hz": sample_rate,
            "max_buffer_delay_ms": max_buffer_delay_ms,
            "early_first_clause": early_first_clause,
        }
        self._client: AsyncSupertonicClient | None = None
        self._streams: set[SynthesizeStream] = set()

    @property
    def model(self) -> str:
        return "supertonic-2"

    @property
    def provider(self) -> str:
        return "supertonic"

    def client(self) -> AsyncSupertonicClient:
        """The gRPC client, made on first use inside the running event loop."""
        if self._client is None:
            self._client = AsyncSupertonicClient(self._address, tls=self._tls)
        return self._client

    def open_call(self, timeout: float | None) -> AsyncTextStream:
        return self.client().streaming(
            encoding=Encoding.LINEAR16, word_timings=True, timeout=timeout, **self._options
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._synthesize_with_stream(text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> SynthesizeStream:
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    async def aclose(self) -> None:
        for stream in list(self._streams):
            await stream.aclose()
        self._streams.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None


class SynthesizeStream(tts.SynthesizeStream):
    """One `StreamingSynthesize` call: tokens in, PCM and timed words out."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._supertonic = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = str(uuid.uuid4())
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=self._supertonic.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        output_emitter.start_segment(segment_id=request_id)
        call = self._supertonic.open_call(timeout=None)

        async def write() -> None:
            await call.start()
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    await call.flush()
                else:
                    self._mark_started()
                    await call.send(data)
            await call.close()

        async def read() -> None:
            async for chunk in call:
                output_emitter.push(chunk.data)
                if chunk.words:
                    output_emitter.push_timed_transcript(
                        [
                            TimedString(
                                f"{w.word} ", start_time=w.start_seconds, end_time=w.end_seconds
                            )
                            for w in chunk.words
                        ]
                    )
            output_emitter.end_input()

        writer = asyncio.create_task(write())
        try:
            await asyncio.gather(writer, read())
        except SupertonicError as exc:
            raise _api_error(exc) from exc
        finally:
            writer.cancel()
            call.cancel()  # a no-op once the call has ended; barge-in otherwise
            self._supertonic._streams.discard(self)
