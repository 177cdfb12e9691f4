"""One place that owns every RPC's outcome: its status code, its count, its slot.

Each handler of the servicer is a function of the request and a :class:`Call`; it returns
the reply (unary) or yields the replies (streaming). :class:`Rpcs` runs it and, whatever
happens, counts ``requests_total{rpc,code}`` exactly once with the code the client got:

- a `RequestError` aborts with its code (``retry-after-ms`` trailer when it has a hint);
- `QueueFull` is RESOURCE_EXHAUSTED, `SchedulerStopped` UNAVAILABLE;
- a cancel, wherever it lands (awaiting the model or paused on a slow write), is CANCELLED
  or DEADLINE_EXCEEDED, and the handler's generator is closed at once, not at GC time;
- anything else is INTERNAL, logged once with its traceback: never UNKNOWN.

Streamed replies are written here with ``context.write`` under a write-stall timeout, so a
client that stops reading loses its slot after ``write_timeout_s`` instead of holding it
forever; its stream ends DEADLINE_EXCEEDED, a status it reads right after the audio already
queued for it. Requests whose bytes do not parse reach the handler as :class:`Malformed` (see
:func:`lenient`) and are refused with INVALID_ARGUMENT and one log line.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter as Tally
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message_factory import GetMessageClass

from supertonic_grpc.engine import EngineError
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.scheduler import QueueFull, SchedulerStopped
from supertonic_grpc.validation import RequestError

log = logging.getLogger(__name__)


def failure_status(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The code and message for a chunk that failed in the scheduler or the model."""
    if isinstance(exc, SchedulerStopped):
        return grpc.StatusCode.UNAVAILABLE, "server is shutting down; retry on another replica"
    if isinstance(exc, EngineError):
        return grpc.StatusCode.INTERNAL, f"model failure: {exc}"
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


Req = TypeVar("Req")
Reply = TypeVar("Reply")
# A moment before the deadline by the server's clock still counts as the deadline.
_DEADLINE_TOLERANCE_S = 0.05


@dataclass(frozen=True)
class Malformed:
    """A request whose bytes did not parse (truncated, invalid UTF-8, wrong wire type)."""

    error: str
    size: int


def add_servicer(
    servicer: Any, service: ServiceDescriptor, server: grpc.aio.Server, *, guard: bool = False
) -> None:
    """Register every method of `service` on `server`, like the generated
    ``add_*Servicer_to_server`` but with :func:`lenient` request deserializers. Handlers run
    by :class:`Rpcs` refuse :class:`Malformed` requests themselves; `guard` does it for a
    servicer that does not know about them (unary-request methods, e.g. gRPC health)."""
    handlers = {}
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    for method in service.methods:
        kind = kinds[(method.client_streaming, method.server_streaming)]
        behaviour = getattr(servicer, method.name)
        if guard and not method.client_streaming:
            behaviour = _guarded(behaviour)
        handlers[method.name] = kind(
            behaviour,
            request_deserializer=lenient(GetMessageClass(method.input_type).FromString),
            response_serializer=GetMessageClass(method.output_type).SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )


def _guarded(behaviour: Callable[..., Any]) -> Callable[..., Any]:
    """`behaviour`, refusing a Malformed request with INVALID_ARGUMENT first."""
    if inspect.isasyncgenfunction(behaviour):

        async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            if isinstance(request, Malformed):
                err = _malformed(request)
                await context.abort(err.code, err.message)
            async for reply in behaviour(request, context):
                yield reply

        return stream

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, Malformed):
            err = _malformed(request)
            await context.abort(err.code, err.message)
        return await behaviour(request, context)

    return unary


