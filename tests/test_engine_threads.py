"""The model runs on the scheduler thread with all the intra-op threads, and the thread
that loaded it keeps one (two OpenMP teams on the same cores halve the model's speed)."""

from __future__ import annotations

import subprocess
import sys
import threading

from supertonic_grpc.scheduler import Scheduler
from tests.fake_engine import FakeEngine

SCRIPT = """
import threading, torch
from supertonic_grpc.engine import Engine, reserve_cpu_threads
torch.set_num_threads(3)
reserved = reserve_cpu_threads()
main_after = torch.get_num_threads()
engine = Engine.__new__(Engine)
engine.cpu_threads = reserved
seen = []
def model_thread():
    engine.bind_thread()
    seen.append(torch.get_num_threads())
t = threading.Thread(target=model_thread)
t.start()
t.join()
print(reserved, main_after, seen[0], torch.get_num_threads())
"""


def test_the_main_thread_keeps_one_thread_and_the_model_thread_gets_the_rest() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    assert out == ["3", "1", "3", "1"]


def test_the_scheduler_binds_the_engine_to_its_own_thread_before_any_model_call() -> None:
    engine = FakeEngine()
    bound: list[str] = []
    ready = threading.Event()

    def bind_thread() -> None:
        bound.append(threading.current_thread().name)
        ready.set()

    engine.bind_thread = bind_thread  # type: ignore[attr-defined]
    scheduler = Scheduler(engine)
    scheduler.start()
    try:
        assert ready.wait(10)
    finally:
        scheduler.stop()
    assert bound == ["scheduler"]
