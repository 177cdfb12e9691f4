"""Vector estimator: one Euler step of conditional flow matching on the compressed latent."""

from __future__ import annotations

import math

import torch
from torch import nn

from supertonic_grpc.model.config import ConvNeXtConfig, VectorFieldConfig
from supertonic_grpc.model.layers import (
    MASK_LOGIT,
    ChannelLayerNorm,
    ConvNeXtStack,
    Linear,
    PointwiseConv,
)


def _stack(cfg: ConvNeXtConfig) -> ConvNeXtStack:
    return ConvNeXtStack(cfg.dim, cfg.hidden_dim, cfg.kernel_size, cfg.dilations)


class TimeEncoder(nn.Module):
    """Sinusoidal embedding of t = current_step / total_step, then an MLP with Mish."""

    def __init__(self, time_dim: int, hidden: int) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.mlp = nn.Sequential(Linear(time_dim, hidden), nn.Mish(), Linear(hidden, time_dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """t: [B] in [0, 1) -> [B, time_dim]"""
        half = self.time_dim // 2
        freqs = torch.exp(
            torch.arange(half, device=t.device, dtype=t.dtype) * (-math.log(10000.0) / (half - 1))
        )
        angles = (t * 1000.0)[:, None] * freqs[None, :]
        return self.mlp(torch.cat([angles.sin(), angles.cos()], dim=1))


class TimeCondition(nn.Module):
    """Adds a projection of the time embedding to every frame."""

    def __init__(self, dim: int, time_dim: int) -> None:
        super().__init__()
        self.linear = Linear(time_dim, dim)

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        """x: [B, C, L], time_emb: [B, time_dim] -> [B, C, L]"""
        return x + self.linear(time_emb).unsqueeze(2)


class RotaryTextAttention(nn.Module):
    """Latent-to-text cross-attention with length-aware rotary positions (LARoPE).

    Positions are divided by each sequence's own length, so a latent frame and the
    character at the same relative place in the utterance rotate alike: that is the
    alignment prior. `increments` holds the position grid and `theta` the frequencies.
    """

    def __init__(self, dim: int, text_dim: int, n_heads: int, max_len: int = 1000) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = text_dim // n_heads
        self.theta = nn.Parameter(torch.zeros(1, 1, self.head_dim // 2))
        self.increments = nn.Parameter(torch.zeros(1, max_len, 1))
        self.W_query = Linear(dim, text_dim)
        self.W_key = Linear(text_dim, text_dim)
        self.W_value = Linear(text_dim, text_dim)
        self.out_fc = Linear(text_dim, dim)

    def _rotate(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, D], mask: [B, 1, T] -> x rotated by position / length."""
        t = x.shape[2]
        length = mask.sum(dim=-1, keepdim=True)  # [B, 1, 1]
        angle = self.increments[:, :t] / length * self.theta  # [B, T, D/2]
        cos, sin = angle.cos().unsqueeze(1), angle.sin().unsqueeze(1)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        latent_mask: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x: [B, C, L], text: [B, Ct, T], masks [B, 1, L] / [B, 1, T] -> [B, C, L]"""
        b, _, length = x.shape
        h, d = self.n_heads, self.head_dim
        q = self.W_query(x.transpose(1, 2)).view(b, length, h, d).transpose(1, 2)
        tt = text.transpose(1, 2)
        k = self.W_key(tt).view(b, -1, h, d).transpose(1, 2)
        v = self.W_value(tt).view(b, -1, h, d).transpose(1, 2)
        q, k = self._rotate(q, latent_mask), self._rotate(k, text_mask)
        scores = q @ k.transpose(-1, -2) / (h * d) ** 0.5
        scores = scores.masked_fill(text_mask.unsqueeze(1) == 0, MASK_LOGIT)
        out = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, length, h * d)
        return self.out_fc(out).transpose(1, 2)


class TextBlock(nn.Module):
    """Residual text cross-attention followed by LayerNorm."""

    def __init__(self, dim: int, text_dim: int, n_heads: int) -> None:
        super().__init__()
        self.attn = RotaryTextAttention(dim, text_dim, n_heads)
        self.norm = ChannelLayerNorm(dim)

    def forward(
        self,
        x: torch.Tensor,
        text: torch.Tensor,
        latent_mask: torch.Tensor,
        text_mask: torch.Tensor,
    ) -> torch.Tensor:
        """x: [B, C, L], text: [B, Ct, T], masks [B, 1, L] / [B, 1, T] -> [B, C, L]"""
        return self.norm(x + self.attn(x, text, latent_mask, text_mask) * latent_mask) * latent_mask


class StyleAttention(nn.Module):
    """Latent-to-style cross-attention: learned keys (through tanh), the voice's values."""

    def __init__(self, dim: int, style_dim: int, n_heads: int, n_tokens: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = style_dim // n_heads
        self.key_emb = nn.Parameter(torch.zeros(1, n_tokens, style_dim))
        self.W_query = Linear(dim, style_dim)
        self.W_key = Linear(style_dim, style_dim)
        self.W_value = Linear(style_dim, style_dim)
        self.out_fc = Linear(style_dim, dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x: [B, C, L], style: [B, N, S] -> [B, C, L]"""
        b, _, length = x.shape
        h, d = self.n_heads, self.head_dim
        q = self.W_query(x.transpose(1, 2)).view(b, length, h, d).transpose(1, 2)
        k = torch.tanh(self.W_key(self.key_emb)).view(1, -1, h, d).transpose(1, 2)
        k = k.expand(b, -1, -1, -1)  # explicit batch: a broadcast bmm trips torch.compile
        v = self.W_value(style).view(b, -1, h, d).transpose(1, 2)
        attn = (q @ k.transpose(-1, -2) / (h * d) ** 0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, length, h * d)
        return self.out_fc(out).transpose(1, 2)


class StyleBlock(nn.Module):
    """Residual style cross-attention followed by LayerNorm."""

    def __init__(self, dim: int, style_dim: int, n_heads: int, n_tokens: int) -> None:
        super().__init__()
        self.attention = StyleAttention(dim, style_dim, n_heads, n_tokens)
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, L] -> [B, C, L]"""
        return self.norm(x + self.attention(x, style) * mask) * mask


class VectorField(nn.Module):
    """The velocity network: `n_blocks` x (ConvNeXt, time, ConvNeXt, text, ConvNeXt, style)."""

    def __init__(self, cfg: VectorFieldConfig) -> None:
        super().__init__()
        self.proj_in = PointwiseConv(cfg.latent_channels, cfg.dim)
        self.time_encoder = TimeEncoder(cfg.time_dim, cfg.time_hidden)
        blocks: list[nn.Module] = []
        for _ in range(cfg.n_blocks):
            blocks += [
                _stack(cfg.convnext_0),
                TimeCondition(cfg.dim, cfg.time_dim),
                _stack(cfg.convnext_1),
                TextBlock(cfg.dim, cfg.text_dim, cfg.text_heads),
                _stack(cfg.convnext_2),
                StyleBlock(cfg.dim, cfg.style_dim, cfg.style_heads, cfg.style_tokens),
            ]
        self.main_blocks = nn.ModuleList(blocks)
        self.last_convnext = _stack(cfg.last_convnext)
        self.proj_out = PointwiseConv(cfg.dim, cfg.latent_channels)

    def forward(
        self,
        x: torch.Tensor,
        text_emb: torch.Tensor,
        style_ttl: torch.Tensor,
        latent_mask: torch.Tensor,
        text_mask: torch.Tensor,
        t: torch.Tensor,
    ) -> torch.Tensor:
        """x: [B, 144, L], t: [B] -> velocity [B, 144, L]"""
        time_emb = self.time_encoder(t)
        h = self.proj_in(x) * latent_mask
        for block in self.main_blocks:
            if isinstance(block, TimeCondition):
                h = block(h, time_emb)
            elif isinstance(block, TextBlock):
                h = block(h, text_emb, latent_mask, text_mask)
            elif isinstance(block, StyleBlock):
                h = block(h, style_ttl, latent_mask)
            else:
                h = block(h, latent_mask)
        h = self.last_convnext(h, latent_mask)
        return self.proj_out(h) * latent_mask


class VectorEstimator(nn.Module):
    """Stage 3: one Euler step. Inputs in the published order; returns the next latent."""

    def __init__(self, cfg: VectorFieldConfig) -> None:
        super().__init__()
        self.vector_field = VectorField(cfg)

    def forward(
        self,
        noisy_latent: torch.Tensor,
        text_emb: torch.Tensor,
        style_ttl: torch.Tensor,
        latent_mask: torch.Tensor,
        text_mask: torch.Tensor,
        current_step: torch.Tensor,
        total_step: torch.Tensor,
    ) -> torch.Tensor:
        """noisy_latent [B, 144, L], current_step/total_step [B] float -> [B, 144, L]"""
        v = self.vector_field(
            noisy_latent, text_emb, style_ttl, latent_mask, text_mask, current_step / total_step
        )
        return (noisy_latent + v / total_step[:, None, None]) * latent_mask
