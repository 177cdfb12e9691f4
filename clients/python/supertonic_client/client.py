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
import queue
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

import grpc
import numpy as np

from supertonic_client import audio
from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_client.audio import Encoding

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

_MODEL_STATES = {tts_pb2.REAL: "real", tts_pb2.DEMO: "demo"}


class SupertonicError(Exception):
    """Any failed call: the gRPC status `code` and the server's `message`.

    `retry_after_s` is the server's suggested back-off for RESOURCE_EXHAUSTED, else None.
    """

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s


def _error(exc: grpc.RpcError) -> SupertonicError:
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    retry: float | None = None
    trailers = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    for key, value in trailers or ():
        if key == "retry-after-ms":
            try:
                retry = float(value) / 1000.0
            except (TypeError, ValueError):
                retry = None
    return SupertonicError(code or grpc.StatusCode.UNKNOWN, details or "", retry)


@dataclass(frozen=True)
class ChunkTimings:
    """Server-side timings of one chunk."""

    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass(frozen=True)
class WordTiming:
    """One word's offsets in the text sent and its estimated span in the audio timeline."""

    word: str
    text_start: int
    text_end: int
    start_seconds: float
    end_seconds: float


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of audio: decoded float32 `audio` plus the wire payload `data`.

    A chunk's audio may come as several pieces (`piece` 0, 1, ...; `last_piece` on the
    last); `words` (with word timings on) come on its first piece.
    """

    index: int
    audio: np.ndarray = field(repr=False)  # float32 mono in [-1, 1] at sample_rate_hz
    data: bytes = field(repr=False)  # the payload exactly as sent, in `encoding`
    encoding: Encoding
    sample_rate_hz: int
    text: str
    text_start: int
    text_end: int
    audio_offset_seconds: float
    duration_seconds: float
    timings: ChunkTimings
    piece: int = 0
    last_piece: bool = True
    words: tuple[WordTiming, ...] = ()


@dataclass(frozen=True)
class Summary:
    """The totals the server sends after the last chunk."""

    chunks: int
    audio_seconds: float
    time_to_first_audio_seconds: float
    total_seconds: float
    queue_seconds: float
    compute_seconds: float
    sample_rate_hz: int
    encoding: Encoding
    voice: str
    language: str
    seed: int
    model_state: str  # "real", "demo" or "unspecified"


@dataclass(frozen=True)
class Clip:
    """A whole clip from `synthesize()`; `chunks` carry metadata only (empty audio)."""

    audio: np.ndarray = field(repr=False)
    data: bytes = field(repr=False)
    encoding: Encoding
    sample_rate_hz: int
    chunks: tuple[Chunk, ...]
    summary: Summary


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    gender: str
    languages: tuple[str, ...]
    native_sample_rate_hz: int


@dataclass(frozen=True)
class VoiceList:
    """What `voices()` returns: the voices and whether the server runs real weights."""

    voices: tuple[VoiceInfo, ...]
    model_state: str
    model_version: str
    default_voice: str
    languages: tuple[str, ...]


class RequestOptions(TypedDict, total=False):
    """Keyword options of every synthesis call; see `build_request` for their defaults."""

    voice: str
    language: str
    speed: float
    steps: int
    encoding: Encoding
    sample_rate_hz: int
    seed: int | None
    max_chunk_chars: int
    first_chunk_chars: int
    word_timings: bool


class StreamingOptions(RequestOptions, total=False):
    """`RequestOptions` plus the text buffering of `streaming()`."""

    max_buffer_delay_ms: int
    early_first_clause: bool


def _encoding(value: int) -> Encoding:
    # UNSPECIFIED (0) means the server default, LINEAR16.
    return Encoding(value) if value else Encoding.LINEAR16


def _chunk(msg: tts_pb2.AudioChunk, decode: bool = True) -> Chunk:
    enc = _encoding(msg.encoding)
    data = bytes(msg.audio)
    samples = audio.decode(data, enc) if decode and data else np.zeros(0, np.float32)
    t = msg.timings
    return Chunk(
        index=msg.index,
        audio=samples,
        data=data,
        encoding=enc,
        sample_rate_hz=msg.sample_rate_hz,
        text=msg.text,
        text_start=msg.text_start,
        text_end=msg.text_end,
        audio_offset_seconds=msg.audio_offset_seconds,
        duration_seconds=msg.duration_seconds,
        timings=ChunkTimings(t.queue_seconds, t.compute_seconds, t.batch_size),
        piece=msg.piece,
        last_piece=msg.last_piece,
        words=tuple(
            WordTiming(w.word, w.text_start, w.text_end, w.start_seconds, w.end_seconds)
            for w in msg.words
        ),
    )


def _summary(msg: tts_pb2.SynthesizeSummary) -> Summary:
    return Summary(
        chunks=msg.chunks,
        audio_seconds=msg.audio_seconds,
        time_to_first_audio_seconds=msg.time_to_first_audio_seconds,
        total_seconds=msg.total_seconds,
        queue_seconds=msg.queue_seconds,
        compute_seconds=msg.compute_seconds,
        sample_rate_hz=msg.sample_rate_hz,
        encoding=_encoding(msg.encoding),
        voice=msg.voice,
        language=msg.language,
        seed=msg.seed,
        model_state=_MODEL_STATES.get(msg.model_state, "unspecified"),
    )


def _clip(msg: tts_pb2.SynthesizeOnceResponse) -> Clip:
    enc = _encoding(msg.encoding)
    data = bytes(msg.audio)
    return Clip(
        audio=audio.decode(data, enc) if data else np.zeros(0, np.float32),
        data=data,
        encoding=enc,
        sample_rate_hz=msg.sample_rate_hz,
        chunks=tuple(_chunk(c, decode=False) for c in msg.chunks),
        summary=_summary(msg.summary),
    )


def _voice_list(msg: tts_pb2.ListVoicesResponse) -> VoiceList:
    return VoiceList(
        voices=tuple(
            VoiceInfo(v.name, v.gender, tuple(v.languages), v.native_sample_rate_hz)
            for v in msg.voices
        ),
        model_state=_MODEL_STATES.get(msg.model_state, "unspecified"),
        model_version=msg.model_version,
        default_voice=msg.default_voice,
        languages=tuple(msg.languages),
    )


def build_request(
    text: str,
    *,
    voice: str = "",
    language: str = "en",
    speed: float = 0.0,
    steps: int = 0,
    encoding: Encoding = Encoding.LINEAR16,
    sample_rate_hz: int = 0,
    seed: int | None = None,
    max_chunk_chars: int = 0,
    first_chunk_chars: int = 0,
    word_timings: bool = False,
) -> tts_pb2.SynthesizeRequest:
    """The protobuf request. 0 / "" mean the server's defaults (voice: the server's default
    voice, speed 1.05, steps 5, native 44.1 kHz); `seed=None` means a random seed;
    `word_timings` asks for estimated word timings on each chunk."""
    req = tts_pb2.SynthesizeRequest(
        text=text,
        voice=voice,
        language=language,
        speed=speed,
        steps=steps,
        audio_config=tts_pb2.AudioConfig(encoding=encoding.name, sample_rate_hz=sample_rate_hz),
        chunking=tts_pb2.ChunkingConfig(
            max_chunk_chars=max_chunk_chars, first_chunk_chars=first_chunk_chars
        ),
        enable_word_timings=word_timings,
    )
    if seed is not None:
        req.seed = seed
    return req


def build_config(
    *,
    max_buffer_delay_ms: int = 0,
    early_first_clause: bool = False,
    **options: Unpack[RequestOptions],
) -> tts_pb2.StreamingSynthesizeRequest:
    """The first message of a StreamingSynthesize call: `build_request`'s options (less the
    text) plus the buffering policy (0 ms: the server's default stall delay)."""
    req = build_request("", **options)
    config = tts_pb2.StreamingSynthesizeConfig(
        voice=req.voice,
        language=req.language,
        speed=req.speed,
        steps=req.steps,
        audio_config=req.audio_config,
        chunking=req.chunking,
        enable_word_timings=req.enable_word_timings,
        buffering=tts_pb2.TextBufferingConfig(
            max_buffer_delay_ms=max_buffer_delay_ms, early_first_clause=early_first_clause
        ),
    )
    if req.HasField("seed"):
        config.seed = req.seed
    return tts_pb2.StreamingSynthesizeRequest(config=config)


_FLUSH = tts_pb2.StreamingSynthesizeRequest(flush=tts_pb2.Flush())
_CLOSE = object()

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


class Stream(Iterator[Chunk]):
    """The chunks of one `Synthesize` call, in order; `summary` is set once it has ended."""

    def __init__(self, call: Any, owner: SupertonicClient) -> None:
        self._call = call
        self._owner = owner
        self.summary: Summary | None = None

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Chunk:
        while True:
            try:
                msg = next(self._call)
            except grpc.RpcError as exc:
                raise _error(exc) from exc
            if msg.WhichOneof("event") == "chunk":
                return _chunk(msg.chunk)
            if msg.WhichOneof("event") == "summary":
                self.summary = _summary(msg.summary)
                self._owner.last_summary = self.summary

    def cancel(self) -> None:
        """Stop the stream; the server drops its queued chunks."""
        self._call.cancel()


class AsyncStream(AsyncIterator[Chunk]):
    """`Stream` for asyncio: `async for chunk in stream`; then `stream.summary`."""

    def __init__(self, call: Any, owner: AsyncSupertonicClient) -> None:
        self._call = call
        self._owner = owner
        self.summary: Summary | None = None

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Chunk:
        while True:
            try:
                msg = await self._call.read()
            except grpc.RpcError as exc:
                raise _error(exc) from exc
            if msg is grpc.aio.EOF:
                raise StopAsyncIteration
            if msg.WhichOneof("event") == "chunk":
                return _chunk(msg.chunk)
            if msg.WhichOneof("event") == "summary":
                self.summary = _summary(msg.summary)
                self._owner.last_summary = self.summary

    def cancel(self) -> None:
        """Stop the stream; the server drops its queued chunks."""
        self._call.cancel()


class TextStream(Stream):
    """A `StreamingSynthesize` call: `send()` text as it is written, iterate for `Chunk`s.

    Sending never blocks (a feeder thread of gRPC's drains a queue), so one thread may
    send everything and then iterate, or two threads may do one each. `close()` half-closes:
    the server speaks what is buffered and ends with the summary. `cancel()` is barge-in.
    """

    def __init__(
        self,
        stub: tts_pb2_grpc.TextToSpeechStub,
        config: tts_pb2.StreamingSynthesizeRequest,
        timeout: float | None,
        owner: SupertonicClient,
    ) -> None:
        self._requests: queue.Queue[object] = queue.Queue()
        self._requests.put(config)
        call = stub.StreamingSynthesize(self._pump(), timeout=timeout, metadata=owner._metadata)
        super().__init__(call, owner)

    def _pump(self) -> Iterator[tts_pb2.StreamingSynthesizeRequest]:
        while (item := self._requests.get()) is not _CLOSE:
            yield item  # type: ignore[misc]

    def send(self, text: str) -> None:
        """Append a fragment of any size (a token, a sentence) to the text."""
        if text:
            self._requests.put(tts_pb2.StreamingSynthesizeRequest(text=text))

    def flush(self) -> None:
        """Speak everything sent so far now, even mid-sentence."""
        self._requests.put(_FLUSH)

    def close(self) -> None:
        """No more text: the server speaks what is buffered, then the stream ends."""
        self._requests.put(_CLOSE)

    def cancel(self) -> None:
        self._requests.put(_CLOSE)
        super().cancel()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.cancel()
        else:
            self.close()


class AsyncTextStream(AsyncStream):
    """`TextStream` for asyncio: `await send(...)` while another task reads `async for`.

    The config goes out with the first write; `close()` half-closes, `cancel()` barges in.
    """

    def __init__(
        self,
        stub: tts_pb2_grpc.TextToSpeechStub,
        config: tts_pb2.StreamingSynthesizeRequest,
        timeout: float | None,
        owner: AsyncSupertonicClient,
    ) -> None:
        super().__init__(stub.StreamingSynthesize(timeout=timeout, metadata=owner._metadata), owner)
        self._config: tts_pb2.StreamingSynthesizeRequest | None = config
        self._closed = False

    async def _write(self, req: tts_pb2.StreamingSynthesizeRequest | None) -> None:
        try:
            if self._config is not None:
                config, self._config = self._config, None
                await self._call.write(config)
            if req is not None:
                await self._call.write(req)
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    async def start(self) -> None:
        """Send the config now (otherwise it goes with the first text)."""
        await self._write(None)

    async def send(self, text: str) -> None:
        """Append a fragment of any size to the text."""
        if text:
            await self._write(tts_pb2.StreamingSynthesizeRequest(text=text))

    async def flush(self) -> None:
        """Speak everything sent so far now, even mid-sentence."""
        await self._write(_FLUSH)

    async def close(self) -> None:
        """No more text: the server speaks what is buffered, then the stream ends."""
        if self._closed:
            return
        await self._write(None)
        self._closed = True
        try:
            await self._call.done_writing()
        except grpc.RpcError as exc:
            raise _error(exc) from exc

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.cancel()
        else:
            await self.close()


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
            raise _error(exc) from exc
        clip = _clip(reply)
        self.last_summary = clip.summary
        return clip

    def voices(self, *, timeout: float | None = None) -> VoiceList:
        """The server's voices, languages and model state."""
        try:
            reply = self._stub.ListVoices(
                tts_pb2.ListVoicesRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return _voice_list(reply)

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
            raise _error(exc) from exc
        clip = _clip(reply)
        self.last_summary = clip.summary
        return clip

    async def voices(self, *, timeout: float | None = None) -> VoiceList:
        """The server's voices, languages and model state."""
        try:
            reply = await self._stub.ListVoices(
                tts_pb2.ListVoicesRequest(), timeout=self._timeout(timeout), metadata=self._metadata
            )
        except grpc.RpcError as exc:
            raise _error(exc) from exc
        return _voice_list(reply)

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
