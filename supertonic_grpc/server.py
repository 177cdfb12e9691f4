"""Wiring: settings -> model bundle -> engine -> scheduler thread -> gRPC server with health,
reflection and a Prometheus endpoint; SIGTERM/SIGINT drain in-flight streams, then exit 0."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast
from wsgiref.simple_server import WSGIServer

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_grpc import rpc, security
from supertonic_grpc.bundle import ModelBundle, load_bundle
from supertonic_grpc.engine import Engine
from supertonic_grpc.engine import device as devices
from supertonic_grpc.engine.serving import build_engine, warm_up
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.scheduler import Scheduler, SchedulerStopped, TickTrace
from supertonic_grpc.service import ModelInfo, TextToSpeechService
from supertonic_grpc.settings import Settings, SettingsError
from supertonic_grpc.voices import UnknownVoiceError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

SERVICE_NAME = tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"].full_name
DEVICE_PROBE_S = 10.0  # how often the watchdog checks a CUDA device
DEVICE_PROBE_TIMEOUT_S = 120.0  # behind the longest batch


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
    _http: tuple[WSGIServer, threading.Thread] | None = field(default=None, repr=False)
    _warmup: asyncio.Task[None] | None = field(default=None, repr=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, repr=False)
    failed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    async def wait_ready(self) -> None:
        if self._warmup is not None:
            await self._warmup

    async def fail(self, reason: str) -> None:
        """The server can no longer serve: `/healthz` fails and `serve` exits non-zero."""
        if self.service.fatal is None:
            log.error("FATAL: %s", reason)
            self.service.fatal = reason
            self.metrics.model_warm.set(0)
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.failed.set()

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def stop(self, grace: float, announce_s: float = 0.0) -> None:
        """Drain in two phases, so that nothing in flight is lost.

        Announce (`announce_s`): health turns NOT_SERVING (gRPC and `/readyz`) while the port
        stays open, so a health checker reads NOT_SERVING instead of a refused connection and
        moves traffic away; new requests get UNAVAILABLE (a client's retry policy sends them
        to another replica) and streams in flight go on. Then the port closes (GOAWAY), so a
        proxy that does not watch health moves new streams on at connect, and the streams in
        flight finish within `grace`.
        """
        self.service.draining = True
        for task in self._tasks:
            task.cancel()
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if announce_s > 0:
            await asyncio.sleep(announce_s)
        await self.close(grace)

    async def close(self, grace: float = 0.0, scheduler_timeout_s: float = 10.0) -> None:
        """Close the port (cancelling what is left after `grace`) and stop the threads."""
        self.service.draining = True
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await asyncio.to_thread(self.scheduler.stop, scheduler_timeout_s)
        if self._http is not None:
            http_server, thread = self._http
            http_server.shutdown()
            http_server.server_close()
            thread.join(5)
            self._http = None


def grpc_options(settings: Settings) -> list[tuple[str, int]]:
    """Channel arguments that bound what one connection can hold."""
    options = [
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
        (
            "grpc.max_concurrent_streams",
            settings.max_concurrent_streams_per_connection or settings.max_streams,
        ),
    ]
    if settings.max_connection_age_s > 0:
        options.append(("grpc.max_connection_age_ms", int(settings.max_connection_age_s * 1000)))
        grace_ms = int(settings.max_connection_age_grace_s * 1000)
        options.append(("grpc.max_connection_age_grace_ms", grace_ms))
    if settings.max_connection_idle_s > 0:
        options.append(("grpc.max_connection_idle_ms", int(settings.max_connection_idle_s * 1000)))
    return options


async def start_server(
    settings: Settings, bundle: ModelBundle | None = None, cpu_threads: int | None = None
) -> RunningServer:
    """Start serving (health NOT_SERVING) and warm up in the background (then SERVING)."""
    settings.validate()
    bundle = bundle or load_bundle(settings.model_dir or None)
    try:
        bundle.voices.get(settings.default_voice)
    except UnknownVoiceError as exc:
        raise SettingsError(f"--default-voice: {exc}") from None
    api_keys = security.load_api_keys(settings)
    engine = build_engine(bundle.model, settings, demo=bundle.is_demo, cpu_threads=cpu_threads)
    metrics = Metrics()
    metrics.set_model_info(
        state=bundle.state,
        device=str(engine.device),
        dtype=settings.dtype,
        compiled=settings.compile,
        version=bundle.config.version,
    )
    engine.on_oom_split = metrics.oom_splits_total.inc
    scheduler = Scheduler(
        engine,
        max_batch=settings.resolved_max_batch(engine.device.type),
        max_wait_s=settings.max_wait_ms / 1000.0,
        max_queue=settings.max_queue,
        max_batch_tokens=settings.resolved_max_batch_tokens(engine.device.type),
        mix_priorities=engine.device.type == "cuda",
        metrics=metrics,
        trace=TickTrace(settings.trace_ticks) if settings.trace_ticks else None,
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
    interceptors = []
    if api_keys:
        interceptors.append(
            security.ApiKeyInterceptor(
                security.Authorizer(api_keys), on_refused=_count_refusal(metrics)
            )
        )
    server = grpc.aio.server(options=grpc_options(settings), interceptors=interceptors)
    rpc.add_servicer(service, tts_pb2.DESCRIPTOR.services_by_name["TextToSpeech"], server)
    health_servicer = health.aio.HealthServicer()
    # types-grpcio-health-checking types the descriptor as upb's class, not the API's.
    health_service = cast(ServiceDescriptor, health_pb2.DESCRIPTOR.services_by_name["Health"])
    rpc.add_servicer(health_servicer, health_service, server, guard=True)
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    address = f"{settings.host}:{settings.port}"
    credentials = security.server_credentials(settings)
    port = (
        server.add_secure_port(address, credentials)
        if credentials is not None
        else server.add_insecure_port(address)
    )
    if port == 0:
        raise OSError(f"cannot listen on {settings.host}:{settings.port}")
    await server.start()
    http = None
    metrics_port = None
    if settings.metrics_port >= 0:
        http = metrics.start_http_server(
            settings.metrics_port,
            settings.metrics_host or settings.host,
            routes={"/healthz": service.liveness, "/readyz": service.readiness},
            ssl_context=security.http_ssl_context(settings),
            authorized=security.Authorizer(api_keys) if api_keys else None,
        )
        metrics_port = http[0].server_port
    running = RunningServer(
        server, port, metrics_port, service, scheduler, health_servicer, metrics, bundle, http
    )
    running._warmup = asyncio.create_task(_warm_up(running, engine, settings))
    running._tasks.append(asyncio.create_task(_watchdog(running, engine.device)))
    if devices.memory_bytes(engine.device):
        running._tasks.append(asyncio.create_task(_watch_device_memory(metrics, engine.device)))
    mode = "DEMO (pseudo weights: audio is noise)" if bundle.is_demo else "real weights"
    log.info(
        "listening on %s:%d%s%s, metrics on :%s, model %s %s on %s",
        settings.host,
        port,
        " with TLS" + (" (client certificates required)" if settings.tls_client_ca else "")
        if credentials is not None
        else "",
        f", {len(api_keys)} API key(s)" if api_keys else "",
        metrics_port,
        bundle.config.version,
        mode,
        engine.device,
    )
    return running


async def _warm_up(running: RunningServer, engine: Engine, settings: Settings) -> None:
    try:
        voice = running.bundle.voices.get(settings.default_voice)
        if settings.warmup:
            max_batch, compiled = running.scheduler.max_batch, settings.compile
            fut = running.scheduler.call(
                lambda _: warm_up(engine, voice, max_batch=max_batch, compiled=compiled)
            )
            done = await asyncio.wrap_future(fut)
            log.info(
                "warm-up done in %.1f s (batches %s, lengths %s)",
                done.seconds,
                done.batch_sizes,
                done.text_lengths,
            )
            if done.recorded_shapes:
                log.info("recorded %d bucketed shapes", done.recorded_shapes)
    except Exception as exc:
        await running.fail(f"warm-up failed: {type(exc).__name__}: {exc}")
        return
    running.service.ready = True
    running.metrics.model_warm.set(1)
    await running._set_health(health_pb2.HealthCheckResponse.SERVING)
    log.info("SERVING")


async def _watchdog(
    running: RunningServer,
    device: torch.device,
    every_s: float = 1.0,
    probe_s: float = DEVICE_PROBE_S,
) -> None:
    """Fail the server when its scheduler thread died or (CUDA) the device is broken: a
    sticky CUDA error fails every later call, so a restart is the only cure."""
    probe_every = max(1, round(probe_s / every_s))
    for tick in itertools.count(1):
        await asyncio.sleep(every_s)
        if not running.scheduler.alive:
            await running.fail("the scheduler thread died")
            return
        if device.type == "cuda" and running.service.ready and tick % probe_every == 0:
            try:
                fut = running.scheduler.call(lambda _: devices.probe(device))
                await asyncio.wait_for(asyncio.wrap_future(fut), DEVICE_PROBE_TIMEOUT_S)
            except SchedulerStopped:
                return
            except Exception as exc:
                await running.fail(f"device {device} is broken: {type(exc).__name__}: {exc}")
                return


def _count_refusal(metrics: Metrics) -> Callable[[str], None]:
    prefix = f"/{SERVICE_NAME}/"

    def count(method: str) -> None:
        if method.startswith(prefix):
            metrics.requests_total.labels(method.removeprefix(prefix), "UNAUTHENTICATED").inc()

    return count


async def _watch_device_memory(metrics: Metrics, device: torch.device) -> None:
    while True:
        for kind, n in devices.memory_bytes(device).items():
            metrics.device_memory_bytes.labels(kind).set(n)
        await asyncio.sleep(5)


async def serve(
    settings: Settings, bundle: ModelBundle | None = None, cpu_threads: int | None = None
) -> int:
    """Run until SIGTERM/SIGINT, then drain and return the exit code: 0 after a drain, 1 when
    the server failed (warm-up, scheduler thread, device) or a second signal cut the drain."""
    running = await start_server(settings, bundle, cpu_threads)
    stop, force = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        (force if stop.is_set() else stop).set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    stopped = asyncio.create_task(stop.wait())
    failed = asyncio.create_task(running.failed.wait())
    await asyncio.wait({stopped, failed}, return_when=asyncio.FIRST_COMPLETED)
    if running.failed.is_set():
        stopped.cancel()
        await running.close(grace=1.0, scheduler_timeout_s=1.0)
        log.error("exiting: %s", running.service.fatal)
        return 1
    failed.cancel()
    log.info(
        "draining: NOT_SERVING for %g s with the port open, then in-flight streams get up to "
        "%g s to finish",
        settings.drain_announce_s,
        settings.grace_s,
    )
    drain = asyncio.create_task(running.stop(settings.grace_s, settings.drain_announce_s))
    forced = asyncio.create_task(force.wait())
    await asyncio.wait({drain, forced}, return_when=asyncio.FIRST_COMPLETED)
    if not drain.done():
        log.warning("second signal: cancelling in-flight streams and exiting now")
        drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        await running.close(grace=0.0, scheduler_timeout_s=1.0)
        return 1
    forced.cancel()
    log.info("stopped")
    return 0


def run(settings: Settings) -> int:
    """Entry point of `supertonic-grpc serve`; a bad setting is one error line, exit 2."""
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code = asyncio.run(serve(settings, cpu_threads=devices.inference_only()))
    except SettingsError as exc:
        log.error("bad setting: %s", exc)
        return 2
    if any(t.name == "scheduler" and t.is_alive() for t in threading.enumerate()):
        # The scheduler thread is still inside a model call (a forced exit or a failure):
        # tearing the interpreter down under it aborts the process, so leave at once.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code
