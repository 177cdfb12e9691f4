"""The Python client against a live in-process server (the `live_server` fixture, demo weights)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import numpy as np
import pytest

from supertonic_client.client import (
    AsyncSupertonicClient,
    Chunk,
    Encoding,
    SupertonicClient,
    SupertonicError,
)

pytestmark = pytest.mark.slow

# Small chunk limits so a short text still makes several chunks.
SMALL_CHUNKS: dict[str, Any] = {"max_chunk_chars": 60, "first_chunk_chars": 40}
TEXT = (
    "Streaming speech arrives in pieces. Each piece is a sentence or a clause. "
    "The client decodes every piece as it comes, and the totals must add up."
)


@pytest.fixture
def client(live_server: Any) -> Any:
    with SupertonicClient(live_server.address, timeout=120) as c:
        yield c


def _check_offsets(chunks: list[Chunk], rate: int) -> None:
    offset = 0.0
    assert [c.index for c in chunks] == sorted(c.index for c in chunks)
    for chunk in chunks:
        assert chunk.sample_rate_hz == rate
        assert chunk.text == TEXT[chunk.text_start : chunk.text_end]
        assert chunk.audio_offset_seconds == pytest.approx(offset, abs=1e-6)
        assert len(chunk.audio) == pytest.approx(chunk.duration_seconds * rate, abs=1)
        offset += chunk.duration_seconds


def test_stream_chunks_add_up_to_summary(client: SupertonicClient) -> None:
    stream = client.stream(TEXT, voice="F2", steps=1, seed=11, **SMALL_CHUNKS)
    chunks = list(stream)
    assert len(chunks) >= 3
    summary = stream.summary
    assert summary is not None
    assert client.last_summary == summary
    assert summary.chunks == len({c.index for c in chunks})  # a chunk may come in pieces
    assert [c.piece for c in chunks if c.index == 0][:2] == [0, 1]
    assert sum(c.last_piece for c in chunks) == summary.chunks
    assert summary.voice == "F2"
    assert summary.language == "en"
    assert summary.seed == 11
    assert summary.model_state == "demo"
    rate = summary.sample_rate_hz
    assert rate == 44100
    _check_offsets(chunks, rate)
    total = sum(len(c.audio) for c in chunks)
    assert total == pytest.approx(summary.audio_seconds * rate, abs=len(chunks))
    assert all(c.audio.dtype == np.float32 for c in chunks)
    assert all(c.timings.batch_size >= 1 for c in chunks)


def test_stream_other_encoding_and_rate(client: SupertonicClient) -> None:
    stream = client.stream(
        "Telephone quality. Eight bits.", encoding=Encoding.MULAW, sample_rate_hz=8000, steps=1
    )
    chunks = list(stream)
    assert stream.summary is not None
    assert stream.summary.encoding is Encoding.MULAW
    for chunk in chunks:
        assert chunk.encoding is Encoding.MULAW
        assert chunk.sample_rate_hz == 8000
        assert len(chunk.data) == len(chunk.audio)  # one byte per mu-law sample


def test_synthesize_whole_clip(client: SupertonicClient) -> None:
    clip = client.synthesize(TEXT, voice="M3", steps=1, encoding=Encoding.WAV, **SMALL_CHUNKS)
    assert clip.encoding is Encoding.WAV
    assert clip.data[:4] == b"RIFF"
    assert len(clip.chunks) == clip.summary.chunks >= 3
    assert len(clip.audio) == pytest.approx(
        clip.summary.audio_seconds * clip.sample_rate_hz, abs=len(clip.chunks)
    )


def test_voices(client: SupertonicClient) -> None:
    listing = client.voices()
    assert len(listing.voices) == 10
    assert {v.name for v in listing.voices} == {f"{g}{i}" for g in "MF" for i in range(1, 6)}
    assert listing.model_state in {"demo", "real"}
    assert listing.default_voice in {v.name for v in listing.voices}
    assert "en" in listing.languages
    assert all(v.gender in {"male", "female"} for v in listing.voices)


@pytest.mark.parametrize(
    ("text", "options", "field"),
    [("", {}, "text"), ("Hello.", {"voice": "Z9"}, "voice"), ("Hi.", {"speed": 3.0}, "speed")],
)
def test_invalid_request_is_invalid_argument(
    client: SupertonicClient, text: str, options: dict[str, Any], field: str
) -> None:
    with pytest.raises(SupertonicError) as streamed:
        list(client.stream(text, **options))
    assert streamed.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in streamed.value.message
    with pytest.raises(SupertonicError) as once:
        client.synthesize(text, **options)
    assert once.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert field in once.value.message


def test_short_deadline_is_deadline_exceeded(client: SupertonicClient) -> None:
    with pytest.raises(SupertonicError) as info:
        list(client.stream(TEXT * 3, steps=5, timeout=0.05))
    assert info.value.code is grpc.StatusCode.DEADLINE_EXCEEDED


def test_async_client(live_server: Any) -> None:
    async def run() -> tuple[list[Chunk], Any, int]:
        async with AsyncSupertonicClient(live_server.address, timeout=120) as tts:
            stream = tts.stream(TEXT, voice="M5", steps=1, **SMALL_CHUNKS)
            chunks = [c async for c in stream]
            listing = await tts.voices()
            with pytest.raises(SupertonicError) as bad:
                await tts.synthesize("Hello.", language="xx")
            assert bad.value.code is grpc.StatusCode.INVALID_ARGUMENT
            assert "language" in bad.value.message
            return chunks, stream.summary, len(listing.voices)

    chunks, summary, voices = asyncio.run(run())
    assert voices == 10
    assert summary is not None and summary.chunks == len({c.index for c in chunks}) >= 3
    total = sum(len(c.audio) for c in chunks)
    assert total == pytest.approx(summary.audio_seconds * summary.sample_rate_hz, abs=len(chunks))
