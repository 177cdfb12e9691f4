"""The pipecat plugin in a real pipecat pipeline (pipecat-ai from PyPI) against a live server."""

from __future__ import annotations

import asyncio

import pytest

pipecat = pytest.importorskip("pipecat")

from pipecat.frames.frames import (  # noqa: E402
    EndWorkerFrame,
    Frame,
    InterruptionWorkerFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.tests.utils import run_test  # noqa: E402

from supertonic_client.pipecat import SupertonicTTSService  # noqa: E402

REPLY = "Hello there, how are you today? I am a streamed reply, spoken token by token."


def llm_tokens(text: str, size: int = 4) -> list[Frame]:
    return [LLMTextFrame(text[i : i + size]) for i in range(0, len(text), size)]


def service(address: str) -> SupertonicTTSService:
    # A generous silence timeout: a shared CI machine may take seconds for a first chunk.
    return SupertonicTTSService(address=address, steps=2, stop_frame_timeout_s=60)


def test_one_turn_is_audio_at_the_pipeline_rate_with_word_timestamps(address: str) -> None:
    frames = [LLMFullResponseStartFrame(), *llm_tokens(REPLY), LLMFullResponseEndFrame()]
    down, _ = asyncio.run(
        run_test(
            service(address),
            frames_to_send=frames,
            pipeline_params=PipelineParams(audio_out_sample_rate=16000),
        )
    )
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    assert audio and all(f.sample_rate == 16000 and f.num_channels == 1 for f in audio)
    assert sum(len(f.audio) for f in audio) / 2 / 16000 > 1.0  # seconds of speech
    assert len({f.context_id for f in audio}) == 1  # one turn, one call
    words = [f.text.strip() for f in down if isinstance(f, TTSTextFrame)]
    assert words == [w.strip(",.?") for w in REPLY.split()]
    kinds = [type(f) for f in down]
    assert kinds.index(TTSStartedFrame) < kinds.index(TTSAudioRawFrame)
    assert TTSStoppedFrame in kinds


class InterruptOnFirstAudio(FrameProcessor):
    """The user starts talking as soon as the bot does: interrupt, then end the pipeline."""

    def __init__(self) -> None:
        super().__init__()
        self.audio_before = 0
        self.interrupted = False

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, TTSAudioRawFrame) and not self.interrupted:
            self.interrupted = True
            self.audio_before += 1
            await self.push_frame(InterruptionWorkerFrame(), FrameDirection.UPSTREAM)
            await self.push_frame(EndWorkerFrame(), FrameDirection.UPSTREAM)
        await self.push_frame(frame, direction)


def test_interruption_cancels_the_call(address: str) -> None:
    long = " ".join(f"This is sentence number {i} of a long reply." for i in range(12))
    interrupter = InterruptOnFirstAudio()
    down, _ = asyncio.run(
        run_test(
            Pipeline([service(address), interrupter]),
            frames_to_send=[LLMFullResponseStartFrame(), *llm_tokens(long)],
            send_end_frame=False,
            pipeline_params=PipelineParams(audio_out_sample_rate=24000),
        )
    )
    assert interrupter.interrupted
    audio = [f for f in down if isinstance(f, TTSAudioRawFrame)]
    # Far less than the whole reply was spoken: the rest was cancelled on the server.
    seconds = sum(len(f.audio) for f in audio) / 2 / 24000
    assert 0 < seconds < 10
    print("BARGE-IN-DONE")
