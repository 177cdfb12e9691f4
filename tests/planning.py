"""Plans of requests on the demo bundle, made as the service makes them (`plan_request`).

Import it as `from planning import plan` (pytest puts `tests/` on `sys.path`).
"""

from __future__ import annotations

import functools

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_grpc.bundle import ModelBundle, demo_bundle
from supertonic_grpc.settings import Settings
from supertonic_grpc.validation import Plan, plan_request


@functools.cache
def demo() -> ModelBundle:
    """One demo bundle for every test that plans (building one takes seconds)."""
    return demo_bundle()


def plan(req: tts_pb2.SynthesizeRequest, *, streaming: bool = True) -> Plan:
    """`req` validated and chunked with default settings against the demo bundle."""
    bundle = demo()
    return plan_request(
        req,
        settings=Settings(),
        voices=bundle.voices,
        tokenizer=bundle.tokenizer,
        native_rate=bundle.config.sample_rate,
        streaming=streaming,
    )
