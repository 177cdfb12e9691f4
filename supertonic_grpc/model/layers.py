"""Building blocks shared by the four networks.

Tensors are channels-first, `[B, C, T]`, as in the published graphs. Masks are `[B, 1, T]`
with 1.0 on real positions and 0.0 on padding. Submodule names follow the published state
dict, so `supertonic.safetensors` loads with `strict=True`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-6
# Masked attention logits: large and finite, so a fully masked row stays finite.
MASK_LOGIT = -1e4


class Linear(nn.Module):
    """`nn.Linear` under the name `.linear`, as the published weights store it."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[..., in_dim] -> [..., out_dim]"""
        return self.linear(x)


class PointwiseConv(nn.Module):
    """A 1x1 convolution under the name `.net`."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.net = nn.Conv1d(in_dim, out_dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_dim, T] -> [B, out_dim, T]"""
        return self.net(x)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of a `[B, C, T]` tensor."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> [B, C, T]"""
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class CausalConv(nn.Module):
    """Conv1d with left-only edge padding under the name `.net` (the vocoder's convolutions).

    Edge (replicate) padding on the left keeps the first frames free of zero-padding clicks
    while each output depends only on the past, as in the published vocoder.
    """

    def __init__(
        self, in_dim: int, out_dim: int, kernel: int, dilation: int = 1, groups: int = 1
    ) -> None:
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.net = nn.Conv1d(in_dim, out_dim, kernel, dilation=dilation, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_dim, T] -> [B, out_dim, T]"""
        return self.net(F.pad(x, (self.pad, 0), mode="replicate"))


class ConvNeXtBlock(nn.Module):
    """Depthwise conv -> LayerNorm -> pointwise MLP (GELU) -> layer scale, plus the residual.

    The text-side blocks pad symmetrically with edge values and re-apply the mask so padded
    positions never leak into real ones; the vocoder's blocks are causal and unmasked.
    """

    def __init__(
        self, dim: int, hidden_dim: int, kernel: int, dilation: int = 1, causal: bool = False
    ) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((1, dim, 1), 1e-6))
        self.causal = causal
        if causal:
            self.dwconv: nn.Module = CausalConv(dim, dim, kernel, dilation, groups=dim)
        else:
            self.dwconv = nn.Conv1d(dim, dim, kernel, dilation=dilation, groups=dim)
            self.pad = (kernel - 1) * dilation // 2
        self.norm = ChannelLayerNorm(dim)
        self.pwconv1 = nn.Conv1d(dim, hidden_dim, 1)
        self.pwconv2 = nn.Conv1d(hidden_dim, dim, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, T], mask: [B, 1, T] or None -> [B, C, T]"""
        residual = x
        if self.causal:
            y = self.dwconv(x)
        else:
            if mask is not None:
                x = x * mask
            y = self.dwconv(F.pad(x, (self.pad, self.pad), mode="replicate"))
            if mask is not None:
                y = y * mask
        # The pointwise MLP runs as matrix products on [B, T, C]: faster than 1x1 convs on
        # CPU, and the LayerNorm wants that layout anyway.
        y = self.norm.norm(y.transpose(1, 2))
        y = F.linear(y, self.pwconv1.weight.squeeze(-1), self.pwconv1.bias)
        y = F.linear(F.gelu(y), self.pwconv2.weight.squeeze(-1), self.pwconv2.bias)
        y = residual + self.gamma * y.transpose(1, 2)
        return y if mask is None else y * mask


