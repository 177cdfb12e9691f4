"""Audio for the wire: encodings, WAV files and band-limited resampling (numpy only).

Every function takes and returns mono float32 in [-1, 1]; encoders clip (and map NaN to 0) so
that a misbehaving model can never produce an undecodable payload.
"""

from supertonic_grpc.audio.codecs import (
    MAX_SAMPLE_RATE,
    MIN_SAMPLE_RATE,
    STREAMABLE,
    Encoding,
    bytes_per_sample,
    decode,
    duration_seconds,
    encode,
    wav_bytes,
)
from supertonic_grpc.audio.resampling import StreamResampler, resample
from supertonic_grpc.audio.wav import read_wav, wav_header

__all__ = [
    "MAX_SAMPLE_RATE",
    "MIN_SAMPLE_RATE",
    "STREAMABLE",
    "Encoding",
    "StreamResampler",
    "bytes_per_sample",
    "decode",
    "duration_seconds",
    "encode",
    "read_wav",
    "resample",
    "wav_bytes",
    "wav_header",
]
