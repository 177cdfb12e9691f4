"""What flows into and out of the scheduler: jobs, tickets, results, errors, protocols."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np

from supertonic_grpc.engine import Flight, Synthesized, Utterance
from supertonic_grpc.playback import PlaybackClock


class Priority(enum.IntEnum):
    HIGH = 0  # a request's first chunk: someone is waiting in silence
    NORMAL = 1  # later chunks, ordered by playback deadline


class QueueFull(Exception):
    """The queue is at capacity; `retry_after_s` estimates when it will have room."""

    def __init__(self, queued: int, capacity: int, retry_after_s: float) -> None:
        super().__init__(f"{queued} chunks queued (capacity {capacity})")
        self.retry_after_s = retry_after_s


class SchedulerStopped(Exception):
    """The scheduler is not running (shutting down)."""


class EngineLike(Protocol):
    """The engine's step API (see `engine.Engine`)."""

    def admit(self, items: Sequence[Utterance]) -> list[Flight]: ...

    def step(self, flights: Sequence[Flight]) -> None: ...

    def vocode(self, pieces: Sequence[tuple[Flight, int]]) -> list[np.ndarray]: ...


class GaugeLike(Protocol):
    def set(self, value: float) -> None: ...


class HistogramLike(Protocol):
    def observe(self, amount: float) -> None: ...


class CounterLike(Protocol):
    def inc(self, amount: float = 1) -> None: ...


_M_co = TypeVar("_M_co", covariant=True)


class Labelled(Protocol[_M_co]):
    """A metric family with labels (a prometheus_client metric declared with label names)."""

    def labels(self, *values: str) -> _M_co: ...


class MetricsLike(Protocol):
    """The subset of `metrics.Metrics` the scheduler feeds (a prometheus_client metric, or
    any object with the same methods). Read-only members, so any subtype fits."""

    @property
    def queue_depth(self) -> Labelled[GaugeLike]: ...  # by priority
    @property
    def queue_wait_seconds(self) -> Labelled[HistogramLike]: ...  # by priority
    @property
    def compute_seconds(self) -> Labelled[HistogramLike]: ...  # by priority
    @property
    def chunks_total(self) -> Labelled[CounterLike]: ...  # by priority
    @property
    def batch_compute_seconds(self) -> HistogramLike: ...
    @property
    def batch_size(self) -> HistogramLike: ...
    @property
    def audio_seconds_total(self) -> CounterLike: ...
    @property
    def running_chunks(self) -> GaugeLike: ...


@dataclass(eq=False)
class Ticket:
    """One request's handle: cancelling it drops its queued and running chunks.

    `work` is the model work done for the request so far, in frame-steps (latent frames x
    flow steps, plus frames vocoded): what fair share is counted in. `playback` models the
    listener from the times pieces were handed over, for the deadlines of later chunks.
    """

    request_id: int
    cancelled: bool = False
    work: float = 0.0
    playback: PlaybackClock = field(default_factory=PlaybackClock, repr=False)


@dataclass(frozen=True)
class JobResult:
    """One piece of a chunk's audio (the whole chunk when the job did not ask for pieces).

    `ready` is when the scheduler handed it over (the scheduler's clock): a consumer that
    writes it later was held up downstream, not by the model.
    """

    synthesized: Synthesized
    queue_s: float  # submit -> admission
    compute_s: float  # admission -> this piece
    batch_size: int  # the largest step this chunk shared
    piece: int = 0
    last_piece: bool = True
    ready: float = 0.0
    chunk_seconds: float = 0.0  # the whole chunk's predicted duration


@dataclass(eq=False)
class Job:
    """One chunk to synthesize. `on_done` gets JobResults (one per piece when `pieces`,
    else one for the whole chunk) or one exception, on the scheduler thread: it must be
    quick and must not raise."""

    utterance: Utterance
    priority: Priority
    deadline: float  # when its listener runs out of audio without it
    ticket: Ticket
    on_done: Callable[[JobResult | BaseException], None]
    index: int = 0  # the chunk's index in its request (for decisions and logs)
    pieces: bool = False
    submitted: float = 0.0
    seq: int = 0
