"""The ConvNeXt blocks for inference: channels-last, their MLPs prepacked, in a chosen precision.

The ConvNeXt blocks hold about 85% of the model's arithmetic (the vector estimator's 28 blocks
per flow step and the vocoder's 10). Written as in the paper, each runs a depthwise convolution
on `[B, C, T]`, then transposes for LayerNorm and the pointwise MLP. On x86 CPUs two things
make that slow: oneDNN's depthwise convolution on the channels-first layout is several times
slower than on channels-last (where its output is already the `[B, T, C]` the LayerNorm and
MLP want), and the MLP's matrix products re-pack their weights on every call. `prepare_cpu`
replaces each block's forward with `ChannelsLastConvNeXt`: the same arithmetic, channels-last,
with the MLP's weights packed once for oneDNN and GELU and the layer scale fused into them.
In float32 the result differs from the paper-form block only by rounding (about 1e-7).

Nothing in `supertonic_grpc.model` changes: `restore` puts the paper-form forwards back.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from supertonic_grpc.backends.precision import FP32, PointwiseMLP, Precision
from supertonic_grpc.model.layers import ConvNeXtBlock

log = logging.getLogger(__name__)


def _detached(t: torch.Tensor | None, what: str) -> torch.Tensor:
    if t is None:  # the model's blocks always have them
        raise ValueError(f"a ConvNeXt block without its {what}")
    return t.detach()


class ChannelsLastConvNeXt:
    """One ConvNeXt block's forward, channels-last: `x [B, C, T], mask [B, 1, T] | None`.

    A plain object, not a module: it holds derived, packed copies of the block's weights, so
    the block's state dict (and anything that saves or loads it) is untouched.
    """

    def __init__(self, block: ConvNeXtBlock, precision: Precision = FP32) -> None:
        conv: nn.Conv1d = block.dwconv.net if block.causal else block.dwconv  # type: ignore[assignment]
        self.masked_input = not block.causal
        pad = (conv.kernel_size[0] - 1) * conv.dilation[0]
        self.left, self.right = (pad, 0) if block.causal else (block.pad, block.pad)
        with torch.no_grad():
            # [C, 1, 1, K] channels-last: a 1-high 2D depthwise convolution over time.
            self.dw_weight = conv.weight.detach()[:, :, None, :].contiguous(
                memory_format=torch.channels_last
            )
            self.dw_bias = None if conv.bias is None else conv.bias.detach().clone()
            self.dilation = (1, conv.dilation[0])
            self.groups = conv.groups
            norm = block.norm.norm
            self.norm_shape = norm.normalized_shape
            self.norm_weight = _detached(norm.weight, "LayerNorm weight")
            self.norm_bias = _detached(norm.bias, "LayerNorm bias")
            self.norm_eps = norm.eps
            # residual + gamma * (W2 h + b2) == residual + (gamma W2) h + gamma b2.
            gamma = block.gamma.detach().reshape(-1)
            self.mlp = PointwiseMLP(
                block.pwconv1.weight.detach().squeeze(-1),
                _detached(block.pwconv1.bias, "first pointwise bias"),
                block.pwconv2.weight.detach().squeeze(-1) * gamma[:, None],
                _detached(block.pwconv2.bias, "second pointwise bias") * gamma,
                precision,
            )

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, T + left + right, C], edge values repeated (replicate padding)."""
        xt = x.transpose(1, 2)
        parts = [xt]
        if self.left:
            parts.insert(0, xt[:, :1].expand(-1, self.left, -1))
        if self.right:
            parts.append(xt[:, -1:].expand(-1, self.right, -1))
        return torch.cat(parts, dim=1)

    def __call__(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        residual = x
        if mask is not None and self.masked_input:
            x = x * mask
        xp = self._pad(x)
        # [B, T', C] viewed as a channels-last [B, C, 1, T']: no copy, and oneDNN's fast path.
        y = F.conv2d(
            xp.transpose(1, 2).unsqueeze(2), self.dw_weight, self.dw_bias,
            dilation=self.dilation, groups=self.groups,
        )  # fmt: skip
        y = y.squeeze(2).transpose(1, 2)  # [B, T, C], contiguous
        mask_t = None if mask is None else mask.transpose(1, 2)
        if mask_t is not None:
            y = y * mask_t
        y = F.layer_norm(y, self.norm_shape, self.norm_weight, self.norm_bias, self.norm_eps)
        y = residual + self.mlp(y).transpose(1, 2)
        return y if mask is None else y * mask


def install(model: nn.Module, precision: Precision = FP32) -> int:
    """Give every ConvNeXt block of `model` the channels-last forward; returns how many.

    Idempotent; call it after the model's weights are loaded and it is on its device.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, ConvNeXtBlock):
            # An instance attribute shadows the class's forward; nn.Module.__call__ uses it.
            object.__setattr__(module, "forward", ChannelsLastConvNeXt(module, precision))
            count += 1
    log.info("backend: %d ConvNeXt blocks channels-last, MLPs in %s", count, precision)
    return count


def restore(model: nn.Module) -> None:
    """Undo `install`: every block runs its paper-form forward again."""
    for module in model.modules():
        if isinstance(module, ConvNeXtBlock) and "forward" in module.__dict__:
            del module.__dict__["forward"]


def is_prepared(model: nn.Module) -> bool:
    return any(isinstance(m, ConvNeXtBlock) and "forward" in m.__dict__ for m in model.modules())
