"""Audio encodings, WAV files and band-limited resampling (numpy and stdlib only).

Every function takes and returns mono float32 in [-1, 1]; encoders clip (and map NaN to 0) so
that a misbehaving model can never produce an undecodable payload.
"""

from __future__ import annotations

import functools
import math
import os
import struct

import numpy as np

# One enum for server and client: the wire encodings, named as in the proto.
from supertonic_client.audio import Encoding

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


def _check_rate(name: str, rate: object) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
        raise ValueError(f"{name} must be a positive integer number of Hz, got {rate!r}")
    return int(rate)


def _as_mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"samples must be a 1-D mono array, got shape {x.shape}")
    return x


def _to_int16(samples: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(_as_mono(samples), nan=0.0, posinf=1.0, neginf=-1.0)
    pcm: np.ndarray = np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return pcm


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
    sample_rate = _check_rate("sample_rate", sample_rate)
    if encoding is Encoding.PCM_F32:
        x = np.nan_to_num(_as_mono(samples), nan=0.0, posinf=1.0, neginf=-1.0)
        return bytes(np.clip(x, -1.0, 1.0).astype("<f4").tobytes())
    pcm = _to_int16(samples)
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
    sample_rate = _check_rate("sample_rate", sample_rate)
    if num_bytes < 0:
        raise ValueError(f"num_bytes must be >= 0, got {num_bytes}")
    return num_bytes / _BYTES_PER_SAMPLE[encoding] / sample_rate


# --- WAV ---------------------------------------------------------------------------------------

_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE


def wav_header(num_samples: int, sample_rate: int, bits: int = 16) -> bytes:
    """The 44-byte RIFF/WAVE header of a mono file: 16-bit PCM, or 32-bit IEEE float."""
    sample_rate = _check_rate("sample_rate", sample_rate)
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


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """A complete 16-bit PCM mono WAV file of ``samples``."""
    return encode(samples, Encoding.WAV, sample_rate)


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


# --- resampling --------------------------------------------------------------------------------
# A Kaiser-windowed sinc evaluated on the exact rational grid to/from (reduced by gcd). For the
# usual rates the L polyphase filters fit one matrix, so a whole signal resamples as a single
# BLAS matrix product; exotic ratios (huge L) interpolate between 1024 tabulated phases.

_ZERO_CROSSINGS = 24  # filter half-length, in periods of the lower of the two rates
_ROLLOFF = 0.94  # cutoff as a fraction of the lower Nyquist, leaving room for the transition
_KAISER_BETA = 8.6  # about 85 dB of stopband attenuation
_MAX_TABLE = 1 << 22  # polyphase matrix entries beyond which taps are computed per output
_PHASES = 1024  # tabulated fractional delays when the exact phases are too many (err ~1e-6)


class _Kernel:
    """The polyphase filter for one rational ratio up/down = L/M."""

    def __init__(self, from_hz: int, to_hz: int) -> None:
        g = math.gcd(from_hz, to_hz)
        self.up, self.down = to_hz // g, from_hz // g
        lower = min(1.0, self.up / self.down)  # the lower rate, in input-sample units
        self.cutoff = _ROLLOFF * lower
        self.half_width = _ZERO_CROSSINGS / lower  # in input samples
        self.pad = math.ceil(self.half_width)
        # One matrix row computes `block` full cycles of the L phases from `block * M` inputs
        # plus the filter's reach on each side; several cycles per row when M is small keep
        # that overlap (copied once per row) from dominating.
        self.block = max(1, math.ceil(2 * self.pad / self.down))
        self.width = self.block * self.down + 2 * self.pad
        self.table: np.ndarray | None = None
        if self.width * self.block * self.up <= _MAX_TABLE:
            q = np.arange(self.block * self.up)
            k = np.arange(self.width)
            tau = (q * self.down / self.up)[None, :] - (k - self.pad)[:, None]
            self.table = self._normalized(self._taps(tau), axis=0).astype(np.float32)
        else:
            # Too many phases for a matrix: tabulate _PHASES fractional delays and interpolate
            # linearly between neighbours (evaluating the Bessel window per tap is ~20x slower).
            frac = np.arange(_PHASES + 1) / _PHASES
            k = np.arange(-self.pad, self.pad + 1)
            taps = self._taps(frac[:, None] - k[None, :])
            self.phases = self._normalized(taps, axis=1).astype(np.float32)

    def _taps(self, tau: np.ndarray) -> np.ndarray:
        r = tau / self.half_width
        inside = np.abs(r) < 1.0
        window = np.i0(_KAISER_BETA * np.sqrt(np.where(inside, 1.0 - r * r, 0.0)))
        return np.where(inside, self.cutoff * np.sinc(self.cutoff * tau) * window, 0.0)

    @staticmethod
    def _normalized(h: np.ndarray, axis: int) -> np.ndarray:
        # Unit DC gain for every phase, so silence and offsets survive exactly.
        out: np.ndarray = h / h.sum(axis=axis, keepdims=True)
        return out

    def ready(self, n_in: int) -> int:
        """How many outputs depend only on the first ``n_in`` inputs."""
        if self.table is not None:
            return max(0, (n_in - self.pad) // (self.block * self.down)) * self.block * self.up
        return max(0, -((self.pad - n_in) * self.up // self.down))

    def first_input(self, n: int) -> int:
        """Lowest input index that output ``n`` (or its matrix row) reads."""
        if self.table is not None:
            return (n // (self.block * self.up)) * self.block * self.down - self.pad
        return n * self.down // self.up - self.pad

    def run(self, x: np.ndarray, x_start: int, n0: int, n1: int) -> np.ndarray:
        """Outputs ``n0 .. n1-1``; ``x`` holds inputs from index ``x_start``, zeros elsewhere."""
        if n1 <= n0:
            return np.zeros(0, dtype=np.float32)
        if self.table is not None:
            bl, bm = self.block * self.up, self.block * self.down
            b0, b1 = n0 // bl, -(-n1 // bl)
            xp = _window(x, x_start, b0 * bm - self.pad, b1 * bm + self.pad)
            rows = np.lib.stride_tricks.sliding_window_view(xp, self.width)[::bm]
            y = (rows @ self.table).ravel()
            rows_out: np.ndarray = y[n0 - b0 * bl : n1 - b0 * bl]
            return rows_out
        out: list[np.ndarray] = []
        taps = 2 * self.pad + 1
        for c0 in range(n0, n1, 4096):
            n = np.arange(c0, min(c0 + 4096, n1), dtype=np.int64)
            base = n * self.down // self.up
            pos = (n * self.down % self.up) * (_PHASES / self.up)
            p = np.minimum(pos.astype(np.int64), _PHASES - 1)
            f = (pos - p).astype(np.float32)[:, None]
            w = self.phases[p] * (1.0 - f) + self.phases[p + 1] * f
            lo = int(base[0]) - self.pad
            xp = _window(x, x_start, lo, int(base[-1]) + self.pad + 1)
            frames = np.lib.stride_tricks.sliding_window_view(xp, taps)[base - base[0]]
            out.append(np.einsum("ij,ij->i", frames, w))
        return np.concatenate(out)


def _window(x: np.ndarray, x_start: int, lo: int, hi: int) -> np.ndarray:
    """Inputs ``lo .. hi-1`` of a signal stored as ``x`` from index ``x_start``, zero-padded."""
    out = np.zeros(hi - lo, dtype=np.float32)
    a, b = max(lo, x_start), min(hi, x_start + len(x))
    if b > a:
        out[a - lo : b - lo] = x[a - x_start : b - x_start]
    return out


@functools.lru_cache(maxsize=32)
def _kernel(from_hz: int, to_hz: int) -> _Kernel:
    return _Kernel(from_hz, to_hz)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Band-limited resampling of mono float32 audio; output length ``round(n * to / from)``."""
    from_hz = _check_rate("from_hz", from_hz)
    to_hz = _check_rate("to_hz", to_hz)
    x = _as_mono(samples)
    if from_hz == to_hz:
        return x.copy()
    n_out = round(len(x) * to_hz / from_hz)
    return _kernel(from_hz, to_hz).run(x, 0, 0, n_out)


class StreamResampler:
    """:func:`resample` applied chunk by chunk to one stream.

    The concatenation of every ``process`` result and the final ``flush`` equals ``resample``
    of the concatenated input; each output is emitted as soon as the filter has seen all the
    input it needs (about ``24 / min(from, to)`` seconds of look-ahead).
    """

    def __init__(self, from_hz: int, to_hz: int) -> None:
        self.from_hz = _check_rate("from_hz", from_hz)
        self.to_hz = _check_rate("to_hz", to_hz)
        self._kernel = None if from_hz == to_hz else _kernel(self.from_hz, self.to_hz)
        self._reset()

    def _reset(self) -> None:
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # input index of _buf[0]
        self._n_in = 0
        self._n_out = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed the next chunk; returns the outputs that became computable."""
        x = _as_mono(chunk)
        if self._kernel is None:
            return x.copy()
        self._buf = np.concatenate([self._buf, x])
        self._n_in += len(x)
        return self._emit(self._kernel.ready(self._n_in))

    def flush(self) -> np.ndarray:
        """End of stream: returns the remaining tail and resets for a new stream."""
        if self._kernel is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._emit(round(self._n_in * self.to_hz / self.from_hz))
        self._reset()
        return tail

    def _emit(self, n1: int) -> np.ndarray:
        assert self._kernel is not None
        y = self._kernel.run(self._buf, self._buf_start, self._n_out, n1)
        self._n_out = max(self._n_out, n1)
        # Keep only what later outputs will still read.
        drop = min(self._kernel.first_input(self._n_out) - self._buf_start, len(self._buf))
        if drop > 0:
            self._buf = self._buf[drop:]
            self._buf_start += drop
        return y
