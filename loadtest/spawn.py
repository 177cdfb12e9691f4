"""``--spawn``: run the server as a child process on free loopback ports for one load test."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import grpc

from loadtest.runner import probe


class SpawnError(RuntimeError):
    """The spawned server failed to start or to become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


class SpawnedServer:
    """``python -m supertonic_grpc.cli serve`` on 127.0.0.1, logging to ``log_path``.

    Use as a context manager: it is started on entry and sent SIGTERM (then SIGKILL if it
    does not drain in time) on exit.
    """

    def __init__(self, extra_args: list[str], log_path: Path, stop_timeout_s: float = 30.0):
        self.port = free_port()
        self.metrics_port = free_port()
        self.log_path = log_path
        self.stop_timeout_s = stop_timeout_s
        self.argv = [
            sys.executable, "-m", "supertonic_grpc.cli", "serve",
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--metrics-port", str(self.metrics_port),
            *extra_args,
        ]  # fmt: skip
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        """The gRPC target."""
        return f"127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        """The server's Prometheus endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def __enter__(self) -> SpawnedServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log_file:
            # The child keeps its own copy of the file descriptor.
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                env=env,
            )  # fmt: skip
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def wait_ready(self, timeout_s: float) -> None:
        """Wait until the health check says SERVING; raise SpawnError on exit or timeout."""
        deadline = time.monotonic() + timeout_s
        async with grpc.aio.insecure_channel(self.address) as channel:
            status = "not reachable"
            while time.monotonic() < deadline:
                code = self.proc.poll() if self.proc else None
                if code is not None:
                    raise SpawnError(
                        f"spawned server exited with code {code} before it was ready "
                        f"(log {self.log_path}: {_last_line(self.log_path)!r})"
                    )
                try:
                    status = await probe(channel, timeout_s=2.0)
                except grpc.aio.AioRpcError:
                    status = "not reachable"
                if status == "SERVING":
                    return
                await asyncio.sleep(0.5)
        raise SpawnError(
            f"spawned server not SERVING after {timeout_s:g} s (last status {status}; "
            f"log {self.log_path})"
        )

    def stop(self) -> int | None:
        """SIGTERM, wait for the drain, SIGKILL as a last resort; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
