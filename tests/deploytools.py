"""Helpers for the deploy/ tests: Debian tools, bounded polling, small HTTP calls."""

from __future__ import annotations

import json
import os
import shutil
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
        return reply.read()  # type: ignore[no-any-return]


def prom_api(base_url: str, path: str, **params: str) -> Any:
    """GET a Prometheus HTTP API endpoint; returns `data` of a "success" reply."""
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    body = json.loads(http_get(f"{base_url}/api/v1/{path}{query}"))
    assert body.get("status") == "success", body
    return body["data"]
