"""Voice styles: the published `voice_styles/*.json` files, or deterministic demo voices.

A voice is two tensors the model is conditioned on: `style_ttl` [50, 256] for the text
encoder and the flow, `style_dp` [8, 16] for the duration predictor.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

PUBLISHED_VOICES = ("M1", "M2", "M3", "M4", "M5", "F1", "F2", "F3", "F4", "F5")
DEFAULT_VOICE = "M1"
TTL_SHAPE = (50, 256)
DP_SHAPE = (8, 16)


class UnknownVoiceError(KeyError):
    """The requested voice is not loaded."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown voice"


@dataclass(frozen=True)
class Voice:
    name: str
    style_ttl: np.ndarray = field(repr=False)  # float32 [50, 256]
    style_dp: np.ndarray = field(repr=False)  # float32 [8, 16]
    gender: str = "unknown"
    languages: tuple[str, ...] = ()


def _gender(name: str) -> str:
    return {"M": "male", "F": "female"}.get(name[:1].upper(), "unknown")


def _tensor(entry: dict, shape: tuple[int, int], what: str) -> np.ndarray:
    arr = np.asarray(entry["data"], dtype=np.float32)
    dims = tuple(int(d) for d in entry.get("dims", arr.shape))
    arr = arr.reshape(dims)
    if arr.shape[-2:] != shape or arr.size != shape[0] * shape[1]:
        raise ValueError(f"{what}: expected dims [1, {shape[0]}, {shape[1]}], got {list(dims)}")
    return arr.reshape(shape)


def load_voice_file(path: str | os.PathLike[str], languages: tuple[str, ...] = ()) -> Voice:
    """Read one published voice style JSON file."""
    p = Path(path)
    data = json.loads(p.read_text())
    return Voice(
        name=p.stem,
        style_ttl=_tensor(data["style_ttl"], TTL_SHAPE, f"{p.name} style_ttl"),
        style_dp=_tensor(data["style_dp"], DP_SHAPE, f"{p.name} style_dp"),
        gender=_gender(p.stem),
        languages=languages,
    )


def demo_voice(name: str, languages: tuple[str, ...] = ()) -> Voice:
    """A deterministic stand-in voice with the published voices' value scale."""
    rng = np.random.default_rng(zlib.crc32(f"voice:{name}".encode()))
    ttl = (rng.standard_normal(TTL_SHAPE) * 0.0625).astype(np.float32)
    dp = (rng.standard_normal(DP_SHAPE) * 0.25).astype(np.float32)
    return Voice(name, ttl, dp, _gender(name), languages)


class VoiceBank:
    """The voices a server offers, by name."""

    def __init__(self, voices: list[Voice], default: str = DEFAULT_VOICE) -> None:
        if not voices:
            raise ValueError("a voice bank needs at least one voice")
        self._voices = {v.name: v for v in voices}
        self.default = default if default in self._voices else voices[0].name

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], languages: tuple[str, ...] = ()) -> VoiceBank:
        """Load every `*.json` in a `voice_styles` directory."""
        files = sorted(Path(path).glob("*.json"))
        if not files:
            raise FileNotFoundError(f"no voice style files in {path}")
        return cls([load_voice_file(f, languages) for f in files])

    @classmethod
    def demo(cls, languages: tuple[str, ...] = ()) -> VoiceBank:
        """The ten published voice names with deterministic demo vectors."""
        return cls([demo_voice(n, languages) for n in PUBLISHED_VOICES])

    def get(self, name: str) -> Voice:
        """The voice called `name` (empty means the default); raises UnknownVoiceError."""
        key = name or self.default
        try:
            return self._voices[key]
        except KeyError:
            known = ", ".join(self.names)
            raise UnknownVoiceError(f"unknown voice {name!r}; available: {known}") from None

    def __contains__(self, name: object) -> bool:
        return name in self._voices

    def __len__(self) -> int:
        return len(self._voices)

    @property
    def names(self) -> list[str]:
        return list(self._voices)

    def __iter__(self) -> Iterator[Voice]:
        return iter(self._voices.values())
