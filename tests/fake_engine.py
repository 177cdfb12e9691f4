"""A fake engine with the step API and a fake clock: exact schedules, no model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from supertonic_grpc.engine import EngineError, Flight, Utterance
from supertonic_grpc.scheduler import Job, Priority, Ticket
from supertonic_grpc.voices import demo_voice

VOICE = demo_voice("M1")
_EMPTY = torch.zeros(1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeEngine:
    """One latent frame per token, 10 samples per frame at 100 Hz (a frame is 0.1 s).

    Each call advances the fake clock: `step_fixed` plus `step_cost` per padded frame of a
    flow step, `vocode_cost` per vocoded frame, `admit_cost` per call. `fail` names a stage
    whose `fail_on`-th call raises; `short` names a stage that returns one result too few.
    """

    sample_rate = 100
    frame_samples = 10

    def __init__(
        self,
        clock: FakeClock | None = None,
        *,
        step_cost: float = 0.0,
        step_fixed: float = 0.0,
        vocode_cost: float = 0.0,
        admit_cost: float = 0.0,
        fail: str = "",
        fail_on: int = 0,
        short: str = "",
    ) -> None:
        self.clock = clock
        self.step_cost, self.vocode_cost, self.admit_cost = step_cost, vocode_cost, admit_cost
        self.step_fixed = step_fixed
        self.fail, self.fail_on, self.short = fail, fail_on, short
        self.calls: dict[str, int] = {"admit": 0, "step": 0, "vocode": 0}
        self.steps: list[list[Flight]] = []
        self.during_step: Callable[[], None] | None = None  # runs once, mid-step

    def _tick(self, stage: str, cost: float) -> None:
        if self.clock is not None:
            self.clock.now += cost
        n = self.calls[stage]
        self.calls[stage] += 1
        if self.fail == stage and n == self.fail_on:
            raise EngineError(f"boom in {stage}")

    def admit(self, items: Sequence[Utterance]) -> list[Flight]:
        self._tick("admit", self.admit_cost)
        out = [
            Flight(u, len(u.token_ids), len(u.token_ids) * 10, _EMPTY, _EMPTY, _EMPTY)
            for u in items
        ]
        return out[:-1] if self.short == "admit" else out

    def step(self, flights: Sequence[Flight]) -> None:
        padded = len(flights) * max(f.frames for f in flights)
        if self.during_step is not None:
            hook, self.during_step = self.during_step, None
            hook()
        self._tick("step", self.step_fixed + self.step_cost * padded)
        self.steps.append(list(flights))
        for f in flights[:-1] if self.short == "step" else flights:
            f.step += 1

    def vocode(self, pieces: Sequence[tuple[Flight, int]]) -> list[np.ndarray]:
        self._tick("vocode", self.vocode_cost * sum(n for _, n in pieces))
        out = []
        for f, n in pieces:
            end = min(f.frames, f.vocoded_frames + n)
            out.append(np.full((end - f.vocoded_frames) * 10, f.utterance.seed, np.float32))
            f.vocoded_frames = end
        return out[:-1] if self.short == "vocode" else out


def job(
    ticket: Ticket,
    priority: Priority,
    deadline: float,
    outcomes: list,
    *,
    tokens: int = 5,
    steps: int = 2,
    index: int = 0,
    pieces: bool = True,
) -> Job:
    return Job(
        utterance=Utterance([1] * tokens, VOICE, steps=steps, seed=ticket.request_id),
        priority=priority,
        deadline=deadline,
        ticket=ticket,
        on_done=outcomes.append,
        index=index,
        pieces=pieces,
    )
