"""Chunks always fit the model's latent: slow speech is split further, never squeezed."""

from __future__ import annotations

import pytest
from planning import plan as planned

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND, MAX_POSITIONS
from supertonic_grpc.validation import fitting_chunk_chars, join_pause_seconds

FRAME_SECONDS = 3072 / 44100


@pytest.mark.parametrize(
    ("language", "text"), [("en", "Word after word. " * 300), ("ko", "가나다라 " * 1000)]
)
def test_a_maximum_chunk_at_half_speed_fits_the_latent(language: str, text: str) -> None:
    req = tts_pb2.SynthesizeRequest(
        text=text[:5000],
        language=language,
        speed=0.5,
        chunking=tts_pb2.ChunkingConfig(max_chunk_chars=1000),
    )
    plan = planned(req)
    limit = fitting_chunk_chars(language, 0.5)
    assert limit < 1000
    assert all(len(c.text.text) <= limit for c in plan.chunks)
    # Even at the demo's speaking rate every chunk's latent is below the frame clamp.
    longest = max(len(c.text.text) for c in plan.chunks)
    assert longest / DEMO_CHARS_PER_SECOND / 0.5 / FRAME_SECONDS < MAX_POSITIONS


def test_chunk_joins_pause_like_a_speaker_by_how_the_previous_chunk_ends() -> None:
    assert join_pause_seconds("It ends here.", 1.0) == pytest.approx(0.3)
    assert join_pause_seconds('He said "stop!"', 1.0) == pytest.approx(0.3)
    assert join_pause_seconds("a clause,", 0.5) == pytest.approx(0.3)  # slower speech
    assert join_pause_seconds("cut at a word", 1.0) == 0.0
    req = tts_pb2.SynthesizeRequest(
        text="First sentence here. Then a clause, and more words after it.",
        chunking=tts_pb2.ChunkingConfig(max_chunk_chars=20, first_chunk_chars=20),
    )
    plan = planned(req)
    pauses = [c.utterance.lead_silence_s for c in plan.chunks]
    assert pauses[0] == 0.0  # nothing before the first audio
    assert pauses[1] == pytest.approx(0.3 / plan.speed)
