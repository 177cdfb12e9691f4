"""One call's chunks as they arrive (`Stream`, `AsyncStream`) and the text-in sessions of
`streaming()` (`TextStream`, `AsyncTextStream`)."""

from __future__ import annotations

import queue
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, Self

import grpc

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_client.errors import error_from
from supertonic_client.replies import Chunk, Summary, chunk_from, summary_from

if TYPE_CHECKING:
    from supertonic_client.client import AsyncSupertonicClient, SupertonicClient

_FLUSH = tts_pb2.StreamingSynthesizeRequest(flush=tts_pb2.Flush())
_CLOSE = object()


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
                raise error_from(exc) from exc
            if msg.WhichOneof("event") == "chunk":
                return chunk_from(msg.chunk)
            if msg.WhichOneof("event") == "summary":
                self.summary = summary_from(msg.summary)
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
                raise error_from(exc) from exc
            if msg is grpc.aio.EOF:
                raise StopAsyncIteration
            if msg.WhichOneof("event") == "chunk":
                return chunk_from(msg.chunk)
            if msg.WhichOneof("event") == "summary":
                self.summary = summary_from(msg.summary)
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
            raise error_from(exc) from exc

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
            raise error_from(exc) from exc

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if exc_type is not None:
            self.cancel()
        else:
            await self.close()
