"""A small, typed Python client for the supertonic.v1 TextToSpeech service.

    with SupertonicClient("localhost:50051") as tts:
        stream = tts.stream("Hello there. How are you?", voice="F1")
        for chunk in stream:              # Chunk: float32 audio + metadata, as it arrives
            play(chunk.audio, chunk.sample_rate_hz)
        print(stream.summary)             # Summary, set once the stream has ended
        clip = tts.synthesize("One clip at once.")          # Clip: the whole audio
        print([v.name for v in tts.voices().voices])

    with SupertonicClient("localhost:50051") as tts:     # text in as an LLM writes it
        with tts.streaming(voice="F1", word_timings=True) as speech:
            for token in llm_tokens:
                speech.send(token)                   # sentences are spoken as they complete
            speech.close()                           # no more text: speak the rest, finish
            for chunk in speech:
                play(chunk.audio); print(chunk.words)

`AsyncSupertonicClient` is the same over `grpc.aio` (`async with`, `async for`, `await`);
its `streaming()` session is what an agent uses: write tokens while reading audio.
Every gRPC failure surfaces as `SupertonicError(code, message)`; the server's message names
the request field at fault. `stream()` returns a `Stream` (async: `AsyncStream`) whose
`summary` is set after the last chunk; the client's `last_summary` holds the latest summary
of any call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self, Unpack

import grpc

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_client.audio import Encoding
from supertonic_client.errors import SupertonicError, error_from
from supertonic_client.options import RequestOptions, StreamingOptions, build_config, build_request
from supertonic_client.replies import (
    Chunk,
    ChunkTimings,
    Clip,
    Summary,
    VoiceInfo,
    VoiceList,
    WordTiming,
    clip_from,
    voice_list_from,
)
from supertonic_client.streams import AsyncStream, AsyncTextStream, Stream, TextStream

__all__ = [
    "AsyncStream",
    "AsyncSupertonicClient",
    "AsyncTextStream",
    "Chunk",
    "ChunkTimings",
    "Clip",
    "Encoding",
    "RequestOptions",
    "Stream",
    "StreamingOptions",
    "Summary",
    "SupertonicClient",
    "SupertonicError",
    "TextStream",
    "VoiceInfo",
    "VoiceList",
    "WordTiming",
]

# Replies as large as a server may be configured to send (its --max-reply-bytes ceiling).
MAX_RECEIVE_BYTES = 64 * 1024 * 1024


def _channel_credentials(
    tls: bool,
    root_certificates: bytes | None,
    certificate_chain: bytes | None = None,
    private_key: bytes | None = None,
) -> grpc.ChannelCredentials | None:
    if not tls and root_certificates is None and certificate_chain is None:
        return None
    return grpc.ssl_channel_credentials(
        root_certificates=root_certificates,
        private_key=private_key,
        certificate_chain=certificate_chain,
    )


def _channel_options(service_config: str | Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    """Channel options for a gRPC service config (JSON text or a dict), e.g. the shipped
    deploy/grpc/service_config.json: round_robin over every address the target resolves to
    and retries of UNAVAILABLE at stream start (a replica that is draining)."""
    if service_config is None:
        return []
    text = service_config if isinstance(service_config, str) else json.dumps(service_config)
    json.loads(text)  # fail here, not inside the channel, on malformed JSON
    return [("grpc.service_config", text), ("grpc.enable_retries", 1)]


class _Base:
    """Shared by both clients: address, default deadline, credentials, last summary."""

    _aio = False

    def __init__(
        self,
        address: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        certificate_chain: bytes | None = None,
        private_key: bytes | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        service_config: str | Mapping[str, Any] | None = None,
    ) -> None:
        """`root_certificates` (PEM) verifies the server; `certificate_chain` and
        `private_key` (PEM) are this client's certificate for mTLS; `api_key` is sent as
        ``authorization: Bearer <key>`` on every call."""
        self.address = address
        self.timeout = timeout
        self.last_summary: Summary | None = None
        self._metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
        creds = _channel_credentials(tls, root_certificates, certificate_chain, private_key)
        grpc_mod: Any = grpc.aio if self._aio else grpc
        options = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
            *_channel_options(service_config),
        ]
        if creds is None:
            self._channel = grpc_mod.insecure_channel(address, options=options)
        else:
            self._channel = grpc_mod.secure_channel(address, creds, options=options)
        self._stub = tts_pb2_grpc.TextToSpeechStub(self._channel)

    def _timeout(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout


class SupertonicClient(_Base):
    """Blocking client over one gRPC channel. Use as a context manager or call `close()`.

    `timeout` (seconds) is the default deadline of every call; each method can override it.
    `service_config` (JSON text or a dict) sets load balancing and retries; `address` may
    name several replicas, e.g. "dns:///tts-headless:50051" (every address the name
    resolves to) or "ipv4:10.0.0.1:50051,10.0.0.2:50051".
    """

    def stream(
        self, text: str, *, timeout: float | None = None, **options: Unpack[RequestOptions]
    ) -> Stream:
        """Start a `Synthesize` stream; iterate the result for `Chunk`s.

        Options are `build_request`'s: voice, language, speed, steps, encoding,
        sample_rate_hz, seed, max_chunk_chars, first_chunk_chars, word_timings. Errors (a bad
        request) are raised as `SupertonicError` while iterating.
        """
        req = build_request(text, **options)
        return Stream(
            self._stub.Synthesize(req, timeout=self._timeout(timeout), metadata=self._metadata),
            self,
        )

    def streaming(
        self, *, timeout: float | None = None, **options: Unpack[StreamingOptions]
    ) -> TextStream:
        """Start a `StreamingSynthesize` call: `send()` text, iterate for chunks.

        Options are `build_request`'s (less the text) plus `max_buffer_delay_ms` (speak text
        that stalls this long without a sentence end) and `early_first_clause`.
        """
        return TextStream(self._stub, build_config(**options), self._timeout(timeout), self)

    def synthesize(
        self, text: str, *, timeout: float | None = None, **options: Unpack[RequestOptions]
    ) -> Clip:
        """The whole clip in one reply (`SynthesizeOnce`); options as for `stream`."""
        req = build_request(text, **options)
        try:
            reply = self._stub.SynthesizeOnce(
                req, timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from(exc) from exc
        clip = clip_from(reply)
        self.last_summary = clip.summary
        return clip

    def voices(self, *, timeout: float | None = None) -> VoiceList:
        """The server's voices, languages and model state."""
        try:
            reply = self._stub.ListVoices(
                tts_pb2.ListVoicesRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from(exc) from exc
        return voice_list_from(reply)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSupertonicClient(_Base):
    """The asyncio client (`grpc.aio`); create it inside a running event loop."""

    _aio = True

    def stream(
        self, text: str, *, timeout: float | None = None, **options: Unpack[RequestOptions]
    ) -> AsyncStream:
        """Start a `Synthesize` stream; `async for` over it. Options as `build_request`."""
        req = build_request(text, **options)
        return AsyncStream(
            self._stub.Synthesize(req, timeout=self._timeout(timeout), metadata=self._metadata),
            self,
        )

    def streaming(
        self, *, timeout: float | None = None, **options: Unpack[StreamingOptions]
    ) -> AsyncTextStream:
        """Start a `StreamingSynthesize` call; options as for `SupertonicClient.streaming`."""
        return AsyncTextStream(self._stub, build_config(**options), self._timeout(timeout), self)

    async def synthesize(
        self, text: str, *, timeout: float | None = None, **options: Unpack[RequestOptions]
    ) -> Clip:
        """The whole clip in one reply (`SynthesizeOnce`)."""
        req = build_request(text, **options)
        try:
            reply = await self._stub.SynthesizeOnce(
                req, timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from(exc) from exc
        clip = clip_from(reply)
        self.last_summary = clip.summary
        return clip

    async def voices(self, *, timeout: float | None = None) -> VoiceList:
        """The server's voices, languages and model state."""
        try:
            reply = await self._stub.ListVoices(
                tts_pb2.ListVoicesRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise error_from(exc) from exc
        return voice_list_from(reply)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
