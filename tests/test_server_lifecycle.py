"""The server as a process: start-up via the CLI, health, and a graceful SIGTERM drain."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from supertonic_client._proto.supertonic.v1 import tts_pb2, tts_pb2_grpc

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_serving(address: str, timeout: float = 180) -> None:
    channel = grpc.insecure_channel(address)
    stub = health_pb2_grpc.HealthStub(channel)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=2)
            if reply.status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"server at {address} never became SERVING")


def test_sigterm_during_a_stream_lets_it_finish_then_exits_zero(tmp_path) -> None:
    port = free_port()
    env = {**os.environ, "SUPERTONIC_MODEL_DIR": str(tmp_path / "no-model")}
    log_path = tmp_path / "server.log"
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "supertonic_grpc.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--metrics-port",
            "-1",
            "--default-steps",
            "2",
            "--grace-s",
            "60",
        ],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        address = f"127.0.0.1:{port}"
        wait_serving(address)
        stub = tts_pb2_grpc.TextToSpeechStub(grpc.insecure_channel(address))
        text = "First sentence here. " + " ".join(["Another sentence follows."] * 4)
        call = stub.Synthesize(
            tts_pb2.SynthesizeRequest(
                text=text, chunking=tts_pb2.ChunkingConfig(max_chunk_chars=30, first_chunk_chars=20)
            ),
            timeout=120,
        )
        first = next(call)
        assert first.HasField("chunk")
        proc.send_signal(signal.SIGTERM)
        rest = list(call)  # the stream in flight finishes after SIGTERM
        assert rest and rest[-1].HasField("summary")
        # A chunk may come as several pieces: count the chunks by index.
        indices = {first.chunk.index} | {m.chunk.index for m in rest if m.HasField("chunk")}
        assert rest[-1].summary.chunks == len(indices)
        assert proc.wait(timeout=60) == 0
        # New work is refused once draining started (the port is closed after exit).
        with pytest.raises(grpc.RpcError):
            stub.ListVoices(tts_pb2.ListVoicesRequest(), timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log_file.close()
    out = log_path.read_text()
    assert "DEMO MODE" in out  # demo mode says so loudly in the log
    assert "draining" in out
