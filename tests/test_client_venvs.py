"""The light client package in its own venvs (make client-venvs) against a live server:
the oldest and newest protobuf it supports, and each agent framework from PyPI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from waiting import wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CLIENT_TESTS = REPO / "clients" / "python" / "tests"


def _venv_python(name: str) -> Path:
    python = REPO / name / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing; `make client-venvs` makes it")
        pytest.skip(f"{name} is missing (run `make client-venvs`)")
    return python


def run_client_tests(venv: str, address: str, *tests: str) -> str:
    python = _venv_python(venv)
    env = {**os.environ, "SUPERTONIC_TEST_ADDRESS": address, "PYTHONPATH": ""}
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", *tests],
        cwd=CLIENT_TESTS,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout
    return result.stdout


@pytest.mark.parametrize(
    ("venv", "major"), [(".venv-client-old", "5.29."), (".venv-client-new", "7.")]
)
def test_light_client_under_oldest_and_newest_protobuf(live_server, venv, major) -> None:
    out = run_client_tests(venv, live_server.address, "test_light_client.py")
    assert f"protobuf {major}" in out


@pytest.mark.parametrize(
    ("venv", "tests"),
    [(".venv-pipecat", "test_pipecat.py"), (".venv-livekit", "test_livekit.py")],
    ids=["pipecat", "livekit"],
)
def test_agent_framework_plugin_with_the_real_framework(live_server, venv, tests) -> None:
    metrics = live_server.running.metrics
    before = metrics.barge_in_total._value.get()
    out = run_client_tests(venv, live_server.address, tests)
    assert "BARGE-IN-DONE" in out
    # The interruption cancelled the turn's call on the server. The client's process may
    # exit before the server's event loop has seen the cancel: wait for it, bounded.
    assert wait_until(lambda: metrics.barge_in_total._value.get() >= before + 1, timeout=15)
