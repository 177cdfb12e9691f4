"""The scheduler: one thread that owns the engine and runs ticks over the chunks in flight.

`jobs` holds what flows in and out, `policy` the pure choice of each tick's admissions,
flow step and vocoded pieces, `stages` runs them on the engine and delivers the results,
`core` is the thread, its locked inbox and the record of every tick.
"""

from supertonic_grpc.scheduler.core import Scheduler
from supertonic_grpc.scheduler.cost import Affine, CostModel
from supertonic_grpc.scheduler.decision import StepDecision
from supertonic_grpc.scheduler.jobs import (
    EngineLike,
    Job,
    JobResult,
    MetricsLike,
    Priority,
    QueueFull,
    SchedulerStopped,
    Ticket,
)
from supertonic_grpc.scheduler.policy import Limits, Policy, Running, Urgency
from supertonic_grpc.scheduler.stages import EngineShortfall, Stages
from supertonic_grpc.scheduler.trace import TickTrace

__all__ = [
    "Affine",
    "CostModel",
    "EngineLike",
    "EngineShortfall",
    "Job",
    "JobResult",
    "Limits",
    "MetricsLike",
    "Policy",
    "Priority",
    "QueueFull",
    "Running",
    "Scheduler",
    "SchedulerStopped",
    "Stages",
    "StepDecision",
    "TickTrace",
    "Ticket",
    "Urgency",
]
