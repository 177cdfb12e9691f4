"""The comparison rows of `make bench`: reduced precisions and ONNX Runtime beside the engine.

Every mode is an object with `synthesize(items)` and `device`; `benchmarks.engine_bench` times
them all interleaved, in one run, so drift on a busy machine hits each alike. Quality is
measured once per mode on the largest batch, against the fp32 engine: the largest sample
difference and the waveform SNR (signal = the fp32 audio, noise = the difference).
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from benchmarks import onnx_baseline
from supertonic_grpc.backends import PRECISIONS, parse_precision
from supertonic_grpc.engine import Engine, Synthesized, Utterance
from supertonic_grpc.model import Supertonic

log = logging.getLogger(__name__)

ORT = "onnxruntime"


class Synthesizer(Protocol):
    device: Any

    def synthesize(self, items: Sequence[Utterance]) -> list[Synthesized]: ...


@dataclass
class Quality:
    """One mode's audio against the fp32 engine's, on the same batch."""

    max_abs_diff: float
    snr_db: float


def mode_name(precision: str) -> str:
    """The row name of the engine at a precision; fp32 is the plain 'eager' row."""
    return "eager" if precision == "fp32" else f"eager-{precision}"


def parse_precisions(text: str) -> list[str]:
    """'fp32,bf16' -> ['fp32', 'bf16'] (fp32 always first: it is the reference)."""
    wanted = {parse_precision(p) for p in text.split(",") if p.strip()} | {"fp32"}
    return [p for p in PRECISIONS if p in wanted]


def reduced_engines(
    pristine: Supertonic, precisions: Sequence[str], **engine_kwargs: Any
) -> dict[str, Engine]:
    """One engine per non-fp32 precision, each on its own copy of the model (an engine
    prepares its model in place)."""
    return {
        mode_name(p): Engine(copy.deepcopy(pristine), precision=p, **engine_kwargs)
        for p in precisions
        if p != "fp32"
    }


def ort_engine(
    reference: Engine, pristine: Supertonic, cache_dir: Path
) -> tuple[onnx_baseline.OrtEngine | None, str]:
    """The ONNX Runtime mode, or (None, why not)."""
    try:
        return onnx_baseline.baseline(reference, pristine, cache_dir), ""
    except onnx_baseline.BaselineUnavailable as exc:
        log.warning("no ONNX Runtime baseline: %s", exc)
        return None, str(exc)


def snr_db(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> float:
    """Waveform SNR of `other` against `reference`, in dB (inf when identical)."""
    signal = noise = 0.0
    for ref, got in zip(reference, other, strict=True):
        n = min(len(ref), len(got))
        r, g = ref[:n].astype(np.float64), got[:n].astype(np.float64)
        signal += float((r**2).sum())
        noise += float(((r - g) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(signal / noise)


def quality(reference: list[Synthesized], other: list[Synthesized]) -> Quality:
    ref, got = [o.audio for o in reference], [o.audio for o in other]
    diffs = [
        float(np.abs(r[: len(g)] - g[: len(r)]).max(initial=0.0))
        for r, g in zip(ref, got, strict=True)
    ]
    return Quality(max(diffs, default=0.0), snr_db(ref, got))
