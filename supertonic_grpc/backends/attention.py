"""The vector estimator's cross-attention blocks for CPU inference, channels-last, in float32.

Each flow step runs eight of them (four text, four style). Written as in the paper, each
multiplies by masks that are all ones for a batch of one, recomputes the style keys
(`tanh(W_key key_emb)`, a function of the weights alone) on every call, and runs scores,
masking, softmax and the weighted sum as separate kernels on `[B, H, L, T]`. The prepared
forward (`install`): projections on weights packed once for oneDNN, the style keys computed
once, `scaled_dot_product_attention` for the attention itself (one fused kernel; a masked key
gets exactly zero weight, as the paper's -1e4 logit does whenever a row has a real key, which
every row has), and no mask arithmetic
when a mask is all ones. Rotary positions are the model's own `_rotate`, in float32.

The text side of each block (the text's rotated keys and values, the voice's style values)
is the same at every flow step of a chunk, so it is computed once per batch of inputs: a block
keeps the last text (or style) tensor it was given and what it made of it, and reuses that
while it is given the very same tensor object again. The engine passes the same tensors for
consecutive steps of the same batch and never writes into them (`Engine._step_conditions`),
so a chunk stepping with the same company computes its text side once instead of at every
step. Any other caller must not write into a text or style tensor it passes again (inference
tensors carry no version counter to catch that).

In every precision these blocks stay float32 (see `precision.py`); the result differs from the
paper form only by rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from supertonic_grpc.backends import forwards, onednn
from supertonic_grpc.backends.convnext import frame_mask
from supertonic_grpc.model.layers import ChannelLayerNorm, Linear
from supertonic_grpc.model.vector_estimator import StyleBlock, TextBlock


class PackedLinear:
    """`nn.Linear` on `[..., in]` with its weight packed once for oneDNN."""

    def __init__(self, layer: Linear) -> None:
        lin = layer.linear
        self.bias = None if lin.bias is None else lin.bias.detach().clone()
        self.weight = onednn.pack(lin.weight.detach().contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return onednn.linear(x.contiguous(), self.weight, self.bias)


class ChannelsLastNorm:
    """A `ChannelLayerNorm` applied to `[B, L, C]` (no transposes)."""

    def __init__(self, norm: ChannelLayerNorm) -> None:
        ln = norm.norm
        self.shape, self.eps = ln.normalized_shape, ln.eps
        self.weight, self.bias = ln.weight.detach(), ln.bias.detach()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.shape, self.weight, self.bias, self.eps)


def _residual_norm(
    x: torch.Tensor,
    out: torch.Tensor,
    proj: PackedLinear,
    norm: ChannelsLastNorm,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """`norm(x + proj(out) * mask) * mask` on `[B, L, C]`, returned as a `[B, C, L]` view."""
    if mask is None:
        y = norm(proj(out).add_(x))
    else:
        y = norm(torch.addcmul(x, proj(out), mask)).mul_(mask)
    return y.transpose(1, 2)


def same_objects(a: Sequence[object], b: Sequence[object]) -> bool:
    """Whether two sequences hold the very same objects, in order (identity, not equality)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b, strict=True))


class _Memo:
    """The last inputs' derived tensors, reused while the same input objects come back. Holds
    the inputs themselves, so their identity cannot be reused by new tensors meanwhile."""

    def __init__(self) -> None:
        self._inputs: tuple[Tensor, ...] = ()
        self._value: tuple[Tensor, ...] = ()

    def get(
        self, inputs: tuple[Tensor, ...], make: Callable[[], tuple[Tensor, ...]]
    ) -> tuple[Tensor, ...]:
        if not same_objects(inputs, self._inputs):
            self._inputs, self._value = inputs, make()
        return self._value


class FastTextBlock:
    """`TextBlock.forward`: x [B, C, L], text [B, Ct, T], masks [B, 1, L] / [B, 1, T]."""

    def __init__(self, block: TextBlock) -> None:
        attn = block.attn
        self.attn = attn
        self.h, self.d = attn.n_heads, attn.head_dim
        self.q, self.k, self.v = (PackedLinear(m) for m in (attn.W_query, attn.W_key, attn.W_value))
        self.o = PackedLinear(attn.out_fc)
        self.norm = ChannelsLastNorm(block.norm)
        self.memo = _Memo()

    def _text_side(self, text: Tensor, text_mask: Tensor) -> tuple[Tensor, ...]:
        """Rotated keys, values `[B, H, T, D]`, and the key mask (or an empty tensor)."""
        b, h, d = text.shape[0], self.h, self.d
        tt = text.transpose(1, 2)
        k = self.k(tt).view(b, -1, h, d).transpose(1, 2)
        v = self.v(tt).view(b, -1, h, d).transpose(1, 2)
        keys = torch.empty(0) if frame_mask(text_mask) is None else (text_mask[:, None] > 0)
        return self.attn._rotate(k, text_mask), v, keys

    def __call__(self, x: Tensor, text: Tensor, latent_mask: Tensor, text_mask: Tensor) -> Tensor:
        b, _, length = x.shape
        h, d = self.h, self.d
        xt = x.transpose(1, 2).contiguous()  # free when x is a channels-last view
        q = self.q(xt).view(b, length, h, d).transpose(1, 2)
        q = self.attn._rotate(q, latent_mask)
        k, v, keys = self.memo.get((text, text_mask), lambda: self._text_side(text, text_mask))
        mask = keys if keys.numel() else None
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=(h * d) ** -0.5)
        out = out.transpose(1, 2).reshape(b, length, h * d)
        return _residual_norm(xt, out, self.o, self.norm, frame_mask(latent_mask))


class FastStyleBlock:
    """`StyleBlock.forward`: x [B, C, L], style [B, N, S], mask [B, 1, L]."""

    def __init__(self, block: StyleBlock) -> None:
        attn = block.attention
        self.h, self.d = attn.n_heads, attn.head_dim
        with torch.no_grad():
            # The keys depend on the weights alone: [1, H, N, D], computed once.
            keys = torch.tanh(attn.W_key(attn.key_emb))
            self.keys = keys.view(1, -1, self.h, self.d).transpose(1, 2).contiguous()
        self.q, self.v = PackedLinear(attn.W_query), PackedLinear(attn.W_value)
        self.o = PackedLinear(attn.out_fc)
        self.norm = ChannelsLastNorm(block.norm)
        self.memo = _Memo()

    def __call__(self, x: torch.Tensor, style: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, _, length = x.shape
        h, d = self.h, self.d
        xt = x.transpose(1, 2).contiguous()
        q = self.q(xt).view(b, length, h, d).transpose(1, 2)
        (v,) = self.memo.get((style,), lambda: (self.v(style).view(b, -1, h, d).transpose(1, 2),))
        k = self.keys.expand(b, -1, -1, -1)
        out = F.scaled_dot_product_attention(q, k, v, scale=(h * d) ** -0.5)
        out = out.transpose(1, 2).reshape(b, length, h * d)
        return _residual_norm(xt, out, self.o, self.norm, frame_mask(mask))


_PREPARED = {TextBlock: FastTextBlock, StyleBlock: FastStyleBlock}


def install(model: nn.Module) -> int:
    """Give every text and style block of `model` (on the CPU) its prepared forward; returns
    how many. Idempotent."""
    return forwards.install(model, _PREPARED)


def restore(model: nn.Module) -> None:
    """Undo `install`."""
    forwards.restore(model, tuple(_PREPARED))
