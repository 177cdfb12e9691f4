"""Weights: safetensors load/save in the published layout, and deterministic pseudo weights."""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

log = logging.getLogger(__name__)

WEIGHTS_FILE = "supertonic.safetensors"
# Names whose pseudo values must be positive (variances, standard deviations, scales).
_POSITIVE_SUFFIXES = ("running_var", "std", "scale")


class WeightsError(ValueError):
    """A weights file does not match the model's layout; the message names the tensor."""


def pseudo_tensor(name: str, shape: Iterable[int], dtype: torch.dtype) -> torch.Tensor:
    """The published pseudo-weights recipe for one tensor (seeded by the CRC32 of its name)."""
    shape = tuple(int(s) for s in shape)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    if name.endswith(_POSITIVE_SUFFIXES):
        x = np.float32(1.0) + np.abs(x)
    # reshape: ascontiguousarray turns a 0-d array (a scalar buffer) into shape (1,).
    return torch.from_numpy(np.ascontiguousarray(x).reshape(shape)).to(dtype)


def pseudo_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Deterministic pseudo weights for every entry of `model.state_dict()`."""
    return {name: pseudo_tensor(name, t.shape, t.dtype) for name, t in model.state_dict().items()}


def load_pseudo_weights(model: nn.Module) -> None:
    """Fill `model` with the pseudo weights (the demo fallback and the parity harness)."""
    model.load_state_dict(pseudo_state_dict(model), strict=True)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise `WeightsError` naming the first missing, unexpected or mis-shaped tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing:
        raise WeightsError(f"missing tensor {missing[0]!r} ({len(missing)} missing in all)")
    if extra:
        raise WeightsError(f"unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all)")
    for name, ref in expected.items():
        got = state[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise WeightsError(
                f"tensor {name!r} has shape {list(got.shape)}, expected {list(ref.shape)}"
            )


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a `supertonic.safetensors` file into `model` with strict checking."""
    state = load_file(str(path))
    check_state_dict(model, state)
    model.load_state_dict(state, strict=True)
    log.info("loaded %d tensors from %s", len(state), path)


def save_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Write `model`'s state dict as safetensors in the published layout."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(state, str(path))


def manifest(model: nn.Module) -> list[dict[str, object]]:
    """The state-dict layout as the reference `state_dict_manifest.json` lists it."""
    return [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in model.state_dict().items()
    ]


def read_manifest(path: str | os.PathLike[str]) -> list[dict[str, object]]:
    """Read a `state_dict_manifest.json`."""
    return json.loads(Path(path).read_text())
