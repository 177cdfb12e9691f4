"""Numeric precision: which arithmetic may run below float32, and how.

The policy is narrow on purpose. Only the ConvNeXt blocks' pointwise MLPs (their two matrix
products, which are most of the model's arithmetic) run in reduced precision; their inputs
and outputs stay float32, so the residual stream, every norm, the attention, the time
embedding (`t * 1000 * freqs` has angle errors of radians in bfloat16), the rotary positions
(half of 0..999 are not representable in bfloat16), the Euler update and the masks are all
computed in float32.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
import torch.nn.functional as F

from supertonic_grpc.backends import onednn

Precision = Literal["fp32", "bf16", "int8"]
FP32: Precision = "fp32"
BF16: Precision = "bf16"
INT8: Precision = "int8"
PRECISIONS: tuple[Precision, ...] = (FP32, BF16, INT8)


def parse_precision(text: str) -> Precision:
    """'fp32' | 'bf16' | 'int8' (case-insensitive), else ValueError naming the choices."""
    value = text.strip().lower()
    for p in PRECISIONS:
        if value == p:
            return p
    raise ValueError(f"precision: {text!r} is not one of {', '.join(PRECISIONS)}")


def supported(precision: Precision, device: torch.device) -> str | None:
    """None when `precision` can run on `device`, else why not."""
    if precision == INT8 and device.type != "cpu":
        return "int8 is CPU only (dynamic quantization)"
    if precision == BF16 and device.type == "cpu" and not torch.backends.mkldnn.is_available():
        return "bf16 on CPU needs oneDNN"
    return None


class PointwiseMLP:
    """`[..., C] -> [..., C]`: W2 gelu(W1 y + b1) + b2, in the given precision.

    On a CPU, fp32 and bf16 run as oneDNN matrix products on weights packed once, with GELU
    fused into the first (bf16 uses AMX where the CPU has it); elsewhere as plain F.linear in
    that dtype. int8 (CPU) quantizes the weights per output channel and the activations per call.
    Output is float32 whatever the precision.
    """

    def __init__(
        self,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
        precision: Precision = FP32,
    ) -> None:
        self.precision = precision
        if precision == INT8:
            self.packed = [_int8_pack(w1, b1), _int8_pack(w2, b2)]
            return
        self.dtype = torch.bfloat16 if precision == BF16 else torch.float32
        self.onednn = w1.device.type == "cpu"
        self.w1, self.w2 = w1.to(self.dtype).contiguous(), w2.to(self.dtype).contiguous()
        self.b1, self.b2 = b1.to(self.dtype).contiguous(), b2.to(self.dtype).contiguous()
        if self.onednn:
            self.w1, self.w2 = onednn.pack(self.w1), onednn.pack(self.w2)

    def __call__(self, y: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """`y [..., C]` -> the MLP's output, plus `residual` (float32, y's shape) if given."""
        if self.precision == INT8:
            h = F.gelu(torch.ops.quantized.linear_dynamic(y, self.packed[0]))
            out = torch.ops.quantized.linear_dynamic(h, self.packed[1])
        elif not self.onednn:
            y = y.to(self.dtype)
            out = F.linear(F.gelu(F.linear(y, self.w1, self.b1)), self.w2, self.b2).float()
        else:
            h = onednn.linear(y.to(self.dtype), self.w1, self.b1, activation="gelu")
            out = onednn.linear(h, self.w2, self.b2).float()
        # Not oneDNN's fused binary add: measured 15x slower than the product plus an add here.
        return out if residual is None else out.add_(residual)


def _int8_pack(w: torch.Tensor, b: torch.Tensor) -> object:
    """Symmetric per-output-channel int8 weights, packed for `quantized.linear_dynamic`."""
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    with warnings.catch_warnings():
        # torch 2.13 deprecates quantized tensors (the dynamic int8 kernels still need them);
        # int8 is the least useful option here anyway (bf16 is faster and closer on AMX).
        warnings.simplefilter("ignore", UserWarning)
        q = torch.quantize_per_channel(
            w.float().contiguous(), scale.double(), torch.zeros_like(scale, dtype=torch.long),
            0, torch.qint8,
        )  # fmt: skip
    return torch.ops.quantized.linear_prepack(q, b.float().contiguous())