def lenient(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    """A request deserializer that returns :class:`Malformed` instead of raising, so that
    gRPC does not log a traceback and answer UNKNOWN."""

    def deserialize(data: bytes) -> Any:
        try:
            return parse(data)
        except Exception as exc:  # DecodeError, or UnicodeDecodeError on some runtimes
            return Malformed(f"{type(exc).__name__}: {exc}", len(data))

    return deserialize


@dataclass(frozen=True)
class Limits:
    """Bounds the accounting enforces for every RPC that takes a slot."""

    max_streams: int  # concurrent slot-taking RPCs in the process
    max_streams_per_peer: int  # the same per client address (0: no per-peer limit)
    write_timeout_s: float  # longest wait for a client to accept one streamed message
    max_reply_bytes: int  # largest message the server sends


@dataclass
class Call:
    """What a handler may want to know about its RPC."""

    rpc: str
    context: grpc.aio.ServicerContext
    peer: str
    started: float = field(default_factory=time.monotonic)


def peer_host(peer: str) -> str:
    """``ipv4:10.0.0.1:5000`` -> ``ipv4:10.0.0.1``: the client, not its connection."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rsplit(":", 1)[0]
        return f"{kind}:{host}"
    return peer


def cancel_code(context: grpc.aio.ServicerContext) -> grpc.StatusCode:
    """Why a handler was cancelled: the client's deadline, or the client itself."""
    remaining = context.time_remaining()
    if remaining is not None and remaining <= _DEADLINE_TOLERANCE_S:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class Stalled(Exception):
    """The client accepted no message for the write-stall timeout."""


class Rpcs:
    """Runs handlers and owns their accounting (see the module docstring)."""

    def __init__(
        self,
        metrics: Metrics,
        limits: Limits,
        gate: Callable[[], None] = lambda: None,
    ) -> None:
        self.metrics = metrics
        self.limits = limits
        self.gate = gate  # raises RequestError while the server takes no work
        self.active = 0  # slot-taking RPCs in progress
        self._per_peer: Tally[str] = Tally()

    # --- public entry points ---------------------------------------------------------

    async def unary(
        self,
        rpc: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handler: Callable[[Any, Call], Awaitable[Reply]],
        *,
        slot: bool = True,
    ) -> Reply:
        """Run a unary handler; its reply is checked against the send limit."""
        call = Call(rpc, context, context.peer())

        async def body() -> Reply:
            reply = await handler(_checked(request), call)
            size = reply.ByteSize()  # type: ignore[attr-defined]
            if size > self.limits.max_reply_bytes:
                raise RequestError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"reply of {size} bytes exceeds the {self.limits.max_reply_bytes}-byte "
                    "message limit; use Synthesize to stream it",
                )
            return reply

        return await self._run(call, body, slot=slot, streaming=False)

    async def stream(
        self,
        rpc: str,
        request: Any,
        context: grpc.aio.ServicerContext,
        handler: Callable[[Any, Call], AsyncIterator[Any]],
        *,
        slot: bool = True,
    ) -> None:
        """Run a streaming handler (server- or bidi-streaming: `request` may be an async
        iterator of requests) and write its messages under the write-stall timeout."""
        call = Call(rpc, context, context.peer())

        async def body() -> None:
            messages = handler(_checked(request), call)
            first = True
            try:
                async for message in messages:
                    await self._write(context, message, first=first)
                    first = False
            finally:
                # Runs the handler's cleanup now, also when the cancel came during a write.
                await messages.aclose()  # type: ignore[attr-defined]

        await self._run(call, body, slot=slot, streaming=True)

    # --- internals -----------------------------------------------------------------

    async def _write(self, context: grpc.aio.ServicerContext, message: Any, *, first: bool) -> None:
        size = message.ByteSize()
        if size > self.limits.max_reply_bytes:
            # Sent, it would fail in the client (4 MiB default) after all the compute.
            problem = f"a {size}-byte message exceeds the {self.limits.max_reply_bytes}-byte limit"
            log.warning("stream ended: %s", problem)
            raise RequestError(grpc.StatusCode.INTERNAL, problem)

        async def send() -> None:
            if first:
                # The headers go in a batch of their own, not with a message that may stall:
                # gRPC would add them again to the stall status's batch and refuse it.
                await context.send_initial_metadata(())
            await context.write(message)

        try:
            await asyncio.wait_for(send(), self.limits.write_timeout_s)
        except TimeoutError:
            raise Stalled from None
        except Exception as exc:
            # A write fails only on a call that has ended: the client cancelled or went away
            # (grpc reports this before it cancels the handler).
            log.debug("write failed: %s", exc)
            raise asyncio.CancelledError from None

    def _take_slot(self, call: Call) -> str:
        peer = peer_host(call.peer)
        if self.active >= self.limits.max_streams:
            self.metrics.rejected_total.labels("too_many_streams").inc()
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self.active} requests in progress (limit {self.limits.max_streams})",
            )
        per_peer = self.limits.max_streams_per_peer
        if per_peer and self._per_peer[peer] >= per_peer:
            self.metrics.rejected_total.labels("too_many_streams_per_peer").inc()
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{self._per_peer[peer]} requests in progress from this client (limit {per_peer})",
            )
        self.active += 1
        self._per_peer[peer] += 1
        return peer

    def _free_slot(self, peer: str) -> None:
        self.active -= 1
        self._per_peer[peer] -= 1
        if self._per_peer[peer] <= 0:
            del self._per_peer[peer]

    async def _run(
        self, call: Call, body: Callable[[], Awaitable[Reply]], *, slot: bool, streaming: bool
    ) -> Reply:
        context = call.context
        code = grpc.StatusCode.OK
        peer: str | None = None
        # Streams and unary calls in progress are separate gauges: a dashboard of streams
        # should not move with short unary calls.
        gauge = (
            self.metrics.active_streams
            if streaming
            else self.metrics.active_unary_requests.labels(call.rpc)
        )
        counted = False
        try:
            if slot:
                self.gate()
                peer = self._take_slot(call)
            gauge.inc()
            counted = True
            return await body()
        except asyncio.CancelledError:
            code = cancel_code(context)
            raise
        except RequestError as err:
            code, message, hint = err.code, err.message, err.retry_after_s
        except QueueFull as exc:
            self.metrics.rejected_total.labels("queue_full").inc()
            code, message = grpc.StatusCode.RESOURCE_EXHAUSTED, f"server busy: {exc}; retry later"
            hint = exc.retry_after_s
        except SchedulerStopped:
            code, hint = grpc.StatusCode.UNAVAILABLE, None
            message = "server is shutting down; retry on another replica"
        except Stalled:
            self.metrics.stalled_streams_total.inc()
            code, hint = grpc.StatusCode.DEADLINE_EXCEEDED, None
            message = (
                f"the client read nothing for {self.limits.write_timeout_s:g} s (the server's "
                "write-stall timeout): stream ended"
            )
            log.info("%s from %s: %s", call.rpc, call.peer, message)
            # The unread message stays queued in gRPC and the status is queued behind it
            # (trailers follow the data): a client that reads again gets both at once. The
            # abort below waits until then (or the client's deadline or cancel, or the
            # connection's end), but the slot and the handler are freed before it.
        except grpc.aio.AbortError:
            # The handler aborted the call itself: count the code it chose.
            code = context.code() or grpc.StatusCode.UNKNOWN
            raise
        except Exception as exc:
            log.exception("%s from %s failed", call.rpc, call.peer)
            code, hint = grpc.StatusCode.INTERNAL, None
            message = f"internal error: {type(exc).__name__}"
        finally:
            if peer is not None:
                self._free_slot(peer)
            if counted:
                gauge.dec()
            self.metrics.requests_total.labels(call.rpc, code.name).inc()
        if hint is not None:
            context.set_trailing_metadata((("retry-after-ms", str(int(hint * 1000))),))
        try:
            await context.abort(code, message)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            # ExecuteBatchError: the call ended (a cancel, the deadline, the connection)
            # before the status went out, as it can for a stalled reader; it is counted.
            log.debug("%s from %s: status not sent: %s", call.rpc, call.peer, exc)
            raise asyncio.CancelledError from None
        raise AssertionError("unreachable: abort raises")  # pragma: no cover


def _checked(request: Any) -> Any:
    """The request, or for a request stream an iterator that refuses malformed items."""
    if isinstance(request, Malformed):
        raise _malformed(request)
    if hasattr(request, "__aiter__"):
        return _checked_stream(request)
    return request


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Malformed):
            raise _malformed(request)
        yield request


def _malformed(request: Malformed) -> RequestError:
    log.info("malformed request (%d bytes): %s", request.size, request.error)
    return RequestError(
        grpc.StatusCode.INVALID_ARGUMENT, f"the request does not parse: {request.error}"
    )
