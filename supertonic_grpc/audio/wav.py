"""WAV files: the header of a mono 16-bit or float file, read back."""

from __future__ import annotations

import os
import struct

import numpy as np

from supertonic_grpc.audio.samples import check_rate

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def wav_header(num_samples: int, sample_rate: int, bits: int = 16) -> bytes:
    """The 44-byte RIFF/WAVE header of a mono file: 16-bit PCM, or 32-bit IEEE float."""
    sample_rate = check_rate("sample_rate", sample_rate)
    if bits not in (16, 32):
        raise ValueError(f"bits must be 16 (PCM) or 32 (float), got {bits!r}")
    data_len = num_samples * bits // 8
    if num_samples < 0 or data_len + 36 > 0xFFFFFFFF:
        raise ValueError(f"num_samples {num_samples} does not fit a WAV file")
    fmt = _WAVE_FORMAT_PCM if bits == 16 else _WAVE_FORMAT_FLOAT
    block = bits // 8
    return (
        struct.pack("<4sI4s", b"RIFF", 36 + data_len, b"WAVE")
        + struct.pack(
            "<4sIHHIIHH", b"fmt ", 16, fmt, 1, sample_rate, sample_rate * block, block, bits
        )
        + struct.pack("<4sI", b"data", data_len)
    )


def read_wav(path_or_bytes: str | os.PathLike[str] | bytes) -> tuple[np.ndarray, int]:
    """Read a 16-bit PCM or 32-bit float WAV (several channels are averaged to mono).

    Returns ``(samples, sample_rate)`` with float32 samples.
    """
    if isinstance(path_or_bytes, bytes | bytearray | memoryview):
        data = bytes(path_or_bytes)
    else:
        with open(path_or_bytes, "rb") as f:
            data = f.read()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError("not a RIFF/WAVE file")
    fmt: tuple[int, ...] | None = None
    pos = 12
    while pos + 8 <= len(data):
        cid, size = struct.unpack_from("<4sI", data, pos)
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if size < 16:
                raise ValueError("WAV fmt chunk is too short")
            fmt = struct.unpack_from("<HHIIHH", body)
            if fmt[0] == _WAVE_FORMAT_EXTENSIBLE and size >= 26:
                # The real format tag sits at the start of the sub-format GUID.
                fmt = (struct.unpack_from("<H", body, 24)[0], *fmt[1:])
        elif cid == b"data":
            if fmt is None:
                raise ValueError("WAV data chunk comes before its fmt chunk")
            return _wav_samples(fmt, body), fmt[2]
        pos += 8 + size + (size & 1)  # chunks are padded to even length
    raise ValueError("WAV file has no fmt or data chunk")


def _wav_samples(fmt: tuple[int, ...], body: bytes) -> np.ndarray:
    tag, channels, rate, _, _, bits = fmt
    if channels < 1 or rate <= 0:
        raise ValueError(f"WAV header is invalid: {channels} channels at {rate} Hz")
    if tag == _WAVE_FORMAT_PCM and bits == 16:
        dtype, scale = "<i2", 1.0 / 32767.0
    elif tag == _WAVE_FORMAT_FLOAT and bits == 32:
        dtype, scale = "<f4", 1.0
    else:
        raise ValueError(f"unsupported WAV sample format (tag {tag}, {bits} bits)")
    frame = channels * bits // 8
    x = np.frombuffer(body[: len(body) - len(body) % frame], dtype=dtype).astype(np.float32)
    x = x.reshape(-1, channels).mean(axis=1) if channels > 1 else x
    return (x * np.float32(scale)).astype(np.float32)
