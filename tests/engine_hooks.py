"""Hooks into a live server's engine and schedule, so tests order events by what the model
is doing (a step held on an event, a call counted) instead of by sleeps or speed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supertonic_grpc.scheduler import Scheduler

STAGES = ("admit", "step", "vocode")


class EngineCalls:
    """Wraps the engine's stage methods: records each call, and runs hooks on the scheduler
    thread before a stage runs: `hooks[(stage, n)]` once, at its n-th call; `before[stage]`
    at every call. `restore` unwraps."""

    def __init__(self, engine: object) -> None:
        self.engine = engine
        self.calls: list[str] = []
        self.hooks: dict[tuple[str, int], Callable[[], None]] = {}  # (stage, nth call)
        self.before: dict[str, Callable[[], None]] = {}
        self.real: dict[str, Callable[..., Any]] = {s: getattr(engine, s) for s in STAGES}
        for stage, real in self.real.items():
            setattr(engine, stage, self._wrap(stage, real))

    def _wrap(self, stage: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            n = self.calls.count(stage)
            self.calls.append(stage)
            for hook in (self.hooks.pop((stage, n), None), self.before.get(stage)):
                if hook is not None:
                    hook()
            return real(*args)

        return call

    def restore(self) -> None:
        for stage, real in self.real.items():
            setattr(self.engine, stage, real)


def tick_in_flight(scheduler: Scheduler) -> int:
    """The number the tick now running will be recorded under (call it from an engine hook)."""
    return scheduler.history[-1].tick + 1 if scheduler.history else 0


def no_work_after(scheduler: Scheduler, tick: int, request_id: int) -> bool:
    """No tick after `tick` admitted, stepped or vocoded any chunk of `request_id`."""
    return all(
        request_id not in {c[0] for c in (*d.admitted, *d.stepped, *d.vocoded)}
        for d in scheduler.history
        if d.tick > tick
    )
