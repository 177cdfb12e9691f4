"""Typed views of the server's replies: chunks with decoded audio, summaries, clips, voices."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from supertonic_client import audio
from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_client.audio import Encoding

_MODEL_STATES = {tts_pb2.REAL: "real", tts_pb2.DEMO: "demo"}


@dataclass(frozen=True)
class ChunkTimings:
    """Server-side timings of one chunk."""

    queue_seconds: float
    compute_seconds: float
    batch_size: int


@dataclass(frozen=True)
class WordTiming:
    """One word's offsets in the text sent and its estimated span in the audio timeline."""

    word: str
    text_start: int
    text_end: int
    start_seconds: float
    end_seconds: float


@dataclass(frozen=True)
class Chunk:
    """One streamed piece of audio: decoded float32 `audio` plus the wire payload `data`.

    A chunk's audio may come as several pieces (`piece` 0, 1, ...; `last_piece` on the
    last); `words` (with word timings on) come on its first piece.
    """

    index: int
    audio: np.ndarray = field(repr=False)  # float32 mono in [-1, 1] at sample_rate_hz
    data: bytes = field(repr=False)  # the payload exactly as sent, in `encoding`
    encoding: Encoding
    sample_rate_hz: int
    text: str
    text_start: int
    text_end: int
    audio_offset_seconds: float
    duration_seconds: float
    timings: ChunkTimings
    piece: int = 0
    last_piece: bool = True
    words: tuple[WordTiming, ...] = ()


@dataclass(frozen=True)
class Summary:
    """The totals the server sends after the last chunk."""

    chunks: int
    audio_seconds: float
    time_to_first_audio_seconds: float
    total_seconds: float
    queue_seconds: float
    compute_seconds: float
    sample_rate_hz: int
    encoding: Encoding
    voice: str
    language: str
    seed: int
    model_state: str  # "real", "demo" or "unspecified"


@dataclass(frozen=True)
class Clip:
    """A whole clip from `synthesize()`; `chunks` carry metadata only (empty audio)."""

    audio: np.ndarray = field(repr=False)
    data: bytes = field(repr=False)
    encoding: Encoding
    sample_rate_hz: int
    chunks: tuple[Chunk, ...]
    summary: Summary


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    gender: str
    languages: tuple[str, ...]
    native_sample_rate_hz: int


@dataclass(frozen=True)
class VoiceList:
    """What `voices()` returns: the voices and whether the server runs real weights."""

    voices: tuple[VoiceInfo, ...]
    model_state: str
    model_version: str
    default_voice: str
    languages: tuple[str, ...]


def _encoding(value: int) -> Encoding:
    # UNSPECIFIED (0) means the server default, LINEAR16.
    return Encoding(value) if value else Encoding.LINEAR16


def chunk_from(msg: tts_pb2.AudioChunk, decode: bool = True) -> Chunk:
    enc = _encoding(msg.encoding)
    data = bytes(msg.audio)
    samples = audio.decode(data, enc) if decode and data else np.zeros(0, np.float32)
    t = msg.timings
    return Chunk(
        index=msg.index,
        audio=samples,
        data=data,
        encoding=enc,
        sample_rate_hz=msg.sample_rate_hz,
        text=msg.text,
        text_start=msg.text_start,
        text_end=msg.text_end,
        audio_offset_seconds=msg.audio_offset_seconds,
        duration_seconds=msg.duration_seconds,
        timings=ChunkTimings(t.queue_seconds, t.compute_seconds, t.batch_size),
        piece=msg.piece,
        last_piece=msg.last_piece,
        words=tuple(
            WordTiming(w.word, w.text_start, w.text_end, w.start_seconds, w.end_seconds)
            for w in msg.words
        ),
    )


def summary_from(msg: tts_pb2.SynthesizeSummary) -> Summary:
    return Summary(
        chunks=msg.chunks,
        audio_seconds=msg.audio_seconds,
        time_to_first_audio_seconds=msg.time_to_first_audio_seconds,
        total_seconds=msg.total_seconds,
        queue_seconds=msg.queue_seconds,
        compute_seconds=msg.compute_seconds,
        sample_rate_hz=msg.sample_rate_hz,
        encoding=_encoding(msg.encoding),
        voice=msg.voice,
        language=msg.language,
        seed=msg.seed,
        model_state=_MODEL_STATES.get(msg.model_state, "unspecified"),
    )


def clip_from(msg: tts_pb2.SynthesizeOnceResponse) -> Clip:
    enc = _encoding(msg.encoding)
    data = bytes(msg.audio)
    return Clip(
        audio=audio.decode(data, enc) if data else np.zeros(0, np.float32),
        data=data,
        encoding=enc,
        sample_rate_hz=msg.sample_rate_hz,
        chunks=tuple(chunk_from(c, decode=False) for c in msg.chunks),
        summary=summary_from(msg.summary),
    )


def voice_list_from(msg: tts_pb2.ListVoicesResponse) -> VoiceList:
    return VoiceList(
        voices=tuple(
            VoiceInfo(v.name, v.gender, tuple(v.languages), v.native_sample_rate_hz)
            for v in msg.voices
        ),
        model_state=_MODEL_STATES.get(msg.model_state, "unspecified"),
        model_version=msg.model_version,
        default_voice=msg.default_voice,
        languages=tuple(msg.languages),
    )
