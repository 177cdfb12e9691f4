"""Chunks always fit the model's latent: slow speech is split further, never squeezed."""

from __future__ import annotations

import pytest

from supertonic_grpc._proto.supertonic.v1 import tts_pb2
from supertonic_grpc.bundle import demo_bundle
from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND, MAX_POSITIONS
from supertonic_grpc.settings import Settings
from supertonic_grpc.validation import fitting_chunk_chars, plan_request

FRAME_SECONDS = 3072 / 44100


@pytest.mark.parametrize(
    ("language", "text"), [("en", "Word after word. " * 300), ("ko", "가나다라 " * 1000)]
)
def test_a_maximum_chunk_at_half_speed_fits_the_latent(language: str, text: str) -> None:
    bundle = demo_bundle()
    req = tts_pb2.SynthesizeRequest(
        text=text[:5000],
        language=language,
        speed=0.5,
        chunking=tts_pb2.ChunkingConfig(max_chunk_chars=1000),
    )
    plan = plan_request(
        req, settings=Settings(), voices=bundle.voices, tokenizer=bundle.tokenizer, streaming=True
    )
    limit = fitting_chunk_chars(language, 0.5)
    assert limit < 1000
    assert all(len(c.text.text) <= limit for c in plan.chunks)
    # Even at the demo's speaking rate every chunk's latent is below the frame clamp.
    longest = max(len(c.text.text) for c in plan.chunks)
    assert longest / DEMO_CHARS_PER_SECOND / 0.5 / FRAME_SECONDS < MAX_POSITIONS
