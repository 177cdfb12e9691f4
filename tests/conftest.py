"""Shared fixtures: a real server (full-size model, demo weights, CPU) on a free port.

The server runs in-process on its own event loop thread, so tests can both call it over
the network (grpc, grpcurl, Go) and look inside (scheduler history, metrics).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import torch

from supertonic_grpc.bundle import ModelBundle, demo_bundle
from supertonic_grpc.server import RunningServer, start_server
from supertonic_grpc.settings import Settings

T = TypeVar("T")

# Two CPU threads for the model leaves the event loop room on a 2-core CI machine.
torch.set_num_threads(2)


@dataclass
class LiveServer:
    """A started server: its address plus handles into its internals."""

    running: RunningServer
    loop: asyncio.AbstractEventLoop

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.running.metrics_port}/metrics"

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 120) -> T:
        """Run a coroutine on the server's event loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


class ServerThread:
    """An asyncio loop on a daemon thread that owns one RunningServer."""

    def __init__(self, settings: Settings, bundle: ModelBundle) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        fut: Future[RunningServer] = asyncio.run_coroutine_threadsafe(
            self._start(settings, bundle), self.loop
        )
        self.running = fut.result(300)

    async def _start(self, settings: Settings, bundle: ModelBundle) -> RunningServer:
        running = await start_server(settings, bundle)
        await running.wait_ready()
        return running

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(1.0), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_settings(**changes: Any) -> Settings:
    """Settings for a test server: loopback, free ports, short default quality."""
    base = Settings(host="127.0.0.1", port=0, metrics_port=0, default_steps=2, max_batch=8)
    return base.replace(**changes)


test_settings.__test__ = False  # type: ignore[attr-defined]  # not a test function


@pytest.fixture(scope="session")
def shared_bundle() -> ModelBundle:
    """The full-size demo bundle (built once: ~1 s and 260 MB)."""
    return demo_bundle()


@pytest.fixture(scope="session")
def live_server(shared_bundle: ModelBundle) -> Iterator[LiveServer]:
    """One real server for the whole session, on a free port."""
    st = ServerThread(test_settings(), shared_bundle)
    try:
        yield LiveServer(st.running, st.loop)
    finally:
        st.close()


@pytest.fixture
def make_server(shared_bundle: ModelBundle) -> Iterator[Callable[..., LiveServer]]:
    """Factory for a dedicated server with custom settings, stopped after the test."""
    started: list[ServerThread] = []

    def make(**changes: Any) -> LiveServer:
        st = ServerThread(test_settings(**changes), shared_bundle)
        started.append(st)
        return LiveServer(st.running, st.loop)

    yield make
    for st in started:
        st.close()
