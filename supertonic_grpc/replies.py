"""The audio replies of the synthesis RPCs: chunk messages, word timings, summaries, and one
stream's audio on its way out (`AudioWriter`), shared by Synthesize and StreamingSynthesize.
"""

from __future__ import annotations

import time

import numpy as np

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_grpc import audio
from supertonic_grpc.metrics import Metrics
from supertonic_grpc.playback import PlaybackClock
from supertonic_grpc.scheduler import JobResult
from supertonic_grpc.text import TextChunk
from supertonic_grpc.text.timings import word_timings
from supertonic_grpc.validation import Plan, proto_encoding

# No stream message is larger than 1 MiB: every gRPC client's default receive limit is
# 4 MiB, and small messages keep a slow network's latency per message low. The audio gets
# all of it but a margin for the message's other fields (text, offsets, word timings).
MAX_MESSAGE_BYTES = 1 << 20
MAX_MESSAGE_AUDIO_BYTES = MAX_MESSAGE_BYTES - (64 << 10)


def _word_timings(c: TextChunk, duration_s: float, offset: float) -> list[tts_pb2.WordTiming]:
    """Estimated word timings of one chunk, in the stream's offsets and audio timeline."""
    return [
        tts_pb2.WordTiming(
            word=w.word,
            text_start=w.start,
            text_end=w.end,
            start_seconds=w.start_s,
            end_seconds=w.end_s,
        )
        for w in word_timings(c.text, duration_s, offset=c.start, start_s=offset)
    ]


def _words(plan: Plan, k: int, result: JobResult, offset: float) -> list[tts_pb2.WordTiming]:
    """A chunk's words, on its first piece: over the chunk's whole speech, which starts
    after the pause that joins it to the previous chunk."""
    lead = plan.chunks[k].utterance.lead_silence_s
    speech = result.chunk_seconds or result.synthesized.duration_s - lead
    return _word_timings(plan.chunks[k].text, speech, offset + lead)


def chunk_message(
    plan: Plan,
    k: int,
    result: JobResult,
    payload: bytes,
    offset: float,
    seconds: float | None = None,
    piece: int = 0,
    last_piece: bool = True,
) -> tts_pb2.AudioChunk:
    """Chunk `k`'s message carrying `payload` (`seconds` of audio; default: the whole
    chunk's) at `offset` seconds into the stream; its words ride on piece 0."""
    c = plan.chunks[k].text
    return tts_pb2.AudioChunk(
        index=k,
        audio=payload,
        encoding=proto_encoding(plan.encoding),
        sample_rate_hz=plan.sample_rate,
        text=c.text,
        text_start=c.start,
        text_end=c.end,
        audio_offset_seconds=offset,
        duration_seconds=result.synthesized.duration_s if seconds is None else seconds,
        piece=piece,
        last_piece=last_piece,
        timings=tts_pb2.ChunkTimings(
            queue_seconds=result.queue_s,
            compute_seconds=result.compute_s,
            batch_size=result.batch_size,
        ),
        words=_words(plan, k, result, offset) if plan.word_timings and piece == 0 else (),
    )


def summary(
    plan: Plan,
    model_state: str,
    chunks: int,
    audio_s: float,
    ttfa: float,
    started: float,
    queue_s: float,
    compute_s: float,
) -> tts_pb2.SynthesizeSummary:
    """The last message of a call: its totals, output format and model state."""
    return tts_pb2.SynthesizeSummary(
        chunks=chunks,
        audio_seconds=audio_s,
        time_to_first_audio_seconds=ttfa,
        total_seconds=time.monotonic() - started,
        queue_seconds=queue_s,
        compute_seconds=compute_s,
        sample_rate_hz=plan.sample_rate,
        encoding=proto_encoding(plan.encoding),
        voice=plan.voice.name,
        language=plan.language,
        seed=plan.seed,
        model_state=tts_pb2.DEMO if model_state == "demo" else tts_pb2.REAL,
    )


class AudioWriter:
    """One stream's audio on its way out, for both streaming RPCs.

    `messages` resamples a piece (one stateful resampler per stream, so pieces join without
    a seam), encodes it and splits it so no message carries more than
    `MAX_MESSAGE_AUDIO_BYTES` of audio. Durations and offsets are per message, from the
    samples actually sent, so concatenating every message's audio gives the whole clip.
    `sent` accounts each message as it goes out: the first audio's latency, the listener's
    `clock` (its underruns), the stream offset; `finished` a chunk's queue and compute time.
    """

    def __init__(
        self, plan: Plan, metrics: Metrics, method: str, started: float, model_state: str
    ) -> None:
        self.metrics = metrics
        self.method = method
        self.started = started
        self.model_state = model_state
        self.clock = PlaybackClock()
        self.resampler = (
            audio.StreamResampler(plan.native_rate, plan.sample_rate)
            if plan.sample_rate != plan.native_rate
            else None
        )
        self.offset = self.queue_s = self.compute_s = 0.0
        self.ttfa: float | None = None

    def messages(
        self, plan: Plan, k: int, result: JobResult, piece: int, last_piece: bool, flush: bool
    ) -> list[tuple[tts_pb2.AudioChunk, float]]:
        """One piece of chunk `k`'s audio as messages numbered from `piece`, each with its
        seconds of audio; `flush` ends the resampler's stream (nothing follows soon)."""
        samples = result.synthesized.audio
        if self.resampler is not None:
            samples = self.resampler.process(samples)
            if flush:
                samples = np.concatenate([samples, self.resampler.flush()])
        per_message = MAX_MESSAGE_AUDIO_BYTES // audio.bytes_per_sample(plan.encoding)
        parts = max(1, -(-len(samples) // per_message))
        out = []
        offset = self.offset
        for i in range(parts):
            part = samples[i * per_message : (i + 1) * per_message]
            seconds = len(part) / plan.sample_rate
            payload = audio.encode(part, plan.encoding, plan.sample_rate)
            last = last_piece and i == parts - 1
            message = chunk_message(plan, k, result, payload, offset, seconds, piece + i, last)
            out.append((message, seconds))
            offset += seconds
        return out

    def sent(
        self, seconds: float, ready: float, now: float | None = None, underrun: bool = True
    ) -> None:
        """Account one message of `seconds` of audio handed to gRPC at `now`. The listener's
        clock runs from when the audio was `ready`: a slow reader is back-pressure, not a
        gap; `underrun=False` when the listener was waiting for text, not for audio."""
        now = time.monotonic() if now is None else now
        if self.ttfa is None:
            self.ttfa = now - self.started
            self.metrics.time_to_first_audio_seconds.labels(self.method).observe(self.ttfa)
        # Written now: a slow reader is back-pressure, not a gap.
        gap = self.clock.on_chunk_written(ready, now, seconds)
        if underrun:
            self.metrics.observe_playback(gap)
        self.offset += seconds

    def finished(self, result: JobResult) -> None:
        """A chunk's last piece is sent: its queue and compute time count in the summary."""
        self.queue_s += result.queue_s
        self.compute_s += result.compute_s

    def summary(self, plan: Plan, chunks: int) -> tts_pb2.SynthesizeSummary:
        return summary(
            plan,
            self.model_state,
            chunks,
            self.offset,
            self.ttfa or 0.0,
            self.started,
            self.queue_s,
            self.compute_s,
        )
