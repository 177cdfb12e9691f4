"""The asyncio gRPC client: N users per level, each sending requests back to back.

Every request becomes a :class:`~loadtest.stats.StreamRecord` the moment it starts, so a
request cut short by an error, a deadline or the level's hard stop is still counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from loadtest import prom
from loadtest.corpus import Text, TextPicker
from loadtest.stats import StreamRecord, summarize_streams, summarize_unary
from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc

log = logging.getLogger("loadtest")

# A 30 s clip of 44.1 kHz PCM16 is ~2.6 MB; leave room for long texts and float32 audio.
_CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    # Each channel gets its own connection rather than sharing one subchannel.
    ("grpc.use_local_subchannel_pool", 1),
]
_ERROR_BACKOFF_S = 0.1  # keeps a user from spinning on an instant rejection


@dataclass
class RunConfig:
    """Everything that shapes the traffic of one run."""

    address: str
    # "stream" (Synthesize, back to back), "unary" (SynthesizeOnce), "listen" (real-time
    # listeners, see loadtest.listeners) or "burst" (N streams at one instant)
    mode: str = "stream"
    users: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    duration_s: float = 30.0  # per level: no new request starts after this
    requests: int = 0  # per user and level; 0 = as many as fit in duration_s
    timeout_s: float = 120.0  # gRPC deadline of each request
    voice: str = ""
    steps: int = 0
    speed: float = 0.0
    channels: int = 1
    tolerance_s: float = 0.020
    seed: int = 0
    warmup_requests: int = 1
    metrics_url: str | None = None
    think_s: float = 1.0  # listen mode: mean think time after playback ends
    stagger_s: float = 2.0  # listen mode: listeners' starts spread over this

    def request(self, text: Text) -> tts_pb2.SynthesizeRequest:
        """The request for one bundled text."""
        return tts_pb2.SynthesizeRequest(
            text=text.text,
            voice=self.voice,
            language=text.language,
            speed=self.speed,
            steps=self.steps,
            audio_config=tts_pb2.AudioConfig(encoding=tts_pb2.LINEAR16),
        )


def open_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    """``count`` insecure channels to ``address``."""
    return [grpc.aio.insecure_channel(address, options=_CHANNEL_OPTIONS) for _ in range(count)]


async def probe(channel: grpc.aio.Channel, timeout_s: float = 3.0) -> str:
    """The server's health status name (``SERVING``, ``NOT_SERVING``, ...).

    A server without the health service counts as SERVING if ListVoices answers. Raises
    ``grpc.aio.AioRpcError`` when the server cannot be reached.
    """
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        # types-grpcio-health-checking declares HealthStub without its methods.
        check = stub.Check  # type: ignore[attr-defined]
        reply = await check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
            raise
        await tts_pb2_grpc.TextToSpeechStub(channel).ListVoices(
            tts_pb2.ListVoicesRequest(), timeout=timeout_s
        )
        return "SERVING"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def server_info(channel: grpc.aio.Channel, timeout_s: float = 10.0) -> dict[str, Any]:
    """What ListVoices says about the model: demo or real weights, version, voices."""
    reply = await tts_pb2_grpc.TextToSpeechStub(channel).ListVoices(
        tts_pb2.ListVoicesRequest(), timeout=timeout_s
    )
    return {
        "model_state": tts_pb2.ModelState.Name(reply.model_state),
        "model_version": reply.model_version,
        "default_voice": reply.default_voice,
        "languages": list(reply.languages),
        "voices": [v.name for v in reply.voices],
    }


async def _stream_once(
    stub: tts_pb2_grpc.TextToSpeechStub, cfg: RunConfig, text: Text, rec: StreamRecord
) -> None:
    call = stub.Synthesize(cfg.request(text), timeout=cfg.timeout_s)
    try:
        async for message in call:
            now = time.monotonic()
            kind = message.WhichOneof("event")
            if kind == "chunk":
                if rec.first_audio is None:
                    rec.first_audio = now
                rec.arrivals.append(now)
                rec.durations.append(message.chunk.duration_seconds)
                rec.batch_sizes.append(message.chunk.timings.batch_size)
            elif kind == "summary":
                rec.server_ttfa = message.summary.time_to_first_audio_seconds
    except asyncio.CancelledError:
        call.cancel()
        raise


async def _unary_once(
    stub: tts_pb2_grpc.TextToSpeechStub, cfg: RunConfig, text: Text, rec: StreamRecord
) -> None:
    reply = await stub.SynthesizeOnce(cfg.request(text), timeout=cfg.timeout_s)
    rec.first_audio = time.monotonic()
    rec.durations.append(reply.summary.audio_seconds)
    rec.arrivals.append(rec.first_audio)
    rec.server_ttfa = reply.summary.time_to_first_audio_seconds


async def one_request(
    stub: tts_pb2_grpc.TextToSpeechStub, cfg: RunConfig, text: Text, rec: StreamRecord
) -> None:
    """Send one request, filling ``rec``; never raises for an RPC failure."""
    rec.start = time.monotonic()
    try:
        if cfg.mode == "unary":
            await _unary_once(stub, cfg, text, rec)
        else:
            await _stream_once(stub, cfg, text, rec)
    except grpc.aio.AioRpcError as exc:
        rec.code = exc.code().name
        rec.error = (exc.details() or "")[:300]
    except asyncio.CancelledError:
        rec.code, rec.error = "CANCELLED", "stopped by the load tester at the level's hard limit"
        raise
    finally:
        rec.end = time.monotonic()


async def requests_loop(
    stub: tts_pb2_grpc.TextToSpeechStub,
    cfg: RunConfig,
    picker: TextPicker,
    level: int,
    user: int,
    stop_at: float,
    records: list[StreamRecord],
    pause: Callable[[StreamRecord], float] | None = None,
) -> None:
    """Requests one after the other until ``stop_at``; after each, wait ``pause(record)``
    seconds (default: none, except a short back-off after a failure)."""
    rng = picker.for_user(level, user)
    sent = 0
    while (cfg.requests == 0 or sent < cfg.requests) and time.monotonic() < stop_at:
        text = picker.pick(rng)
        rec = StreamRecord(user=user, text_id=text.id, language=text.language, start=0.0)
        records.append(rec)
        await one_request(stub, cfg, text, rec)
        sent += 1
        wait = pause(rec) if pause is not None else 0.0 if rec.ok else _ERROR_BACKOFF_S
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass
class LevelResult:
    """One concurrency level: its raw records, its figures and the server's counters."""

    users: int
    t0: float
    records: list[StreamRecord]
    figures: dict[str, Any]
    server: dict[str, Any] | None


