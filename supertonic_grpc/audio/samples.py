"""The checks every audio function shares: sample rates and mono float32 samples."""

from __future__ import annotations

import numpy as np


def check_rate(name: str, rate: object) -> int:
    if isinstance(rate, bool) or not isinstance(rate, int | np.integer) or rate <= 0:
        raise ValueError(f"{name} must be a positive integer number of Hz, got {rate!r}")
    return int(rate)


def as_mono(samples: np.ndarray) -> np.ndarray:
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"samples must be a 1-D mono array, got shape {x.shape}")
    return x


def to_int16(samples: np.ndarray) -> np.ndarray:
    x = np.nan_to_num(as_mono(samples), nan=0.0, posinf=1.0, neginf=-1.0)
    pcm: np.ndarray = np.rint(np.clip(x, -1.0, 1.0) * 32767.0).astype(np.int16)
    return pcm
