"""Chunks always fit the model's latent: slow speech is split further, never squeezed."""

from __future__ import annotations

import pytest
from planning import plan as planned

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_grpc.engine import DEMO_CHARS_PER_SECOND, MAX_POSITIONS
from supertonic_grpc.settings import Settings
from supertonic_grpc.validation import (
    default_first_chunk_chars,
    fitting_chunk_chars,
    join_pause_seconds,
)

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


def test_the_default_first_chunk_is_sized_in_speech_so_korean_starts_as_fast() -> None:
    text = (
        "다음 역은 시청역입니다. 내리실 문은 오른쪽입니다. "
        "일호선으로 갈아타실 분은 이번 역에서 내리시기 바랍니다."
    )
    korean = planned(tts_pb2.SynthesizeRequest(text=text, language="ko"))
    limit = default_first_chunk_chars("ko", Settings())
    assert limit == 30 and default_first_chunk_chars("en", Settings()) == 60
    first = korean.chunks[0]
    assert first.text.text == "다음 역은 시청역입니다. 내리실 문은 오른쪽입니다."  # two sentences
    # About as many tokens (model time) as an English first chunk of the default length,
    # where one as long in characters as the English one has twice as many.
    sentence = "The quick brown fox jumps over the lazy dog by the old mill."  # 60
    english = planned(tts_pb2.SynthesizeRequest(text=" ".join([sentence] * 3), language="en"))
    en_tokens = len(english.chunks[0].utterance.token_ids)
    assert len(english.chunks[0].text.text) == 60
    assert len(first.utterance.token_ids) <= 1.2 * en_tokens
    # A length the client asks for is used as it is.
    asked = tts_pb2.ChunkingConfig(first_chunk_chars=60)
    again = planned(tts_pb2.SynthesizeRequest(text=text, language="ko", chunking=asked))
    assert len(again.chunks[0].text.text) > limit
    assert len(again.chunks[0].utterance.token_ids) >= 1.8 * en_tokens
