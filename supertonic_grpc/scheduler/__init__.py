"""The scheduler: one thread that owns the engine and runs ticks over the chunks in flight.

`jobs` holds what flows in and out, `policy` the pure choice of each tick's admissions,
flow step and vocoded pieces, `core` the thread that runs them.
"""

from supertonic_grpc.scheduler.core import EngineShortfall, Scheduler, StepDecision
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
from supertonic_grpc.scheduler.policy import CostModel, Limits, Policy, Running, Urgency

__all__ = [
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
    "StepDecision",
    "Ticket",
    "Urgency",
]
