"""What one tick of the scheduler did, as data: tests assert exact schedules on it, and
`--trace-ticks` writes it out."""

from __future__ import annotations

from dataclasses import dataclass

from supertonic_grpc.scheduler.jobs import Priority


@dataclass(frozen=True)
class StepDecision:
    """What one tick did. Chunks are named (request_id, chunk index)."""

    tick: int
    started: float
    admitted: tuple[tuple[int, int], ...]
    stepped: tuple[tuple[int, int, int], ...]  # (request, chunk, step index it ran)
    vocoded: tuple[tuple[int, int, int], ...]  # (request, chunk, piece)
    urgent: int  # later chunks in the step because their listener is about to run dry
    dropped: int  # cancelled chunks removed at this tick, queued or running
    waiting_after: int
    running_after: int
    compute_s: float = 0.0
    error: str = ""
    admitted_priorities: tuple[Priority, ...] = ()  # of `admitted`, in order
    queue_waits: tuple[float, ...] = ()  # of `admitted`: submit -> this tick's start
    # Seconds of admission, of the flow step (with first pieces decoded right after it), and
    # of the rest of the vocoding.
    stage_s: tuple[float, float, float] = (0.0, 0.0, 0.0)
    first_pieces: tuple[tuple[int, float], ...] = ()  # (request, when) of first audio handed over

    @property
    def request_ids(self) -> tuple[int, ...]:
        """The requests in this tick's flow step, in batch order."""
        return tuple(s[0] for s in self.stepped)
