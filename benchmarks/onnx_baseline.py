"""ONNX Runtime as the baseline: the project's own four stages, exported once and cached.

A user who does not run this server runs the official ONNX graphs in ONNX Runtime, so that is
what the engine is measured against. The stages are exported from the (unprepared, fp32)
model with every axis dynamic and cached under `.cache/onnx/<key>/`, where the key changes
with the weights, the config and the torch version. `OrtEngine` runs them through the
engine's own padding, masks, step loop and per-item vocoder (a shallow copy of the engine
with its four stage callables swapped), so the two differ only in the runtime under the
stages.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supertonic_grpc.engine import Engine, Synthesized, Utterance
from supertonic_grpc.model import Supertonic

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path(".cache") / "onnx"
# Engine attribute -> the model stage it calls.
STAGES = {
    "_text_encoder": "text_encoder",
    "_duration": "duration_predictor",
    "_step": "vector_estimator",
    "_vocoder": "vocoder",
}


class BaselineUnavailable(RuntimeError):
    """onnx/onnxruntime are missing or the export failed; the message says which."""


def _require() -> Any:
    try:
        import onnx  # noqa: F401  (torch.onnx.export writes through it)
        import onnxruntime
    except ImportError as exc:
        raise BaselineUnavailable(f"{exc.name} not installed (pip install -e '.[bench]')") from None
    return onnxruntime


def model_key(model: Supertonic) -> str:
    """A short hash of the weights, config and torch version: the cache directory's name."""
    h = hashlib.blake2b(digest_size=8)
    h.update(repr(model.config).encode())
    h.update(torch.__version__.encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().float().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()


def example_inputs(model: Supertonic, batch: int = 2, text_len: int = 24, latent_len: int = 16):
    """Small inputs of each stage, in the published order, for the exporter to trace."""
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, cfg.text_encoder.vocab_size, (batch, text_len), generator=gen)
    text_mask = torch.ones(batch, 1, text_len)
    text_mask[-1, :, text_len // 2 :] = 0.0
    latent_mask = torch.ones(batch, 1, latent_len)
    latent_mask[-1, :, latent_len // 2 :] = 0.0
    te, vf, dp = cfg.text_encoder, cfg.vector_field, cfg.duration
    style_ttl = torch.randn(batch, te.style_tokens, te.dim, generator=gen)
    style_dp = torch.randn(batch, dp.style_tokens, dp.style_dim, generator=gen)
    text_emb = torch.randn(batch, vf.text_dim, text_len, generator=gen) * text_mask
    latent = torch.randn(batch, cfg.latent_channels, latent_len, generator=gen) * latent_mask
    steps = torch.full((batch,), 5.0)
    return {
        "text_encoder": (ids, style_ttl, text_mask),
        "duration_predictor": (ids, style_dp, text_mask),
        "vector_estimator": (
            latent, text_emb, style_ttl, latent_mask, text_mask, torch.zeros(batch), steps,
        ),
        "vocoder": (latent,),
    }  # fmt: skip


def export_stages(model: Supertonic, cache_dir: Path = DEFAULT_CACHE) -> dict[str, Path]:
    """Export each stage to `<cache_dir>/<key>/<stage>.onnx` unless already there."""
    _require()
    target = cache_dir / model_key(model)
    paths = {stage: target / f"{stage}.onnx" for stage in STAGES.values()}
    if all(p.is_file() for p in paths.values()):
        return paths
    target.mkdir(parents=True, exist_ok=True)
    model = model.float().eval()
    for stage, args in example_inputs(model).items():
        names = [f"in{i}" for i in range(len(args))]
        # Every axis dynamic: batch, text and latent lengths all vary between calls.
        axes: dict[str, dict[int, str]] = {}
        for n, a in zip(names, args, strict=True):
            axes[n] = {d: f"{n}_{d}" for d in range(a.dim())}
        tmp = paths[stage].with_suffix(".tmp")
        log.info("exporting %s to %s", stage, paths[stage])
        try:
            # The TorchScript exporter warns about itself and about traced shapes; it is the
            # one that handles these graphs with every axis dynamic.
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    getattr(model, stage), args, str(tmp), input_names=names,
                    output_names=["out"], dynamic_axes=axes, dynamo=False,
                )  # fmt: skip
        except Exception as exc:  # the exporter's failures are many and all mean the same
            raise BaselineUnavailable(f"export of {stage} failed: {exc}") from exc
        tmp.replace(paths[stage])  # a crash mid-export never leaves a half file in the cache
    return paths


def _numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return np.ascontiguousarray((t.float() if t.is_floating_point() else t).numpy())


class OrtStage:
    """One exported stage as a callable over torch tensors (the engine's stage interface)."""

    def __init__(self, path: Path, threads: int) -> None:
        ort = _require()
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        # The exporter prunes inputs a stage does not read (the vector estimator's masks).
        self.inputs = [(i.name, int(i.name[2:])) for i in self.session.get_inputs()]

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        feed = {name: _numpy(args[i]) for name, i in self.inputs}
        return torch.from_numpy(self.session.run(None, feed)[0])


class OrtEngine:
    """`engine.synthesize` with the four stages in ONNX Runtime; everything else the engine's."""

    def __init__(self, engine: Engine, paths: dict[str, Path], threads: int) -> None:
        if engine.device.type != "cpu":
            raise BaselineUnavailable(f"the ONNX Runtime baseline is CPU only, not {engine.device}")
        self._engine = copy.copy(engine)  # shares the model; only the stage callables differ
        for attr, stage in STAGES.items():
            setattr(self._engine, attr, OrtStage(paths[stage], threads))
        self.device = engine.device

    def synthesize(self, items: Sequence[Utterance]) -> list[Synthesized]:
        return self._engine.synthesize(items)


def baseline(
    engine: Engine, model: Supertonic, cache_dir: Path = DEFAULT_CACHE, threads: int = 0
) -> OrtEngine:
    """Export (or reuse) the stages of `model` and wrap them around `engine`'s loop."""
    paths = export_stages(model, cache_dir)
    return OrtEngine(engine, paths, threads or torch.get_num_threads())


def max_deviation(a: Callable[[], list[Synthesized]], b: Callable[[], list[Synthesized]]) -> float:
    """Largest absolute sample difference between two runs of the same batch."""
    worst = 0.0
    for x, y in zip(a(), b(), strict=True):
        n = min(len(x.audio), len(y.audio))
        if n:
            worst = max(worst, float(np.abs(x.audio[:n] - y.audio[:n]).max()))
    return worst
