"""Request validation at the edge: a `SynthesizeRequest` becomes a checked `Plan` or a
`RequestError` carrying the gRPC status code and a message that names the field."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass

import grpc

from supertonic_client._proto.supertonic.v1 import tts_pb2
from supertonic_grpc import audio
from supertonic_grpc.engine import (
    DEFAULT_SPEED,
    MAX_POSITIONS,
    MAX_SPEED,
    MAX_STEPS,
    MIN_SPEED,
    MIN_STEPS,
    Utterance,
)
from supertonic_grpc.settings import Settings
from supertonic_grpc.text import (
    LANGUAGES,
    EmptyTextError,
    TextChunk,
    TextError,
    Tokenizer,
    preprocess,
    split_text,
)
from supertonic_grpc.voices import UnknownVoiceError, Voice, VoiceBank

MAX_CHUNK_CHARS_RANGE = (20, 1000)
FIRST_CHUNK_CHARS_RANGE = (10, 1000)
_ENCODINGS = {
    tts_pb2.AUDIO_ENCODING_UNSPECIFIED: audio.Encoding.LINEAR16,
    tts_pb2.LINEAR16: audio.Encoding.LINEAR16,
    tts_pb2.PCM_F32: audio.Encoding.PCM_F32,
    tts_pb2.MULAW: audio.Encoding.MULAW,
    tts_pb2.ALAW: audio.Encoding.ALAW,
    tts_pb2.WAV: audio.Encoding.WAV,
}


class RequestError(Exception):
    """A request the server refuses: `code` is the gRPC status, the message names the field."""

    def __init__(
        self, code: grpc.StatusCode, message: str, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after_s = retry_after_s  # sent as a `retry-after-ms` trailer


def invalid(field: str, problem: str) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{field}: {problem}")


@dataclass(frozen=True)
class PlannedChunk:
    text: TextChunk
    utterance: Utterance


@dataclass(frozen=True)
class Plan:
    """A validated request: its chunks and output format."""

    chunks: tuple[PlannedChunk, ...]
    voice: Voice
    language: str
    speed: float
    steps: int
    seed: int
    encoding: audio.Encoding
    sample_rate: int
    native_rate: int  # the model's, which the audio is resampled from
    word_timings: bool = False


@dataclass(frozen=True)
class Voicing:
    """Everything of a validated request but its text: how to speak, and in what format."""

    voice: Voice
    language: str
    speed: float
    steps: int
    seed: int
    encoding: audio.Encoding
    sample_rate: int
    native_rate: int
    max_chunk_chars: int
    first_chunk_chars: int
    word_timings: bool

    def plan(self, chunks: tuple[PlannedChunk, ...]) -> Plan:
        return Plan(
            chunks,
            self.voice,
            self.language,
            self.speed,
            self.steps,
            self.seed,
            self.encoding,
            self.sample_rate,
            self.native_rate,
            self.word_timings,
        )


def proto_encoding(encoding: audio.Encoding) -> tts_pb2.AudioEncoding:
    return {v: k for k, v in _ENCODINGS.items() if k != tts_pb2.AUDIO_ENCODING_UNSPECIFIED}[
        encoding
    ]


def _check_range(field: str, value: int, bounds: tuple[int, int]) -> int:
    lo, hi = bounds
    if not lo <= value <= hi:
        raise invalid(field, f"{value} is not in {lo}..{hi}")
    return value


def _output_format(
    req: tts_pb2.SynthesizeRequest, streaming: bool, native_rate: int
) -> tuple[audio.Encoding, int]:
    enc = _ENCODINGS.get(req.audio_config.encoding)
    if enc is None:
        raise invalid("audio_config.encoding", f"unknown encoding {req.audio_config.encoding}")
    if streaming and enc not in audio.STREAMABLE:
        raise invalid(
            "audio_config.encoding",
            "WAV is for SynthesizeOnce; stream LINEAR16, PCM_F32, MULAW or ALAW",
        )
    rate = req.audio_config.sample_rate_hz or native_rate
    if not audio.MIN_SAMPLE_RATE <= rate <= audio.MAX_SAMPLE_RATE:
        raise invalid(
            "audio_config.sample_rate_hz",
            f"{rate} is not in {audio.MIN_SAMPLE_RATE}..{audio.MAX_SAMPLE_RATE}",
        )
    return enc, rate


# The slowest plausible speaking rate (characters per second at speed 1.0) and the longest
# audio a chunk may have: well inside the latent's 1000 frames (3072 samples at 44.1 kHz,
# ≈ 69.7 s), and short enough that one flow step over one chunk stays short, since a new
# listener waits for the step in flight.
SLOWEST_CHARS_PER_SECOND = {"ko": 4.0}
SLOWEST_DEFAULT_CHARS_PER_SECOND = 10.0
MAX_CHUNK_AUDIO_SECONDS = 30.0


# The pause a speaker makes where one chunk ends and the next begins, by how the previous
# chunk ends: after a sentence, as the published pipeline (0.3 s); after a clause, a
# shorter breath; none inside a clause (a chunk cut at a word must not stop the voice).
SENTENCE_PAUSE_S, CLAUSE_PAUSE_S = 0.3, 0.15
_SENTENCE_END = ".!?…。！？"
_CLAUSE_END = ",;:、，；：—–"
_CLOSING = "\"'”’)]»」』"


def join_pause_seconds(previous: str, speed: float) -> float:
    """Silence before a chunk, from the end of the chunk before it (slower speech, longer)."""
    end = previous.rstrip().rstrip(_CLOSING)[-1:]
    if end and end in _SENTENCE_END:
        return SENTENCE_PAUSE_S / speed
    if end and end in _CLAUSE_END:
        return CLAUSE_PAUSE_S / speed
    return 0.0


def fitting_chunk_chars(language: str, speed: float) -> int:
    """The longest chunk, in characters, whose audio surely fits one latent."""
    rate = SLOWEST_CHARS_PER_SECOND.get(language, SLOWEST_DEFAULT_CHARS_PER_SECOND)
    return max(FIRST_CHUNK_CHARS_RANGE[0], int(MAX_CHUNK_AUDIO_SECONDS * rate * speed))


# Speech (and model time) per character against a Latin-script letter's: a Hangul
# character is a syllable, 2-3 of the model's tokens (jamo) where a letter is one (the
# bundled texts: 2.2 tokens a character in Korean, 1.1 in the others).
SPEECH_PER_CHAR = {"ko": 2.0}


def default_first_chunk_chars(language: str, settings: Settings) -> int:
    """The first chunk's length when the request does not set one, sized in speech: a
    Korean first chunk as long in characters as an English one would take twice as long
    to synthesize before the listener hears a sound."""
    per_char = SPEECH_PER_CHAR.get(language, 1.0)
    return max(FIRST_CHUNK_CHARS_RANGE[0], round(settings.first_chunk_chars / per_char))


def _chunk_limits(
    req: tts_pb2.SynthesizeRequest, settings: Settings, language: str
) -> tuple[int, int]:
    max_chars = req.chunking.max_chunk_chars or settings.max_chunk_chars
    _check_range("chunking.max_chunk_chars", max_chars, MAX_CHUNK_CHARS_RANGE)
    # A length the client asks for is used as it is.
    first = req.chunking.first_chunk_chars or min(
        default_first_chunk_chars(language, settings), max_chars
    )
    _check_range("chunking.first_chunk_chars", first, (FIRST_CHUNK_CHARS_RANGE[0], max_chars))
    return max_chars, first


def plan_voicing(
    req: tts_pb2.SynthesizeRequest,
    *,
    settings: Settings,
    voices: VoiceBank,
    native_rate: int,
    streaming: bool,
    prefix: str = "",
) -> Voicing:
    """Validate every field but the text; the audio is the model's `native_rate` unless the
    request asks for another. ``prefix`` goes before field names in errors (``"config."``
    for StreamingSynthesize, whose config carries these fields)."""
    try:
        try:
            voice = voices.get(req.voice or settings.default_voice)
        except UnknownVoiceError as exc:
            raise invalid("voice", str(exc)) from None
        language = req.language.strip().lower() or "en"
        if language not in LANGUAGES:
            raise invalid(
                "language",
                f"{req.language!r} is not supported; use one of " + ", ".join(LANGUAGES),
            )
        speed = DEFAULT_SPEED if req.speed == 0 else float(req.speed)
        if not (math.isfinite(speed) and MIN_SPEED <= speed <= MAX_SPEED):
            raise invalid("speed", f"{req.speed} is not in {MIN_SPEED}..{MAX_SPEED}")
        steps = req.steps or settings.default_steps
        _check_range("steps", steps, (MIN_STEPS, MAX_STEPS))
        encoding, rate = _output_format(req, streaming, native_rate)
        max_chars, first_chars = _chunk_limits(req, settings, language)
        # A chunk's latent must fit the model's frames, or its audio would be squeezed or
        # cut: slow speech gets smaller chunks (split further, never refused).
        fit = fitting_chunk_chars(language, speed)
        max_chars, first_chars = min(max_chars, fit), min(first_chars, fit)
    except RequestError as err:
        raise RequestError(err.code, prefix + err.message) from None
    seed = req.seed if req.HasField("seed") else secrets.randbits(63)
    return Voicing(
        voice,
        language,
        speed,
        steps,
        seed,
        encoding,
        rate,
        native_rate,
        max_chars,
        first_chars,
        req.enable_word_timings,
    )


def plan_chunks(
    text: str,
    voicing: Voicing,
    *,
    settings: Settings,
    tokenizer: Tokenizer,
    first_chunk_chars: int | None = None,
    offset: int = 0,
    first_index: int = 0,
) -> tuple[PlannedChunk, ...]:
    """Split, normalize and tokenize ``text``; chunk offsets are shifted by ``offset`` and
    chunk seeds continue from chunk number ``first_index`` (a stream's later text). A text
    with nothing speakable gives no chunks. Raises RequestError."""
    first = voicing.first_chunk_chars if first_chunk_chars is None else first_chunk_chars
    planned: list[PlannedChunk] = []
    for chunk in split_text(text, voicing.max_chunk_chars, first, settings.chunk_growth):
        try:
            ids = tokenizer.encode(preprocess(chunk.text, voicing.language))
        except EmptyTextError:
            continue  # a chunk of only symbols or emoji has nothing to say
        except TextError as exc:
            raise invalid("text", str(exc)) from None
        if len(ids) > MAX_POSITIONS:
            raise invalid(
                "chunking.max_chunk_chars",
                f"a chunk has {len(ids)} tokens, at most {MAX_POSITIONS}; use smaller chunks",
            )
        seed = (voicing.seed + first_index + len(planned)) % 2**63
        pause = join_pause_seconds(planned[-1].text.text, voicing.speed) if planned else 0.0
        utt = Utterance(ids, voicing.voice, voicing.speed, voicing.steps, seed, pause)
        if offset:
            chunk = TextChunk(chunk.text, chunk.start + offset, chunk.end + offset)
        planned.append(PlannedChunk(chunk, utt))
    return tuple(planned)


def plan_request(
    req: tts_pb2.SynthesizeRequest,
    *,
    settings: Settings,
    voices: VoiceBank,
    tokenizer: Tokenizer,
    native_rate: int,
    streaming: bool,
) -> Plan:
    """Validate every field and split, normalize and tokenize the text. Raises RequestError."""
    text = req.text
    if not text.strip():
        raise invalid("text", "must not be empty")
    if len(text) > settings.max_text_chars:
        raise invalid("text", f"{len(text)} characters, at most {settings.max_text_chars}")
    voicing = plan_voicing(
        req, settings=settings, voices=voices, native_rate=native_rate, streaming=streaming
    )
    planned = plan_chunks(text, voicing, settings=settings, tokenizer=tokenizer)
    if not planned:
        raise invalid("text", "nothing speakable: no characters the model can pronounce")
    return voicing.plan(planned)
