"""Weights: the published state-dict layout, safetensors round trips, refusals, pseudo recipe."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from reference import reference_dir
from safetensors.torch import save_file

from supertonic_grpc.model import Supertonic, build_model
from supertonic_grpc.model.defaults import default_config_dict
from supertonic_grpc.model.weights import (
    WeightsError,
    check_state_dict,
    load_pseudo_weights,
    load_weights,
    manifest,
    pseudo_state_dict,
    pseudo_tensor,
    read_manifest,
    save_weights,
)


@pytest.fixture(scope="module")
def model() -> Supertonic:
    m = build_model(default_config_dict())
    load_pseudo_weights(m)
    return m


@pytest.fixture(scope="module")
def state(model: Supertonic) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_layout_equals_published_manifest(model: Supertonic) -> None:
    published = read_manifest(reference_dir() / "state_dict_manifest.json")
    ours = manifest(model)
    assert len(ours) == len(published) == 703
    # Compare entry by entry first so a failure names the tensor.
    for got, want in zip(ours, published, strict=True):
        assert got == want, f"{got} != {want}"
    assert json.loads(json.dumps(ours)) == published


def test_safetensors_round_trip(
    model: Supertonic, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    path = tmp_path / "weights.safetensors"
    save_weights(model, path)
    fresh = build_model(default_config_dict())
    load_weights(fresh, path)  # strict=True inside
    loaded = fresh.state_dict()
    assert list(loaded) == list(state)
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype, name
        assert torch.equal(loaded[name], tensor), name


def _broken(state: dict[str, torch.Tensor], kind: str) -> tuple[dict[str, torch.Tensor], str]:
    """A copy of `state` with one defect, and the tensor name the error must mention."""
    broken = dict(state)
    if kind == "missing":
        name = "vector_estimator.proj_in.net.weight"
        name = name if name in broken else sorted(broken)[len(broken) // 2]
        del broken[name]
    elif kind == "extra":
        name = "vocoder.not_a_layer.weight"
        broken[name] = torch.zeros(4)
    else:
        name = next(k for k, v in broken.items() if v.ndim >= 2)
        broken[name] = torch.zeros(*broken[name].shape[:-1], broken[name].shape[-1] + 1)
    return broken, name


@pytest.mark.parametrize("kind", ["missing", "extra", "misshaped"])
def test_defective_files_are_refused(
    kind: str, state: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    broken, name = _broken(state, kind)
    path = tmp_path / f"{kind}.safetensors"
    save_file({k: v.contiguous() for k, v in broken.items()}, str(path))
    target = build_model(default_config_dict())
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(WeightsError, match=name.replace(".", r"\.")):
        load_weights(target, path)
    # Refused before loading anything: the model is untouched.
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())


def test_check_state_dict_accepts_exact_layout(
    model: Supertonic, state: dict[str, torch.Tensor]
) -> None:
    check_state_dict(model, state)


def test_pseudo_recipe_matches_reference_formula() -> None:
    name, shape = "text_encoder.some.weight", (3, 4)
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    want = (rng.standard_normal(shape) * 0.05).astype(np.float32)
    got = pseudo_tensor(name, shape, torch.float32)
    np.testing.assert_array_equal(got.numpy(), want)


@pytest.mark.parametrize("suffix", ["running_var", "std", "scale"])
def test_pseudo_positive_tensors(suffix: str) -> None:
    name = f"vocoder.block.{suffix}"
    x = pseudo_tensor(name, (64,), torch.float32)
    assert bool((x >= 1.0).all())
    raw = pseudo_tensor(f"vocoder.block.{suffix}_not", (64,), torch.float32)
    assert bool((raw < 0).any()), "only the listed suffixes are made positive"


def test_pseudo_integer_tensors_are_zero(state: dict[str, torch.Tensor]) -> None:
    ints = {k: v for k, v in state.items() if not v.dtype.is_floating_point}
    assert ints, "the published layout has an int64 num_batches_tracked"
    for name, tensor in ints.items():
        assert tensor.dtype == torch.int64, name
        assert not tensor.any(), name


def test_pseudo_tensor_keeps_the_requested_shape(state: dict[str, torch.Tensor]) -> None:
    # The vocoder's 0-d `normalizer.scale` must come back 0-d, or check_state_dict refuses
    # the pseudo state dict as mis-shaped.
    for name, tensor in state.items():
        assert pseudo_tensor(name, tensor.shape, tensor.dtype).shape == tensor.shape, name


def test_pseudo_weights_are_deterministic(
    model: Supertonic, state: dict[str, torch.Tensor]
) -> None:
    again = pseudo_state_dict(model)
    assert list(again) == list(state)
    # Values only: the shape of 0-d tensors is the previous test's business.
    assert all(torch.equal(again[k].reshape(v.shape), v) for k, v in state.items())
    a = pseudo_tensor("a.weight", (8,), torch.float32)
    b = pseudo_tensor("b.weight", (8,), torch.float32)
    assert not torch.equal(a, b), "each tensor is seeded by its own name"
    positives = [k for k in state if k.endswith(("running_var", "std", "scale"))]
    assert positives
    assert all(bool((state[k] > 0).all()) for k in positives)
