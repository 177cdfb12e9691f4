"""Hooks into a live server's engine and schedule, so tests order events by what the model
is doing (a step held on an event, a call counted) instead of by sleeps or speed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from supertonic_grpc.scheduler import Scheduler, Ticket

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


class CancelWatch:
    """Wraps `scheduler.cancel`: for each request the server cancels, the number of the last
    tick recorded at that moment. Ticks numbered above it + 1 (the one that may have been in
    flight) all started after the cancel."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.last_tick: dict[int, int] = {}
        self.tickets: dict[int, Ticket] = {}
        real = scheduler.cancel

        def cancel(ticket: Ticket) -> int:
            last = scheduler.history[-1].tick if scheduler.history else -1
            self.last_tick.setdefault(ticket.request_id, last)
            self.tickets[ticket.request_id] = ticket
            return real(ticket)

        scheduler.cancel = cancel  # type: ignore[method-assign]

    def first_tick_after(self, request_id: int) -> int:
        """The first tick that surely started after the request was cancelled."""
        return self.last_tick[request_id] + 2


def gone(scheduler: Scheduler, ticket: Ticket) -> bool:
    """Whether no chunk of `ticket` is left in the scheduler (queued, being admitted or
    running). Read on the scheduler thread between two ticks, so no tick is half done."""
    left = scheduler.call(lambda _engine: scheduler.queued_for(ticket)).result(30)
    return left == 0


def no_work_from(scheduler: Scheduler, tick: int, request_id: int) -> bool:
    """No tick from `tick` on admitted, stepped or vocoded any chunk of `request_id`."""
    return all(
        request_id not in {c[0] for c in (*d.admitted, *d.stepped, *d.vocoded)}
        for d in scheduler.history
        if d.tick >= tick
    )
