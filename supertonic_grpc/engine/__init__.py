"""The engine: batched forward passes over many utterances, in units a scheduler interleaves.

`core` holds the `Engine` (padding, masks, row buckets, the step API and `synthesize`),
`utterance` what it works on (an utterance, its limits, its flight, its audio), `device`
the device, its health and the CPU threads, `serving` the engine a server's settings ask for
and its warm-up. It knows nothing of queues or gRPC.
"""

from supertonic_grpc.engine.core import DEFAULT_GPU_ROW_BUCKETS, DEMO_CHARS_PER_SECOND, Engine
from supertonic_grpc.engine.device import pick_device, reserve_cpu_threads
from supertonic_grpc.engine.utterance import (
    DEFAULT_SPEED,
    DEFAULT_STEPS,
    MAX_POSITIONS,
    MAX_SPEED,
    MAX_STEPS,
    MIN_SPEED,
    MIN_STEPS,
    TAG_TOKENS,
    BatchStats,
    EngineError,
    Flight,
    InvalidUtterance,
    Synthesized,
    Utterance,
)

__all__ = [
    "DEFAULT_GPU_ROW_BUCKETS",
    "DEFAULT_SPEED",
    "DEFAULT_STEPS",
    "DEMO_CHARS_PER_SECOND",
    "MAX_POSITIONS",
    "MAX_SPEED",
    "MAX_STEPS",
    "MIN_SPEED",
    "MIN_STEPS",
    "TAG_TOKENS",
    "BatchStats",
    "Engine",
    "EngineError",
    "Flight",
    "InvalidUtterance",
    "Synthesized",
    "Utterance",
    "pick_device",
    "reserve_cpu_threads",
]
