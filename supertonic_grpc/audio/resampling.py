"""Band-limited resampling, of a whole signal or a stream (numpy only)."""

from __future__ import annotations

import functools
import math

import numpy as np

from supertonic_grpc.audio.samples import as_mono, check_rate

# A Kaiser-windowed sinc evaluated on the exact rational grid to/from (reduced by gcd). For the
# usual rates the L polyphase filters fit one matrix, so a whole signal resamples as a single
# BLAS matrix product; exotic ratios (huge L) interpolate between 1024 tabulated phases.

_ZERO_CROSSINGS = 24  # filter half-length, in periods of the lower of the two rates
_ROLLOFF = 0.94  # cutoff as a fraction of the lower Nyquist, leaving room for the transition
_KAISER_BETA = 8.6  # about 85 dB of stopband attenuation
# Polyphase matrix entries beyond which taps are interpolated instead: a kernel is built on
# the event loop, so its size (1 MiB) and build time (~50 ms) stay small for any rate pair.
_MAX_TABLE = 1 << 18
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


@functools.lru_cache(maxsize=16)  # at most ~16 MiB however many odd rates clients ask for
def _kernel(from_hz: int, to_hz: int) -> _Kernel:
    return _Kernel(from_hz, to_hz)


def resample(samples: np.ndarray, from_hz: int, to_hz: int) -> np.ndarray:
    """Band-limited resampling of mono float32 audio; output length ``round(n * to / from)``."""
    from_hz = check_rate("from_hz", from_hz)
    to_hz = check_rate("to_hz", to_hz)
    x = as_mono(samples)
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
        self.from_hz = check_rate("from_hz", from_hz)
        self.to_hz = check_rate("to_hz", to_hz)
        self._kernel = None if from_hz == to_hz else _kernel(self.from_hz, self.to_hz)
        self._reset()

    def _reset(self) -> None:
        self._buf = np.zeros(0, dtype=np.float32)
        self._buf_start = 0  # input index of _buf[0]
        self._n_in = 0
        self._n_out = 0

    def process(self, chunk: np.ndarray) -> np.ndarray:
        """Feed the next chunk; returns the outputs that became computable."""
        x = as_mono(chunk)
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
