"""The client under whichever protobuf/grpcio this venv holds: no torch, no server code."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import google.protobuf
import numpy as np
import pytest

from supertonic_client import AsyncSupertonicClient, SupertonicClient, SupertonicError

REPLY = "Hello there, nice to meet you. This is a streamed reply! It ends here"


def test_installs_without_the_server_or_torch() -> None:
    # Installing the client pulled neither torch nor the server package into this venv.
    assert importlib.util.find_spec("torch") is None
    assert importlib.util.find_spec("supertonic_grpc") is None
    assert "torch" not in sys.modules
    print("protobuf", google.protobuf.__version__)


def test_stream_with_word_timings(address: str) -> None:
    with SupertonicClient(address, timeout=120) as tts:
        chunks = list(tts.stream("Two words. And three more.", steps=2, word_timings=True))
    assert [w.word for c in chunks for w in c.words] == ["Two", "words", "And", "three", "more"]
    assert all(c.audio.dtype == np.float32 and c.audio.size for c in chunks)


def test_streaming_session_sync(address: str) -> None:
    with SupertonicClient(address, timeout=120) as tts:
        speech = tts.streaming(steps=2, word_timings=True, sample_rate_hz=16000)
        for i in range(0, len(REPLY), 3):
            speech.send(REPLY[i : i + 3])
        speech.close()
        chunks = list(speech)
    assert "".join(c.text for c in chunks).replace(" ", "") == REPLY.replace(" ", "")
    assert all(REPLY[c.text_start : c.text_end] == c.text for c in chunks)
    assert all(c.sample_rate_hz == 16000 for c in chunks)
    assert speech.summary is not None and speech.summary.chunks == len(chunks)


def test_streaming_session_async_reads_while_writing(address: str) -> None:
    async def main() -> list:
        async with AsyncSupertonicClient(address, timeout=120) as tts:
            speech = tts.streaming(steps=2, max_buffer_delay_ms=5000)
            await speech.send("The first sentence. The sec")
            first = await speech.__anext__()  # before the rest of the text is written
            await speech.send("ond one.")
            await speech.close()
            return [first] + [c async for c in speech]

    chunks = asyncio.run(main())
    assert [c.text for c in chunks] == ["The first sentence.", "The second one."]


def test_streaming_error_is_a_supertonic_error(address: str) -> None:
    with SupertonicClient(address, timeout=60) as tts:
        speech = tts.streaming(voice="nobody")
        speech.close()
        with pytest.raises(SupertonicError) as info:
            list(speech)
    assert info.value.code.name == "INVALID_ARGUMENT" and "config.voice" in info.value.message
