"""What a synthesis call asks for: its keyword options and the request messages built from them."""

from __future__ import annotations

from typing import TypedDict, Unpack

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_client.audio import Encoding


class RequestOptions(TypedDict, total=False):
    """Keyword options of every synthesis call; see `build_request` for their defaults."""

    voice: str
    language: str
    speed: float
    steps: int
    encoding: Encoding
    sample_rate_hz: int
    seed: int | None
    max_chunk_chars: int
    first_chunk_chars: int
    word_timings: bool


class StreamingOptions(RequestOptions, total=False):
    """`RequestOptions` plus the text buffering of `streaming()`."""

    max_buffer_delay_ms: int
    early_first_clause: bool


def build_request(
    text: str,
    *,
    voice: str = "",
    language: str = "en",
    speed: float = 0.0,
    steps: int = 0,
    encoding: Encoding = Encoding.LINEAR16,
    sample_rate_hz: int = 0,
    seed: int | None = None,
    max_chunk_chars: int = 0,
    first_chunk_chars: int = 0,
    word_timings: bool = False,
) -> tts_pb2.SynthesizeRequest:
    """The protobuf request. 0 / "" mean the server's defaults (voice: the server's default
    voice, speed 1.05, steps 5, native 44.1 kHz); `seed=None` means a random seed;
    `word_timings` asks for estimated word timings on each chunk."""
    req = tts_pb2.SynthesizeRequest(
        text=text,
        voice=voice,
        language=language,
        speed=speed,
        steps=steps,
        audio_config=tts_pb2.AudioConfig(encoding=encoding.name, sample_rate_hz=sample_rate_hz),
        chunking=tts_pb2.ChunkingConfig(
            max_chunk_chars=max_chunk_chars, first_chunk_chars=first_chunk_chars
        ),
        enable_word_timings=word_timings,
    )
    if seed is not None:
        req.seed = seed
    return req


def build_config(
    *,
    max_buffer_delay_ms: int = 0,
    early_first_clause: bool = False,
    **options: Unpack[RequestOptions],
) -> tts_pb2.StreamingSynthesizeRequest:
    """The first message of a StreamingSynthesize call: `build_request`'s options (less the
    text) plus the buffering policy (0 ms: the server's default stall delay)."""
    req = build_request("", **options)
    config = tts_pb2.StreamingSynthesizeConfig(
        voice=req.voice,
        language=req.language,
        speed=req.speed,
        steps=req.steps,
        audio_config=req.audio_config,
        chunking=req.chunking,
        enable_word_timings=req.enable_word_timings,
        buffering=tts_pb2.TextBufferingConfig(
            max_buffer_delay_ms=max_buffer_delay_ms, early_first_clause=early_first_clause
        ),
    )
    if req.HasField("seed"):
        config.seed = req.seed
    return tts_pb2.StreamingSynthesizeRequest(config=config)
