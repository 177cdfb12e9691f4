"""The text encoders' relative-position transformer for CPU inference, channels-last, float32.

Both the text encoder and the duration predictor end their character encoding with a VITS-style
`AttentionEncoder`: self-attention whose logits and values gain a learned embedding of the
offset `j - i`, zero beyond a window of +-4. Written as in the paper, each layer expands the
nine embeddings into a `[T, T, D]` table (a gather and a masking multiply over T^2 D floats)
and contracts queries and attention weights against it with two batched products over every
position pair; its four projections and two feed-forward layers are 1x1 convolutions on
`[B, C, T]`, each with a transposed copy around its LayerNorm. That is most of admission's
time at batch one.

The prepared forward (`install`) computes the same sums on `[B, T, C]`:
- the relative terms on the band alone: `q @ E_k^T` is `[.., T, 9]`, laid onto the
  diagonals of the logits through a strided view, and the attention weights on those
  diagonals, read back through the same view, times `E_v` (exact zeros elsewhere, as the
  table's zeros are);
- the query, key and value projections as one product on weights packed once for oneDNN,
  the output projection and the feed-forward layers likewise, ReLU fused into the first;
- padding keys masked with the paper's logit (-1e4); no mask arithmetic at all when the
  mask is all ones. Rows of padding positions differ from the paper form's (they attend
  to the real keys, not uniformly to all), but no real position reads them: they are
  masked keys, and the encoders mask their output.

In float32 the result differs from the paper form only by rounding (about 1e-6).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import torch
from torch import Tensor, nn

from supertonic_grpc.backends import forwards, onednn
from supertonic_grpc.backends.attention import ChannelsLastNorm
from supertonic_grpc.backends.convnext import enter_channels_last
from supertonic_grpc.model.layers import (
    MASK_LOGIT,
    AttentionEncoder,
    ChannelLayerNorm,
    FeedForward,
    RelativeSelfAttention,
)


def _pointwise(conv: nn.Conv1d) -> tuple[Tensor, Tensor | None]:
    """A 1x1 Conv1d as a packed `[out, in]` linear weight and its bias."""
    weight = onednn.pack(conv.weight.detach()[:, :, 0].contiguous())
    return weight, None if conv.bias is None else conv.bias.detach().clone()


def _diagonals(x: Tensor, window: int) -> Tensor:
    """A `[N, T, 2w+1]` view of `x [N, T, T + 2w]`: element `(n, i, k)` is `x[n, i, i + k]`."""
    n, t, width = x.shape
    return x.as_strided((n, t, 2 * window + 1), (t * width, width + 1, 1))


class FastRelativeAttention:
    """`RelativeSelfAttention.forward` on `[B, T, C]`; `key_pad [B, 1, 1, T]` is True on
    padding (None: no padding)."""

    def __init__(self, attn: RelativeSelfAttention) -> None:
        self.h, self.d, self.w = attn.n_heads, attn.head_dim, attn.window
        with torch.no_grad():
            scale = self.d**-0.5  # the paper scales the query after its projection
            weights = [attn.conv_q.weight * scale, attn.conv_k.weight, attn.conv_v.weight]
            biases = [attn.conv_q.bias * scale, attn.conv_k.bias, attn.conv_v.bias]
            self.qkv = onednn.pack(torch.cat(weights)[:, :, 0].contiguous())
            self.qkv_bias = torch.cat(biases).contiguous()
            self.out, self.out_bias = _pointwise(attn.conv_o)
            self.rel_k = attn.emb_rel_k.detach()[0].T.contiguous()  # [D, 2w+1]
            self.rel_v = attn.emb_rel_v.detach()[0].contiguous()  # [2w+1, D]

    def __call__(self, x: Tensor, key_pad: Tensor | None) -> Tensor:
        b, t, c = x.shape
        h, d, w = self.h, self.d, self.w
        qkv = onednn.linear(x, self.qkv, self.qkv_bias).view(b, t, 3, h, d)
        q, k, v = (qkv[:, :, i].transpose(1, 2).reshape(b * h, t, d) for i in range(3))
        band = q.new_zeros(b * h, t, t + 2 * w)
        _diagonals(band, w).copy_(q @ self.rel_k)  # logit of offset k - w at column i + k
        scores = torch.baddbmm(band[:, :, w : w + t], q, k.transpose(1, 2))
        if key_pad is not None:
            scores = scores.view(b, h, t, t).masked_fill_(key_pad, MASK_LOGIT).view(b * h, t, t)
        attn = scores.softmax(dim=-1)
        band.zero_()[:, :, w : w + t] = attn
        out = torch.baddbmm(_diagonals(band, w) @ self.rel_v, attn, v)  # [B*H, T, D]
        out = out.view(b, h, t, d).transpose(1, 2).reshape(b, t, c)
        return onednn.linear(out, self.out, self.out_bias)


class FastFeedForward:
    """`FeedForward.forward` on `[B, T, C]` with `mask_t [B, T, 1]` (None: all ones)."""

    def __init__(self, ffn: FeedForward) -> None:
        self.w1, self.b1 = _pointwise(ffn.conv_1)
        self.w2, self.b2 = _pointwise(ffn.conv_2)

    def __call__(self, x: Tensor, mask_t: Tensor | None) -> Tensor:
        if mask_t is None:
            y = onednn.linear(x, self.w1, self.b1, activation="relu")
            return onednn.linear(y, self.w2, self.b2)
        y = onednn.linear(x * mask_t, self.w1, self.b1, activation="relu").mul_(mask_t)
        return onednn.linear(y, self.w2, self.b2).mul_(mask_t)


class FastAttentionEncoder:
    """`AttentionEncoder.forward`: x `[B, C, T]`, mask `[B, 1, T]` -> `[B, C, T]` (a view of
    a channels-last tensor)."""

    def __init__(self, encoder: AttentionEncoder) -> None:
        # The ModuleLists hold these types (see AttentionEncoder.__init__).
        parts = cast(
            Iterable[tuple[RelativeSelfAttention, ChannelLayerNorm, FeedForward, ChannelLayerNorm]],
            zip(
                encoder.attn_layers, encoder.norm_layers_1, encoder.ffn_layers,
                encoder.norm_layers_2, strict=True,
            ),
        )  # fmt: skip
        self.layers = [
            (
                FastRelativeAttention(a),
                ChannelsLastNorm(n1),
                FastFeedForward(f),
                ChannelsLastNorm(n2),
            )
            for a, n1, f, n2 in parts
        ]

    def __call__(self, x: Tensor, mask: Tensor) -> Tensor:
        h, mask_t = enter_channels_last(x, mask)
        key_pad = None if mask_t is None else (mask == 0)[:, :, None, :]  # [B, 1, 1, T]
        for attn, norm1, ffn, norm2 in self.layers:
            h = norm1(h + attn(h, key_pad))
            h = norm2(h + ffn(h, mask_t))
        if mask_t is not None:
            h = h * mask_t
        return h.transpose(1, 2)


def install(model: nn.Module) -> int:
    """Give every AttentionEncoder of `model` (on the CPU, float32) its prepared forward;
    returns how many. Idempotent."""
    return forwards.install(model, {AttentionEncoder: FastAttentionEncoder})


def restore(model: nn.Module) -> None:
    """Undo `install`."""
    forwards.restore(model, (AttentionEncoder,))
