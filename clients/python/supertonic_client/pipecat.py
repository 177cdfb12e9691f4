"""pipecat: a `TTSService` that speaks through a supertonic-grpc server.

    from supertonic_client.pipecat import SupertonicTTSService

    tts = SupertonicTTSService(address="localhost:50051", voice="F1")
    pipeline = Pipeline([transport.input(), stt, llm, tts, transport.output()])

Each turn (one pipecat audio context) is one `StreamingSynthesize` call: the LLM's tokens
are written as they come (`TextAggregationMode.TOKEN` by default; the server finds the
sentences), audio comes back as `TTSAudioRawFrame`s at the pipeline's output sample rate,
with the server's estimated word timestamps, and the turn's end half-closes the call. An
interruption cancels the call, so the server drops the turn's queued work at once.

Needs the `pipecat` extra: ``pip install "supertonic-client[pipecat]"``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import Any

from pipecat.frames.frames import ErrorFrame, Frame, TTSAudioRawFrame, TTSStoppedFrame
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, TTSService

from supertonic_client.audio import Encoding
from supertonic_client.client import AsyncSupertonicClient, AsyncTextStream, SupertonicError

__all__ = ["SupertonicTTSService"]


class SupertonicTTSService(TTSService):
    """Streaming TTS over gRPC: one `StreamingSynthesize` call per turn."""

    def __init__(
        self,
        *,
        address: str = "localhost:50051",
        voice: str = "",
        language: str = "en",
        speed: float = 0.0,
        steps: int = 0,
        seed: int | None = None,
        max_buffer_delay_ms: int = 0,
        early_first_clause: bool = True,
        tls: bool = False,
        text_aggregation_mode: TextAggregationMode = TextAggregationMode.TOKEN,
        **kwargs: Any,
    ) -> None:
        """`voice`, `language`, `speed`, `steps`, `seed`: as in a Synthesize request (0 and
        "" mean the server's defaults). `max_buffer_delay_ms` and `early_first_clause`:
        the server's text buffering. Other keyword arguments go to `TTSService`."""
        super().__init__(
            text_aggregation_mode=text_aggregation_mode,
            push_text_frames=False,  # words come back timed, from the server's estimates
            push_start_frame=True,
            settings=TTSSettings(model="supertonic-2", voice=voice or None, language=None),
            **kwargs,
        )
        self._address = address
        self._tls = tls
        self._options: dict[str, Any] = {
            "voice": voice,
            "language": language,
            "speed": speed,
            "steps": steps,
            "seed": seed,
            "max_buffer_delay_ms": max_buffer_delay_ms,
            "early_first_clause": early_first_clause,
        }
        self._client: AsyncSupertonicClient | None = None
        self._streams: dict[str, AsyncTextStream] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}

    def can_generate_metrics(self) -> bool:
        return True

    async def _ensure_client(self) -> AsyncSupertonicClient:
        if self._client is None:
            self._client = AsyncSupertonicClient(self._address, tls=self._tls)
        return self._client

    async def _open(self, context_id: str) -> AsyncTextStream:
        client = await self._ensure_client()
        stream = client.streaming(
            encoding=Encoding.LINEAR16,
            sample_rate_hz=self.sample_rate,
            word_timings=True,
            **self._options,
        )
        await stream.start()
        self._streams[context_id] = stream
        self._readers[context_id] = self.create_task(
            self._read(context_id, stream), f"supertonic-{context_id}"
        )
        return stream

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Write `text` into the turn's call (opened on its first text); audio arrives via
        the call's reader task, so this yields no audio itself."""
        try:
            stream = self._streams.get(context_id) or await self._open(context_id)
            await stream.send(text)
            if self._text_aggregation_mode is not TextAggregationMode.TOKEN:
                await stream.flush()  # a whole sentence: no need to wait for more text
            await self.start_tts_usage_metrics(text)
        except SupertonicError as exc:
            yield ErrorFrame(error=f"supertonic: {exc}")
            return
        yield None

    async def _read(self, context_id: str, stream: AsyncTextStream) -> None:
        first = True
        try:
            async for chunk in stream:
                if first:
                    await self.stop_ttfb_metrics()
                    first = False
                if chunk.words:
                    await self.add_word_timestamps(
                        [(w.word, w.start_seconds) for w in chunk.words], context_id
                    )
                await self.append_to_audio_context(
                    context_id,
                    TTSAudioRawFrame(
                        audio=chunk.data,
                        sample_rate=chunk.sample_rate_hz,
                        num_channels=1,
                        context_id=context_id,
                    ),
                )
        except SupertonicError as exc:
            if exc.code.name != "CANCELLED":
                await self.push_error(error_msg=f"supertonic: {exc}")
        finally:
            self._streams.pop(context_id, None)
            self._readers.pop(context_id, None)
        if self.audio_context_available(context_id):
            await self.append_to_audio_context(context_id, TTSStoppedFrame(context_id=context_id))
            await self.remove_audio_context(context_id)

    async def flush_audio(self, context_id: str | None = None) -> None:
        """The turn's text is complete: half-close its call, so the rest is spoken."""
        stream = self._streams.get(context_id or self.get_active_audio_context_id() or "")
        if stream is not None:
            with contextlib.suppress(SupertonicError):
                await stream.close()

    async def on_audio_context_interrupted(self, context_id: str) -> None:
        """Barge-in: cancel the turn's call; the server drops its queued work."""
        await self.stop_all_metrics()
        stream = self._streams.pop(context_id, None)
        if stream is not None:
            stream.cancel()
        reader = self._readers.pop(context_id, None)
        if reader is not None:
            await self.cancel_task(reader)
        await super().on_audio_context_interrupted(context_id)

    async def _close_all(self) -> None:
        for context_id in list(self._streams):
            stream = self._streams.pop(context_id)
            stream.cancel()
        for reader in list(self._readers.values()):
            await self.cancel_task(reader)
        self._readers.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def stop(self, frame: Any) -> None:
        await super().stop(frame)
        await self._close_all()

    async def cancel(self, frame: Any) -> None:
        await super().cancel(frame)
        await self._close_all()
