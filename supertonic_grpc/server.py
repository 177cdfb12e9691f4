"""Wiring: settings -> model bundle -> engine -> scheduler thread -> gRPC server with health,
reflection and a Prometheus endpoint; SIGTERM/SIGINT drain in-flight streams, then exit 0."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field

import grpc
import torch
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from supertonic_grpc import rpc
from supertonic_grpc._proto.supertonic.v1 import tts_pb2
from supertonic_grpc.bundle import ModelBundle, load_bundle
from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND, Engine, pick_device
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.scheduler import Scheduler
from supertonic_grpc.service import ModelInfo, TextToSpeechService
from supertonic_grpc.settings import Settings

log = logging.getLogger(__name__)

SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Shapes the warm-up runs through, so compiled graphs exist before the first listener.
WARMUP_BATCHES = (1, 2, 4, 8)
WARMUP_TEXT_LENGTHS = (32, 128, 320)


@dataclass
class RunningServer:
    """A started server and the handles needed to stop it."""

    server: grpc.aio.Server
    port: int
    metrics_port: int | None
    service: TextToSpeechService
    scheduler: Scheduler
    health: health.aio.HealthServicer
    metrics: Metrics
    bundle: ModelBundle
    _http: object | None = field(default=None, repr=False)
    _warmup: asyncio.Task[None] | None = field(default=None, repr=False)
    _gauges: asyncio.Task[None] | None = field(default=None, repr=False)

    async def wait_ready(self) -> None:
        if self._warmup is not None:
            await self._warmup

    async def stop(self, grace: float) -> None:
        """Drain: NOT_SERVING, refuse new requests, finish in-flight ones within `grace`."""
        self.service.draining = True
        if self._gauges is not None:
            self._gauges.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await asyncio.to_thread(self.scheduler.stop)
        if self._http is not None:
            http_server, thread = self._http  # type: ignore[misc]
            http_server.shutdown()
            http_server.server_close()
            thread.join(5)


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments that bound what one connection can hold."""
    return [
        # A little over the reply limit: `Rpcs` refuses bigger replies with a clear message.
        ("grpc.max_send_message_length", settings.max_reply_bytes + 64 * 1024),
        ("grpc.max_receive_message_length", 1024 * 1024),
        ("grpc.so_reuseport", 0),
        # Ping idle connections so dead peers are found and their streams freed.
        ("grpc.keepalive_time_ms", int(settings.keepalive_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(settings.keepalive_timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 3),
        # Connections are recycled, so no client pins one forever (and load rebalances).
        ("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)),
        ("grpc.max_connection_age_grace_ms", int(settings.max_connection_age_grace_s * 1000)),
        ("grpc.max_connection_idle_ms", int(settings.max_connection_idle_s * 1000)),
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams_per_connection),
    ]


def build_engine(bundle: ModelBundle, settings: Settings) -> Engine:
    """The engine for these settings (device, dtype, compile, demo pacing)."""
    device = pick_device(settings.device)
    if settings.dtype not in _DTYPES:
        raise ValueError(f"--dtype: {settings.dtype!r} is not one of {', '.join(_DTYPES)}")
    return Engine(
        bundle.model,
        device=device,
        dtype=_DTYPES[settings.dtype],
        compile=settings.compile,
        compile_mode=settings.compile_mode,
        length_multiple=16 if settings.compile else 1,
        demo_pacing=DEMO_CHARS_PER_SECOND if bundle.is_demo else None,
    )


async def start_server(settings: Settings, bundle: ModelBundle | None = None) -> RunningServer:
    """Start serving (health NOT_SERVING) and warm up in the background (then SERVING)."""
    bundle = bundle or load_bundle(settings.model_dir or None)
    engine = build_engine(bundle, settings)
    metrics = Metrics()
    metrics.set_model_info(
        state=bundle.state,
        device=str(engine.device),
        dtype=settings.dtype,
        compiled=settings.compile,
        version=bundle.config.version,
    )
    scheduler = Scheduler(
        engine,
        max_batch=settings.resolved_max_batch(engine.device.type),
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_queue=settings.max_queue,
        max_batch_tokens=settings.resolved_max_batch_tokens(engine.device.type),
        mix_priorities=engine.device.type == "cuda",
        metrics=metrics,
    )
    scheduler.start()
    service = TextToSpeechService(
        scheduler=scheduler,
        voices=bundle.voices,
        tokenizer=bundle.tokenizer,
        settings=settings,
        metrics=metrics,
        model=ModelInfo(bundle.state, bundle.config.version, bundle.config.sample_rate),
    )
    server = grpc.aio.server(options=grpc_options(settings))
    rpc.add_servicer(service, tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"], server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    await server.start()
    http = None
    metrics_port = None
    if settings.metrics_port >= 0:
        http = metrics.start_http_server(
            settings.metrics_port,
            settings.host,
            routes={"/healthz": service.liveness, "/readyz": service.readiness},
        )
        metrics_port = http[0].server_port
    running = RunningServer(
        server, port, metrics_port, service, scheduler, health_servicer, metrics, bundle, http
    )
    running._warmup = asyncio.create_task(_warm_up(running, engine, settings))
    if engine.device.type == "cuda":
        running._gauges = asyncio.create_task(_watch_device_memory(metrics, engine.device))
    mode = "DEMO (pseudo weights: audio is noise)" if bundle.is_demo else "real weights"
    log.info(
        "listening on %s:%d, metrics on :%s, model %s %s on %s",
        settings.host,
        port,
        metrics_port,
        bundle.config.version,
        mode,
        engine.device,
    )
    return running


async def _warm_up(running: RunningServer, engine: Engine, settings: Settings) -> None:
    voice = running.bundle.voices.get("")
    if settings.warmup:
        max_batch = running.scheduler.max_batch
        sizes = (
            sorted({b for b in WARMUP_BATCHES if b <= max_batch} | {max_batch})
            if settings.compile
            else (1,)
        )
        lengths = WARMUP_TEXT_LENGTHS if settings.compile else (32,)
        fut = running.scheduler.call(lambda _: engine.warmup(sizes, lengths, voice=voice))
        seconds = await asyncio.wrap_future(fut)
        log.info("warm-up done in %.1f s (batches %s, text lengths %s)", seconds, sizes, lengths)
    running.service.ready = True
    running.metrics.model_warm.set(1)
    for name in ("", SERVICE_NAME):
        await running.health.set(name, health_pb2.HealthCheckResponse.SERVING)
    log.info("SERVING")


async def _watch_device_memory(metrics: Metrics, device: torch.device) -> None:
    while True:
        metrics.device_memory_bytes.labels("allocated").set(torch.cuda.memory_allocated(device))
        metrics.device_memory_bytes.labels("reserved").set(torch.cuda.memory_reserved(device))
        await asyncio.sleep(5)


async def serve(settings: Settings) -> int:
    """Run until SIGTERM/SIGINT, then drain and return the exit code."""
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining: finishing in-flight streams for up to %.0f s", settings.grace_s)
    await running.stop(settings.grace_s)
    log.info("stopped")
    return 0


def run(settings: Settings) -> int:
    """Entry point of `supertonic-grpc serve`."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    torch.set_grad_enabled(False)
    return asyncio.run(serve(settings))
