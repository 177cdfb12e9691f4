"""Audio encodings: 16-bit and float PCM, mu-law and A-law (numpy only).

Every function takes and returns mono float32 in [-1, 1]; encoders clip (and map NaN to 0) so
that a misbehaving model can never produce an undecodable payload.
"""

from __future__ import annotations

import numpy as np

# One enum for server and client: the wire encodings, named as in the proto.
from supertonic_client.audio import Encoding
from supertonic_grpc.audio.samples import as_mono, check_rate, to_int16
from supertonic_grpc.audio.wav import read_wav, wav_header

MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 48000


STREAMABLE: frozenset[Encoding] = frozenset(e for e in Encoding if e is not Encoding.WAV)

_BYTES_PER_SAMPLE = {
    Encoding.LINEAR16: 2,
    Encoding.PCM_F32: 4,
    Encoding.MULAW: 1,
    Encoding.ALAW: 1,
    Encoding.WAV: 2,  # of the data after its header
}


def _check_encoding(encoding: object) -> Encoding:
    if not isinstance(encoding, Encoding):
        raise ValueError(f"encoding must be an audio.Encoding, got {encoding!r}")
    return encoding


# --- G.711 -------------------------------------------------------------------------------------
# Both laws are tabulated once for all 65536 int16 inputs and all 256 codes: a table lookup is
# the fastest vectorized form, and building the tables from the ITU segment rules keeps the
# bit manipulation in one readable place.


def _segment(values: np.ndarray, first_edge: int) -> np.ndarray:
    """Index of the power-of-two segment: 0 below ``first_edge``, +1 per doubling, max 8."""
    return np.searchsorted(first_edge << np.arange(8), values, side="right")


def _pack(seg: np.ndarray, mant: np.ndarray, mask: np.ndarray) -> np.ndarray:
    # Segment 8 is past the top of the scale: saturate to the largest code.
    code = np.where(seg > 7, 0x7F, (np.minimum(seg, 7) << 4) | mant)
    packed: np.ndarray = (code ^ mask).astype(np.uint8)
    return packed


def _build_mulaw() -> tuple[np.ndarray, np.ndarray]:
    pcm = np.arange(-32768, 32768, dtype=np.int64) >> 2  # mu-law works on 14 bits
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + 0x21  # the bias makes 0 exactly representable
    seg = _segment(mag, 0x40)
    enc = _pack(seg, (mag >> (seg + 1)) & 0x0F, mask)
    code = ~np.arange(256, dtype=np.int64) & 0xFF
    seg_d, mant_d = (code >> 4) & 0x07, code & 0x0F
    val = (((mant_d << 3) + 0x84) << seg_d) - 0x84
    dec = np.where(code & 0x80, -val, val)
    # Index by the uint16 view of int16 samples, so rotate the table to start at 0.
    return np.roll(enc, -32768), (dec / 32767.0).astype(np.float32)


def _build_alaw() -> tuple[np.ndarray, np.ndarray]:
    pcm = np.arange(-32768, 32768, dtype=np.int64) >> 3  # A-law works on 13 bits
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, 0x20)
    enc = _pack(seg, np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F, mask)
    code = np.arange(256, dtype=np.int64) ^ 0x55
    seg_d, mant_d = (code >> 4) & 0x07, (code & 0x0F) << 4
    val = np.where(seg_d == 0, mant_d + 8, (mant_d + 0x108) << np.maximum(seg_d - 1, 0))
    dec = np.where(code & 0x80, val, -val)
    return np.roll(enc, -32768), (dec / 32767.0).astype(np.float32)


_MULAW_ENC, _MULAW_DEC = _build_mulaw()
_ALAW_ENC, _ALAW_DEC = _build_alaw()


# --- encode / decode ---------------------------------------------------------------------------


def encode(samples: np.ndarray, encoding: Encoding, sample_rate: int) -> bytes:
    """Encode mono float32 samples in [-1, 1] (clipped) as ``encoding``.

    ``sample_rate`` only matters for WAV (its header) but is validated for every encoding.
    """
    encoding = _check_encoding(encoding)
    sample_rate = check_rate("sample_rate", sample_rate)
    if encoding is Encoding.PCM_F32:
        x = np.nan_to_num(as_mono(samples), nan=0.0, posinf=1.0, neginf=-1.0)
        return bytes(np.clip(x, -1.0, 1.0).astype("<f4").tobytes())
    pcm = to_int16(samples)
    if encoding is Encoding.LINEAR16:
        return pcm.astype("<i2").tobytes()
    if encoding is Encoding.MULAW:
        return _MULAW_ENC[pcm.view(np.uint16)].tobytes()
    if encoding is Encoding.ALAW:
        return _ALAW_ENC[pcm.view(np.uint16)].tobytes()
    return wav_header(len(pcm), sample_rate) + pcm.astype("<i2").tobytes()


def decode(data: bytes, encoding: Encoding) -> np.ndarray:
    """Inverse of :func:`encode`: payload bytes to mono float32 (WAV parses its header)."""
    encoding = _check_encoding(encoding)
    if encoding is Encoding.WAV:
        return read_wav(bytes(data))[0]
    width = _BYTES_PER_SAMPLE[encoding]
    if len(data) % width:
        raise ValueError(
            f"{encoding.name} payload of {len(data)} bytes is not a whole number of "
            f"{width}-byte samples"
        )
    if encoding is Encoding.LINEAR16:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32767.0)
    if encoding is Encoding.PCM_F32:
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    table = _MULAW_DEC if encoding is Encoding.MULAW else _ALAW_DEC
    return table[np.frombuffer(data, dtype=np.uint8)]


def bytes_per_sample(encoding: Encoding) -> int:
    """Bytes per mono sample; for WAV, that of its 16-bit data (the header is extra)."""
    return _BYTES_PER_SAMPLE[_check_encoding(encoding)]


def duration_seconds(num_bytes: int, encoding: Encoding, sample_rate: int) -> float:
    """Playback length of ``num_bytes`` of a headerless (streamable) encoding."""
    encoding = _check_encoding(encoding)
    if encoding not in STREAMABLE:
        raise ValueError(f"duration_seconds needs a streamable encoding, not {encoding.name}")
    sample_rate = check_rate("sample_rate", sample_rate)
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    return num_bytes / _BYTES_PER_SAMPLE[encoding] / sample_rate


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete 16-bit PCM mono WAV file of ``samples``."""
    return encode(samples, Encoding.WAV, sample_rate)
