"""Two replicas as processes: behind nginx (deploy/nginx, grpc_pass) and behind client-side
round_robin (deploy/grpc/service_config.json), as a headless Kubernetes Service is used.

Where streams went is read from each replica's own /metrics. The last test SIGTERMs one
replica in the middle of a load and checks that no client stream fails, through the drain's
announce (health NOT_SERVING, port open, new streams refused with UNAVAILABLE and retried by
the service config) and its close (refused at connect and retried by nginx); it stops a
replica of the module's pair, so it stays last in this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from deploytools import DEPLOY, REPO, Daemon, http_get, require_tool, wait_for
from promtext import sample

from loadtest.spawn import SpawnedServer, free_port
from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_client.client import SupertonicClient, SupertonicError

pytestmark = pytest.mark.slow

NGINX_CONF = DEPLOY / "nginx" / "supertonic-grpc.conf"
SERVICE_CONFIG = (DEPLOY / "grpc" / "service_config.json").read_text()
GO_DIR = REPO / "clients" / "go"
SHORT = "Round robin. Two replicas share the load."
# Several small chunks: still streaming when its replica gets SIGTERM. Few enough that what
# is left of the victim's streams fits in the grace on a loaded 2-core machine: there one
# batch of one-step chunks can take over 10 s (with eight chunks a stream, two streams in
# flight outlasted the drain and were cancelled: a flaky failure).
LONG = (
    "This stream is in flight when its replica is told to stop. "
    "The replica finishes it. New streams go to the other one."
)
LONG_OPTIONS = {"steps": 1, "first_chunk_chars": 30, "max_chunk_chars": 40}
# Generous: a drain ends when its streams do, the grace only bounds a slow machine.
GRACE_S = 180


def synthesize_ok(replica: SpawnedServer) -> float:
    """Finished Synthesize streams with status OK, from the replica's own metrics."""
    body = http_get(replica.metrics_url)
    return sample(body, "supertonic_requests_total", rpc="Synthesize", code="OK")


def committed_in_flight(replica: SpawnedServer) -> float:
    """Streams that have sent their first audio and not finished yet (retries cannot
    replay these: a failure of one would reach its client)."""
    body = http_get(replica.metrics_url)
    started = sample(body, "supertonic_time_to_first_audio_seconds_count", rpc="Synthesize")
    finished = sum(
        sample(body, "supertonic_requests_total", rpc="Synthesize", code=code)
        for code in re.findall(
            r'supertonic_requests_total\{code="(\w+)",rpc="Synthesize"', body.decode()
        )
    )
    return started - finished


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SpawnedServer]]:
    work = tmp_path_factory.mktemp("replicas")
    # Demo weights (no model files there), one flow step: the timings, not the audio, matter.
    args = [
        "--model-dir",
        str(work / "no-model"),
        "--default-steps",
        "1",
        "--grace-s",
        str(GRACE_S),
    ]
    # Behind nginx, as its shipped config says: no drain announce (nginx reads neither health
    # nor grpc-status, so a closed port is what makes it skip a draining replica).
    args += ["--drain-announce-s", "0"]
    servers = [SpawnedServer(args, work / f"replica-{i}.log", GRACE_S + 30) for i in range(2)]
    with contextlib.ExitStack() as stack:
        for server in servers:
            stack.enter_context(server)

        async def ready() -> None:
            await asyncio.gather(*(s.wait_ready(240) for s in servers))

        asyncio.run(ready())
        yield servers


def render_nginx_conf(upstreams: list[str], port: int) -> str:
    """The shipped config with these gRPC addresses in its upstream, listening on loopback."""
    lines, servers_done = [], False
    for line in NGINX_CONF.read_text().splitlines():
        if line.rstrip().endswith("# replica"):
            if not servers_done:
                lines += [f"    server {a} max_fails=1 fail_timeout=10s;" for a in upstreams]
                servers_done = True
            continue
        if line.rstrip().endswith("# listen"):
            line = f"    listen 127.0.0.1:{port} http2;"
        lines.append(line)
    assert servers_done and f"listen 127.0.0.1:{port}" in "\n".join(lines)
    return "\n".join(lines) + "\n"


