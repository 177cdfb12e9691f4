"""Backend choices for running the model: layouts, packed weights, precision, device plumbing.

The model package reads like the paper; everything that depends on the machine lives here and
is applied once, by the engine, when it is built (`prepare`).
"""

from __future__ import annotations

import torch
from torch import nn

from supertonic_grpc.backends.precision import (
    FP32,
    PRECISIONS,
    Precision,
    parse_precision,
    supported,
)

__all__ = ["PRECISIONS", "Precision", "parse_precision", "prepare"]


def prepare(
    model: nn.Module, device: torch.device, precision: str = FP32, compiled: bool = False
) -> Precision:
    """Prepare `model` (already on `device`) for inference in `precision`; returns it.

    CPU: every ConvNeXt stack goes channels-last with prepacked oneDNN matrix products, and
    the vector estimator's attention blocks use packed projections and fused attention, and the
    text encoders' relative-position transformers run on the band of offsets (all exact in
    fp32), unless torch.compile owns the graph and precision is fp32. GPU: fp32 runs
    the paper-form model; bf16 runs the ConvNeXt MLPs in bf16. Raises ValueError when the
    precision is unknown or not supported on the device.
    """
    from supertonic_grpc.backends import attention, relative_attention
    from supertonic_grpc.backends.convnext import install, restore

    p = parse_precision(precision)
    why = supported(p, device)
    if why:
        raise ValueError(f"precision {p} on {device}: {why}")
    restore(model)
    attention.restore(model)
    relative_attention.restore(model)
    if (device.type == "cpu" and not (compiled and p == FP32)) or p != FP32:
        install(model, p)
    if device.type == "cpu" and not compiled:
        attention.install(model)
        relative_attention.install(model)
    return p
