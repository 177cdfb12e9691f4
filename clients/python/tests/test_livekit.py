"""The LiveKit plugin with the real livekit-agents (from PyPI) against a live server."""

from __future__ import annotations

import asyncio

import pytest

pytest.importorskip("livekit.agents")

from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT

from supertonic_client.livekit import TTS

REPLY = "Hello there, how are you today? I am a streamed reply, spoken token by token."


def test_streaming_gives_pcm_at_the_rate_and_aligned_transcripts(address: str) -> None:
    async def main():
        tts = TTS(address=address, steps=2, sample_rate=16000)
        assert tts.capabilities.streaming and tts.capabilities.aligned_transcript
        stream = tts.stream()
        for i in range(0, len(REPLY), 4):
            stream.push_text(REPLY[i : i + 4])
        stream.end_input()
        frames, words = [], []
        async for ev in stream:
            frames.append(ev.frame)
            words += ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT, [])
        await stream.aclose()
        await tts.aclose()
        return frames, words

    frames, words = asyncio.run(main())
    assert frames and all(f.sample_rate == 16000 and f.num_channels == 1 for f in frames)
    assert sum(f.duration for f in frames) > 1.0
    assert [w.strip() for w in words] == [w.strip(",.?") for w in REPLY.split()]
    starts = [w.start_time for w in words]
    assert starts == sorted(starts) and all(w.start_time <= w.end_time for w in words)


def test_synthesize_uses_the_stream(address: str) -> None:
    async def main():
        tts = TTS(address=address, steps=2)
        frame = await tts.synthesize("One short sentence.").collect()
        await tts.aclose()
        return frame

    frame = asyncio.run(main())
    assert frame.sample_rate == 24000 and frame.duration > 0.3


def test_closing_the_stream_mid_reply_cancels_the_call(address: str) -> None:
    long = " ".join(f"This is sentence number {i} of a long reply." for i in range(12))

    async def main() -> float:
        tts = TTS(address=address, steps=2)
        stream = tts.stream()
        stream.push_text(long)  # no end_input: the agent is still talking
        ev = await stream.__anext__()
        await stream.aclose()  # the user interrupts
        await tts.aclose()
        return ev.frame.duration

    assert asyncio.run(main()) > 0
    print("BARGE-IN-DONE")
