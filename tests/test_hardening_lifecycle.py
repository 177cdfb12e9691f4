"""Liveness that tells the truth, drains that answer, settings checked at start-up, and a
metrics port that cannot be pinned: a failed warm-up or a dead scheduler thread fails
`/healthz` and the process; a second SIGTERM exits at once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import test_settings
from grpc_health.v1 import health_pb2, health_pb2_grpc
from promtext import sample
from test_hardening_rpc import code_of, count, wait_until
from test_server_lifecycle import free_port, wait_serving

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc
from supertonic_grpc.engine import Engine
from supertonic_grpc.server import serve
from supertonic_grpc.settings import Settings, SettingsError, parse_settings

pytestmark = pytest.mark.slow


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


def health(address: str) -> int:
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
    return stub.Check(health_pb2.HealthCheckRequest(), timeout=10).status


def base_url(server) -> str:
    return f"http://127.0.0.1:{server.running.metrics_port}"


def broken_warmup(*_args, **_kwargs):
    raise RuntimeError("injected warm-up failure")


def test_a_failed_warm_up_fails_liveness_and_refuses_requests(make_server, monkeypatch) -> None:
    monkeypatch.setattr(Engine, "warmup", broken_warmup)
    server = make_server()
    assert server.running.failed.is_set()
    status, body = get(base_url(server) + "/healthz")
    assert status == 503 and "injected warm-up failure" in json.loads(body)["fatal"]
    assert health(server.address) == health_pb2.HealthCheckResponse.NOT_SERVING
    stub = tts_pb2_grpc.TextToSpeechStub(grpc.insecure_channel(server.address))
    with pytest.raises(grpc.RpcError) as exc:
        list(stub.Synthesize(tts_pb2.SynthesizeRequest(text="Anyone?"), timeout=10))
    assert exc.value.code() == grpc.StatusCode.UNAVAILABLE
    assert count(server, "Synthesize", "UNAVAILABLE") == 1


def test_a_failed_warm_up_makes_serve_exit_non_zero(shared_bundle, monkeypatch) -> None:
    monkeypatch.setattr(Engine, "warmup", broken_warmup)
    settings = test_settings(metrics_port=-1)
    assert asyncio.run(asyncio.wait_for(serve(settings, shared_bundle), 60)) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_scheduler_thread_fails_liveness(make_server) -> None:
    server = make_server()
    assert get(base_url(server) + "/healthz")[0] == 200

    def die(_engine):
        raise SystemExit  # not an Exception: it ends the thread, as a fatal bug would

    server.running.scheduler.call(die)
    assert wait_until(lambda: get(base_url(server) + "/healthz")[0] == 503, timeout=20)
    assert wait_until(server.running.failed.is_set, timeout=20)
    assert "scheduler thread died" in server.running.service.fatal


def test_metrics_port_answers_404_on_unknown_paths(live_server) -> None:
    base = base_url(live_server)
    for path in ("/readyzz", "/", "/metrics/extra", "/healthz/"):
        assert get(base + path)[0] == 404
    assert get(base + "/metrics")[0] == 200


def test_idle_connections_cannot_pin_more_than_the_metrics_threads(live_server) -> None:
    port = live_server.running.metrics_port
    httpd = live_server.running._http[0]
    before, refused = threading.active_count(), httpd.refused
    sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    try:
        # Each accepted connection has a thread until it times out; the rest are closed.
        assert wait_until(lambda: httpd.refused - refused >= 40 - 16, timeout=20)
        assert threading.active_count() - before <= 16
    finally:
        for s in sockets:
            s.close()
    assert wait_until(lambda: get(base_url(live_server) + "/metrics")[0] == 200, timeout=20)


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        (dict(write_timeout_s=0), "--write-timeout-s"),
        (dict(max_streams=0), "--max-streams"),
        (dict(max_reply_bytes=10), "--max-reply-bytes"),
        (dict(tls_cert="/nonexistent.pem", tls_key="/nonexistent.key"), "--tls-cert"),
        (dict(tls_key="key.pem"), "--tls-cert and --tls-key"),
        (dict(log_level="LOUD"), "--log-level"),
        (dict(drain_announce_s=-1), "--drain-announce-s"),
    ],
)
def test_bad_settings_are_refused_naming_the_flag(changes, flag) -> None:
    with pytest.raises(SettingsError) as exc:
        Settings(**changes).validate()
    assert str(exc.value).startswith(flag)


def test_flags_are_validated_when_parsed() -> None:
    with pytest.raises(SettingsError):
        parse_settings(["--max-queue", "-1"])


def _serve(tmp_path: Path, *extra: str, **env: str) -> subprocess.Popen[str]:
    port = free_port()
    args = [sys.executable, "-m", "supertonic_grpc.cli", "serve", "--host", "127.0.0.1"]
    args += ["--port", str(port), "--metrics-port", "-1", "--default-steps", "1", *extra]
    proc = subprocess.Popen(
        args,
        env={**os.environ, "SUPERTONIC_MODEL_DIR": str(tmp_path / "no-model"), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    proc.port = port  # type: ignore[attr-defined]
    return proc


def test_a_bad_default_voice_is_one_error_line_and_exit_code_2(tmp_path) -> None:
    proc = _serve(tmp_path, "--default-voice", "Nobody")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    errors = [line for line in out.splitlines() if "ERROR" in line or "Traceback" in line]
    assert len(errors) == 1 and "--default-voice" in errors[0], out


def _busy_stream(address: str, sentences: int) -> grpc.Call:
    """A stream of many one-step chunks, started and past its first message."""
    stub = tts_pb2_grpc.TextToSpeechStub(grpc.insecure_channel(address))
    text = " ".join(f"Sentence number {i} keeps the stream busy." for i in range(sentences))
    call = stub.Synthesize(tts_pb2.SynthesizeRequest(text=text, steps=1), timeout=300)
    assert next(call).HasField("chunk")
    return call


def _metric(body: bytes, name: str, **labels: str) -> float:
    try:
        return sample(body, name, **labels)
    except KeyError:
        return 0.0


def test_the_drain_announce_answers_not_serving_with_the_port_open(tmp_path) -> None:
    metrics_port = free_port()
    proc = _serve(
        tmp_path,
        *("--grace-s", "120", "--drain-announce-s", "600"),
        *("--metrics-port", str(metrics_port)),
    )
    base = f"http://127.0.0.1:{metrics_port}"
    try:
        address = f"127.0.0.1:{proc.port}"  # type: ignore[attr-defined]
        wait_serving(address)
        call = _busy_stream(address, 12)
        assert get(base + "/readyz")[0] == 200
        proc.send_signal(signal.SIGTERM)
        # The port stays open: every Check answers (SERVING until the signal lands), none
        # fails with UNAVAILABLE.
        assert wait_until(lambda: health(address) == health_pb2.HealthCheckResponse.NOT_SERVING)
        # Unread, the stream is held by flow control: it is still in flight now.
        assert _metric(get(base + "/metrics")[1], "supertonic_active_streams") == 1
        status, body = get(base + "/readyz")
        assert status == 503 and json.loads(body)["draining"] is True
        assert get(base + "/healthz")[0] == 200  # alive: no restart wanted
        fresh = tts_pb2_grpc.TextToSpeechStub(grpc.insecure_channel(address))
        with pytest.raises(grpc.RpcError) as refused:
            list(fresh.Synthesize(tts_pb2.SynthesizeRequest(text="Late."), timeout=10))
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "draining" in refused.value.details()
        with pytest.raises(grpc.RpcError) as refused:
            fresh.SynthesizeOnce(tts_pb2.SynthesizeRequest(text="Late."), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        # The stream in flight at the signal finishes with all its audio.
        rest = list(call)
        assert rest and rest[-1].HasField("summary") and rest[-1].summary.chunks > 1
        status, metrics = get(base + "/metrics")
        assert status == 200
        counted = {
            (rpc, code): _metric(metrics, "supertonic_requests_total", rpc=rpc, code=code)
            for rpc in ("Synthesize", "SynthesizeOnce")
            for code in ("OK", "UNAVAILABLE")
        }
        assert counted == {
            ("Synthesize", "OK"): 1,
            ("Synthesize", "UNAVAILABLE"): 1,
            ("SynthesizeOnce", "OK"): 0,
            ("SynthesizeOnce", "UNAVAILABLE"): 1,
        }
        assert _metric(metrics, "supertonic_rejected_total", reason="draining") == 2
        assert proc.poll() is None  # still announcing
        # A second signal ends the announce and the process at once.
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 1
        assert time.monotonic() - started < 20
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=10)[0]
    assert "NOT_SERVING for 600 s with the port open" in out


def test_after_the_announce_the_port_closes_and_a_second_sigterm_exits_at_once(tmp_path) -> None:
    proc = _serve(tmp_path, "--grace-s", "120", "--drain-announce-s", "1")
    try:
        address = f"127.0.0.1:{proc.port}"  # type: ignore[attr-defined]
        wait_serving(address)
        call = _busy_stream(address, 60)
        proc.send_signal(signal.SIGTERM)
        # After the announce the port is closed to new work (a proxy that does not watch
        # health moves it to another replica at connect), while the long stream goes on.
        fresh = health_pb2_grpc.HealthStub(grpc.insecure_channel(address))
        assert wait_until(
            lambda: (
                code_of(lambda: fresh.Check(health_pb2.HealthCheckRequest(), timeout=5))
                is grpc.StatusCode.UNAVAILABLE
            )
        )
        assert proc.poll() is None  # still draining the long stream
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 1
        assert time.monotonic() - started < 20
        with pytest.raises(grpc.RpcError):
            list(call)
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.communicate(timeout=10)[0]
    assert "second signal" in out


def test_a_device_that_fails_its_probe_fails_liveness(make_server, monkeypatch) -> None:
    from concurrent.futures import Future

    import torch

    from supertonic_grpc.server import _watchdog

    server = make_server()
    running = server.running

    def sticky_error(_fn):
        fut: Future[None] = Future()
        fut.set_exception(RuntimeError("CUDA error: an illegal memory access was encountered"))
        return fut

    monkeypatch.setattr(running.scheduler, "call", sticky_error)
    server.call(_watchdog(running, torch.device("cuda"), every_s=0.01, probe_s=0.01), timeout=30)
    assert running.failed.is_set() and "illegal memory access" in running.service.fatal
    assert get(base_url(server) + "/healthz")[0] == 503


def test_grpc_options_bound_connections() -> None:
    from supertonic_grpc.server import grpc_options

    options = dict(grpc_options(Settings()))
    assert options["grpc.keepalive_time_ms"] == 60_000
    assert options["grpc.max_connection_age_ms"] == 3_600_000
    assert options["grpc.max_send_message_length"] <= 4 * 1024 * 1024 + 64 * 1024
    assert "grpc.max_connection_age_ms" not in dict(grpc_options(Settings(max_connection_age_s=0)))