def nginx_main_conf(work: Path, site: Path) -> str:
    temp = " ".join(
        f"{kind}_temp_path {work / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"worker_processes 1;\ndaemon off;\npid {work / 'nginx.pid'};\n"
        f"error_log {work / 'error.log'} warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{ access_log off; {temp} include {site}; }}\n"
    )


@dataclass
class Nginx:
    address: str
    daemon: Daemon


@contextlib.contextmanager
def run_nginx(upstreams: list[str], work: Path) -> Iterator[Nginx]:
    """nginx in the foreground on a free loopback port, proxying to `upstreams`."""
    binary = require_tool("nginx")
    port = free_port()
    site = work / "supertonic-grpc.conf"
    site.write_text(render_nginx_conf(upstreams, port))
    main = work / "nginx.conf"
    main.write_text(nginx_main_conf(work, site))
    check = subprocess.run(
        [binary, "-t", "-p", str(work), "-e", str(work / "error.log"), "-c", str(main)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert check.returncode == 0, check.stderr
    with Daemon(
        [binary, "-p", str(work), "-e", str(work / "error.log"), "-c", str(main)],
        work / "nginx.out",
    ) as daemon:
        wait_for(
            lambda: socket.create_connection(("127.0.0.1", port), 1).close() or True, 30, "nginx"
        )
        yield Nginx(f"127.0.0.1:{port}", daemon)


@pytest.fixture(scope="module")
def nginx(
    replicas: list[SpawnedServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Nginx]:
    with run_nginx([r.address for r in replicas], tmp_path_factory.mktemp("nginx")) as proxy:
        yield proxy


class _RefuseFirst(tts_pb2_grpc.TextToSpeechServicer):
    """Refuses the first `refuse` streams with UNAVAILABLE before any message, as a replica
    does while it warms up or drains; then streams one chunk and a summary."""

    def __init__(self, refuse: int, every_other: bool = False) -> None:
        self.refuse = refuse
        self.every_other = every_other  # refuse odd calls: half of round robin's, mid-drain
        self.calls = 0

    def Synthesize(
        self, request: tts_pb2.SynthesizeRequest, context: grpc.ServicerContext
    ) -> Iterator[tts_pb2.SynthesizeResponse]:
        self.calls += 1
        if self.calls <= self.refuse or (self.every_other and self.calls % 2):
            context.abort(grpc.StatusCode.UNAVAILABLE, "server is shutting down")
        chunk = tts_pb2.AudioChunk(
            audio=b"\0\0" * 441, encoding=tts_pb2.LINEAR16, sample_rate_hz=44100
        )
        yield tts_pb2.SynthesizeResponse(chunk=chunk)
        yield tts_pb2.SynthesizeResponse(summary=tts_pb2.SynthesizeSummary(chunks=1))


@contextlib.contextmanager
def refusing_upstream(refuse: int, every_other: bool = False) -> Iterator[tuple[_RefuseFirst, str]]:
    servicer = _RefuseFirst(refuse, every_other)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    tts_pb2_grpc.add_TextToSpeechServicer_to_server(servicer, server)
    upstream = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        yield servicer, upstream
    finally:
        server.stop(grace=None)


@pytest.fixture(scope="module")
def say() -> Path:
    """The Go client, built offline (clients/go/build.sh)."""
    require_tool("go", "go-tools")
    build = subprocess.run(
        [str(GO_DIR / "build.sh")], capture_output=True, text=True, timeout=600, check=False
    )
    assert build.returncode == 0, build.stderr
    return GO_DIR / "bin" / "say"


@pytest.mark.parametrize("service_config", [SERVICE_CONFIG, None], ids=["retry", "no-retry"])
def test_unavailable_at_stream_start_is_retried_through_nginx(
    service_config: str | None, tmp_path: Path
) -> None:
    with (
        refusing_upstream(refuse=2) as (servicer, upstream),
        run_nginx([upstream], tmp_path) as proxy,
        SupertonicClient(proxy.address, timeout=30, service_config=service_config) as tts,
    ):
        if service_config is None:
            with pytest.raises(SupertonicError) as refused:
                list(tts.stream("Hi."))
            assert refused.value.code is grpc.StatusCode.UNAVAILABLE
            assert servicer.calls == 1
        else:
            assert len(list(tts.stream("Hi."))) == 1
            assert servicer.calls == 3  # two refusals, retried, then served


@pytest.mark.parametrize("token_ratio", [None, 0.1], ids=["deploy-config", "ratio-0.1"])
def test_a_long_lived_client_keeps_retrying_through_a_drain_that_refuses_half(
    token_ratio: float | None,
) -> None:
    """One replica of two drains behind round robin: half of the streams' first attempts are
    refused and each retry succeeds. A client that keeps one channel (a voice agent's) shares
    gRPC's retry throttle across its streams: with a token ratio of 0.1 (-1 a failure, +0.1 a
    success) retries stop after ~55 such streams and the next refused one fails; the deploy
    config's ratio keeps them going."""
    config = json.loads(SERVICE_CONFIG)
    if token_ratio is not None:
        config["retryThrottling"]["tokenRatio"] = token_ratio
    failures = 0
    with (
        refusing_upstream(refuse=0, every_other=True) as (servicer, upstream),
        SupertonicClient(upstream, timeout=30, service_config=json.dumps(config)) as tts,
    ):
        for _ in range(80):
            try:
                list(tts.stream("Hi."))
            except SupertonicError as exc:
                assert exc.code is grpc.StatusCode.UNAVAILABLE
                failures += 1
                servicer.calls += 1  # keep the next stream's first attempt refused
    if token_ratio is None:
        assert failures == 0
    else:
        assert failures > 0  # the old ratio: throttled part-way


def test_go_client_retries_unavailable_through_nginx(say: Path, tmp_path: Path) -> None:
    config = tmp_path / "service_config.json"
    config.write_text(SERVICE_CONFIG)
    with (
        refusing_upstream(refuse=2) as (servicer, upstream),
        run_nginx([upstream], tmp_path) as proxy,
    ):
        argv = [str(say), "-addr", proxy.address, "-service-config", str(config)]
        argv += ["-text", "Hi.", "-o", str(tmp_path / "retry.wav")]
        # grpc-go before 1.40 (Debian's is 1.33) applies retry policies only when asked.
        env = {**os.environ, "GRPC_GO_RETRY": "on"}
        result = subprocess.run(
            argv, capture_output=True, text=True, timeout=60, check=False, env=env
        )
        assert result.returncode == 0, result.stderr
        assert servicer.calls == 3


def _streams(address: str, count: int, service_config: str | None = None) -> None:
    with SupertonicClient(address, timeout=120, service_config=service_config) as tts:
        for seed in range(count):
            stream = tts.stream(SHORT, steps=1, seed=seed)
            assert list(stream) and stream.summary is not None


def _spread(replicas: list[SpawnedServer], run: Callable[[], None]) -> list[float]:
    before = [synthesize_ok(r) for r in replicas]
    run()
    return [synthesize_ok(r) - b for r, b in zip(replicas, before, strict=True)]


def test_nginx_spreads_streams_over_both_replicas(
    replicas: list[SpawnedServer], nginx: Nginx
) -> None:
    counts = _spread(replicas, lambda: _streams(nginx.address, 6))
    assert sum(counts) == 6
    # nginx's round robin takes the replicas in turn, one stream each.
    assert counts == [3, 3], counts


def test_python_client_round_robin_over_several_addresses(replicas: list[SpawnedServer]) -> None:
    # "ipv4:a,b" is a name resolving to several addresses, like a headless Service's DNS name.
    target = "ipv4:" + ",".join(r.address for r in replicas)
    counts = _spread(replicas, lambda: _streams(target, 6, SERVICE_CONFIG))
    assert sum(counts) == 6
    assert min(counts) >= 2, counts


def test_go_client_round_robin_over_several_addresses(
    replicas: list[SpawnedServer], say: Path, tmp_path: Path
) -> None:
    config = tmp_path / "service_config.json"
    config.write_text(SERVICE_CONFIG)
    argv = [
        str(say),
        *("-addr", ",".join(r.address for r in replicas)),
        *("-service-config", str(config), "-repeat", "6", "-steps", "1"),
        *("-text", SHORT, "-o", str(tmp_path / "rr.wav")),
    ]

    def run() -> None:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
        assert result.returncode == 0, result.stderr

    counts = _spread(replicas, run)
    assert sum(counts) == 6
    assert min(counts) >= 2, counts
    assert (tmp_path / "rr.wav").stat().st_size > 44


def test_python_client_refuses_a_malformed_service_config() -> None:
    with pytest.raises(ValueError):
        SupertonicClient("127.0.0.1:1", service_config="{round_robin")


@dataclass
class StreamResult:
    started: float
    ended: float
    error: str | None


def _stream_once(address: str, text: str, options: dict[str, int]) -> StreamResult:
    with SupertonicClient(address, timeout=120, service_config=SERVICE_CONFIG) as tts:
        started, error = time.monotonic(), None
        try:
            stream = tts.stream(text, **options)
            if not list(stream) or stream.summary is None:
                error = "stream ended without audio or summary"
        except SupertonicError as exc:
            error = str(exc)
        return StreamResult(started, time.monotonic(), error)


def _load_until(address: str, stop: threading.Event, results: list[StreamResult]) -> None:
    """One client: streams back to back through `address` until `stop` is set."""
    while not stop.is_set():
        results.append(_stream_once(address, LONG, LONG_OPTIONS))


def test_sigterm_one_replica_mid_load_loses_no_stream(
    replicas: list[SpawnedServer], nginx: Nginx
) -> None:
    victim, survivor = replicas
    stop, results = threading.Event(), []
    clients = [
        threading.Thread(target=_load_until, args=(nginx.address, stop, results), daemon=True)
        for _ in range(3)
    ]
    for client in clients:
        client.start()
    try:
        # SIGTERM while the victim is part-way through a stream it has started sending.
        wait_for(lambda: committed_in_flight(victim) >= 1, 120, "a stream in flight on the victim")
        survivor_before = synthesize_ok(survivor)
        sigterm_at = time.monotonic()
        victim.proc.send_signal(signal.SIGTERM)
        # No announce, as the shipped config asks behind nginx: the victim closes its port at
        # once and finishes its streams; nginx's next stream to it fails to connect and goes
        # to the survivor (grpc_next_upstream) before the client sees anything. (With an
        # announce the victim refuses streams with UNAVAILABLE and only the client retries:
        # round robin does not steer a retry away from the victim, and a stream whose five
        # attempts all met it failed here about one run in four.)
        wait_for(
            lambda: sum(r.started > sigterm_at for r in results) >= 4, 180, "streams after SIGTERM"
        )
    finally:
        stop.set()
        for client in clients:
            client.join(180)
    assert victim.proc.wait(GRACE_S + 30) == 0, "the victim did not drain and exit cleanly"

    failed = [
        f"{r.error} (started {r.started - sigterm_at:+.2f} s from SIGTERM, took "
        f"{r.ended - r.started:.2f} s)"
        for r in results
        if r.error
    ]
    assert not failed, failed
    in_flight = [r for r in results if r.started < sigterm_at < r.ended]
    after = [r for r in results if r.started > sigterm_at]
    assert in_flight, "no stream was in flight at SIGTERM"
    # Every stream started after the signal was served by the survivor.
    assert synthesize_ok(survivor) - survivor_before >= len(after)
    assert nginx.daemon.alive()
