"""Decode the server's audio payloads to float32 numpy (numpy and stdlib only).

The client side of the wire formats: the server encodes, this decodes. Names and values of
`Encoding` match the proto enum `AudioEncoding`.
"""

from __future__ import annotations

import enum
import io
import wave

import numpy as np

__all__ = ["Encoding", "decode"]


class Encoding(enum.Enum):
    """Wire encodings; names and values match the proto enum ``AudioEncoding``."""

    LINEAR16 = 1  # int16 little-endian PCM
    PCM_F32 = 2  # float32 little-endian PCM
    MULAW = 3  # G.711 mu-law, 8 bit
    ALAW = 4  # G.711 A-law, 8 bit
    WAV = 5  # a whole RIFF/WAVE file of 16-bit PCM


def _g711_tables() -> tuple[np.ndarray, np.ndarray]:
    """The 256 linear values of each G.711 law (ITU-T G.711 expansion), scaled to [-1, 1]."""
    u = ~np.arange(256) & 0xFF
    exp, mant = (u >> 4) & 7, u & 0x0F
    mu = (((mant << 3) + 0x84) << exp) - 0x84
    mu = np.where(u & 0x80, -mu, mu)
    a = np.arange(256) ^ 0x55
    exp, mant = (a >> 4) & 7, (a & 0x0F) << 4
    al = np.where(exp == 0, mant + 8, (mant + 0x108) << np.maximum(exp - 1, 0))
    al = np.where(a & 0x80, al, -al)
    return (mu / 32767.0).astype(np.float32), (al / 32767.0).astype(np.float32)


_MULAW, _ALAW = _g711_tables()


def decode(data: bytes, encoding: Encoding) -> np.ndarray:
    """Payload bytes to mono float32 in [-1, 1]."""
    if encoding is Encoding.WAV:
        with wave.open(io.BytesIO(data)) as w:
            if w.getsampwidth() != 2:
                raise ValueError(f"expected 16-bit WAV, got {8 * w.getsampwidth()} bits")
            frames = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
            frames = frames.reshape(-1, w.getnchannels()).mean(axis=1)
        return (frames / 32767.0).astype(np.float32)
    if encoding is Encoding.LINEAR16:
        if len(data) % 2:
            raise ValueError(f"LINEAR16 payload of {len(data)} bytes is not whole samples")
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / np.float32(32767.0)
    if encoding is Encoding.PCM_F32:
        if len(data) % 4:
            raise ValueError(f"PCM_F32 payload of {len(data)} bytes is not whole samples")
        return np.frombuffer(data, dtype="<f4").astype(np.float32)
    table = {Encoding.MULAW: _MULAW, Encoding.ALAW: _ALAW}[encoding]
    return table[np.frombuffer(data, dtype=np.uint8)]