class ConvNeXtStack(nn.Module):
    """ConvNeXt blocks in sequence, stored as `.convnext.{i}`."""

    def __init__(self, dim: int, hidden_dim: int, kernel: int, dilations: tuple[int, ...]) -> None:
        super().__init__()
        self.convnext = nn.ModuleList(ConvNeXtBlock(dim, hidden_dim, kernel, d) for d in dilations)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C, T], mask: [B, 1, T] -> [B, C, T]"""
        for block in self.convnext:
            x = block(x, mask)
        return x


class RelativeSelfAttention(nn.Module):
    """Multi-head self-attention with learned relative-position keys and values.

    Relative offsets beyond `window` get no embedding (zero), as in VITS' text encoder.
    """

    def __init__(self, channels: int, n_heads: int, window: int = 4) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = channels // n_heads
        self.window = window
        self.conv_q = nn.Conv1d(channels, channels, 1)
        self.conv_k = nn.Conv1d(channels, channels, 1)
        self.conv_v = nn.Conv1d(channels, channels, 1)
        self.conv_o = nn.Conv1d(channels, channels, 1)
        self.emb_rel_k = nn.Parameter(torch.zeros(1, 2 * window + 1, self.head_dim))
        self.emb_rel_v = nn.Parameter(torch.zeros(1, 2 * window + 1, self.head_dim))

    def _relative_table(self, emb: torch.Tensor, length: int) -> torch.Tensor:
        """[1, 2w+1, D] -> [T, T, D]: the embedding of offset (j - i), zero outside the window."""
        pos = torch.arange(length, device=emb.device)
        offset = pos[None, :] - pos[:, None]
        inside = (offset.abs() <= self.window).unsqueeze(-1)
        table = emb[0][(offset.clamp(-self.window, self.window) + self.window)]
        return table * inside.to(emb.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T], mask: [B, 1, T] -> [B, C, T]"""
        b, c, t = x.shape
        h, d = self.n_heads, self.head_dim

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, h, d, t).transpose(2, 3)  # [B, H, T, D]

        q = heads(self.conv_q(x)) / d**0.5
        k, v = heads(self.conv_k(x)), heads(self.conv_v(x))
        rel_k = self._relative_table(self.emb_rel_k, t)
        rel_v = self._relative_table(self.emb_rel_v, t)
        scores = q @ k.transpose(-1, -2) + torch.einsum("bhid,ijd->bhij", q, rel_k)
        pair_mask = mask.unsqueeze(-1) * mask.unsqueeze(-2)  # [B, 1, T, T]
        scores = scores.masked_fill(pair_mask == 0, MASK_LOGIT)
        attn = scores.softmax(dim=-1)
        out = attn @ v + torch.einsum("bhij,ijd->bhid", attn, rel_v)
        return self.conv_o(out.transpose(2, 3).reshape(b, c, t))


class FeedForward(nn.Module):
    """Two 1x1 convolutions with ReLU, masked before each."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv_1 = nn.Conv1d(channels, hidden, 1)
        self.conv_2 = nn.Conv1d(hidden, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T], mask: [B, 1, T] -> [B, C, T]"""
        y = torch.relu(self.conv_1(x * mask))
        return self.conv_2(y * mask) * mask


class AttentionEncoder(nn.Module):
    """Post-norm transformer encoder: (self-attention, norm, FFN, norm) x n_layers."""

    def __init__(self, channels: int, hidden: int, n_heads: int, n_layers: int) -> None:
        super().__init__()
        self.attn_layers = nn.ModuleList(
            RelativeSelfAttention(channels, n_heads) for _ in range(n_layers)
        )
        self.norm_layers_1 = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))
        self.ffn_layers = nn.ModuleList(FeedForward(channels, hidden) for _ in range(n_layers))
        self.norm_layers_2 = nn.ModuleList(ChannelLayerNorm(channels) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T], mask: [B, 1, T] -> [B, C, T]"""
        x = x * mask
        for attn, norm1, ffn, norm2 in zip(
            self.attn_layers, self.norm_layers_1, self.ffn_layers, self.norm_layers_2, strict=True
        ):
            x = norm1(x + attn(x, mask))
            x = norm2(x + ffn(x, mask))
        return x * mask


class CharEmbedder(nn.Module):
    """Token embedding stored as `.char_embedder`, returned channels-first."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.char_embedder = nn.Embedding(vocab_size, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [B, T] int64 -> [B, dim, T]"""
        return self.char_embedder(ids).transpose(1, 2)