UserLoop = Callable[..., Awaitable[None]]


async def run_level(
    cfg: RunConfig,
    stubs: list[tts_pb2_grpc.TextToSpeechStub],
    picker: TextPicker,
    users: int,
    user_loop: UserLoop | None = None,
) -> LevelResult:
    """Run ``users`` concurrent users for one level and summarize it. ``user_loop`` is
    what each user does (default: requests back to back)."""
    before = await prom.scrape_or_none(cfg.metrics_url)
    records: list[StreamRecord] = []
    cpu0, t0 = time.process_time(), time.monotonic()
    stop_at = t0 + cfg.duration_s
    loop = user_loop or requests_loop
    tasks = [
        asyncio.ensure_future(loop(stubs[u % len(stubs)], cfg, picker, users, u, stop_at, records))
        for u in range(users)
    ]
    # Each request has its own deadline; this bound only guards against a stuck client.
    _, pending = await asyncio.wait(tasks, timeout=cfg.duration_s + cfg.timeout_s + 10.0)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    wall = max(time.monotonic() - t0, 1e-9)
    cpu = time.process_time() - cpu0
    after = await prom.scrape_or_none(cfg.metrics_url)
    summarize = summarize_unary if cfg.mode == "unary" else summarize_streams
    figures = summarize(records, wall, cfg.tolerance_s)
    figures["client_cpu_cores"] = cpu / wall
    server = prom.level_delta(before, after)
    if server is not None and cfg.mode != "unary":
        low, high = figures["underruns"]["server_count_bounds"]
        server["underruns_agree"] = prom.compare_underruns((low, high), server["underruns"])
    return LevelResult(users, t0, records, figures, server)


async def warm_up(cfg: RunConfig, stub: tts_pb2_grpc.TextToSpeechStub, picker: TextPicker) -> None:
    """Send a few uncounted requests so the first level does not pay for cold caches."""
    rng = picker.for_user(-1, 0)
    for _ in range(cfg.warmup_requests):
        text = picker.pick(rng)
        rec = StreamRecord(user=-1, text_id=text.id, language=text.language, start=0.0)
        await one_request(stub, cfg, text, rec)
        if not rec.ok:
            log.warning("warm-up request failed: %s %s", rec.code, rec.error)
