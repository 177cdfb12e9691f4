"""Waiting for a state, not for a time: tests order events by conditions, never by sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; its last value, as bool.

    The timeout only bounds a broken run: a passing run returns as soon as the state holds,
    whatever the machine's speed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
