"""Helpers for the deploy/ tests: Debian tools, bounded polling, small HTTP calls."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
T = TypeVar("T")


def require_tool(name: str, make_target: str = "ops-tools") -> str:
    """The path of a command-line tool; a missing tool fails under CI and skips elsewhere."""
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} not found but CI is set; run `make {make_target}`")
        pytest.skip(f"{name} not installed (run `make {make_target}`)")
    return path


def wait_for(probe: Callable[[], T | None], timeout_s: float, what: str, every_s: float = 0.2) -> T:
    """Poll `probe` until it returns something other than None (or False); bounded."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
        except Exception as exc:  # the thing polled is not up yet
            last_error = exc
        else:
            if value is not None and value is not False:
                return value
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what} ({last_error!r})")


def http_get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as reply:
        return reply.read()


def prom_api(base_url: str, path: str, **params: str) -> Any:
    """GET a Prometheus HTTP API endpoint; returns `data` of a "success" reply."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    body = json.loads(http_get(f"{base_url}/api/v1/{path}{query}"))
    assert body.get("status") == "success", body
    return body["data"]


class Daemon:
    """A helper process (Prometheus, nginx) logging to a file; stopped with SIGTERM, then
    SIGKILL, on `stop()` or at the end of a `with` block."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        with self.log_path.open("wb") as log_file:
            self.proc = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
