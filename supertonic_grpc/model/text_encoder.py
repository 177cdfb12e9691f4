"""Text encoder: characters and a voice's style tokens -> text embedding `[B, 256, T]`."""

from __future__ import annotations

import torch
from torch import nn

from supertonic_grpc.model.config import TextEncoderConfig
from supertonic_grpc.model.layers import (
    AttentionEncoder,
    ChannelLayerNorm,
    CharEmbedder,
    ConvNeXtStack,
    Linear,
)


class CharEncoder(nn.Module):
    """Embedding -> ConvNeXt stack -> relative self-attention, with a skip around attention."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        cn, at = cfg.convnext, cfg.attention
        self.text_embedder = CharEmbedder(cfg.vocab_size, cfg.dim)
        self.convnext = ConvNeXtStack(cn.dim, cn.hidden_dim, cn.kernel_size, cn.dilations)
        self.attn_encoder = AttentionEncoder(
            at.channels, at.filter_channels, at.n_heads, at.n_layers
        )

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """text_ids: [B, T], text_mask: [B, 1, T] -> [B, C, T]"""
        x = self.text_embedder(text_ids) * text_mask
        x = self.convnext(x, text_mask)
        return (x + self.attn_encoder(x, text_mask)) * text_mask


class StyleKeys(nn.Module):
    """Holds the learned style keys under the published name `tanh.Tanh_output_0`."""

    Tanh_output_0: torch.Tensor

    def __init__(self, n_heads: int, head_dim: int, n_tokens: int) -> None:
        super().__init__()
        self.register_buffer("Tanh_output_0", torch.zeros(n_heads, 1, head_dim, n_tokens))


class StyleTokenAttention(nn.Module):
    """Cross-attention from text positions to a voice's style tokens.

    The keys are learned and voice-independent (the published graph stores them after their
    tanh, one `[1, head_dim, n_tokens]` slab per head); the values come from the voice.
    """

    def __init__(self, dim: int, n_heads: int, n_tokens: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.W_query = Linear(dim, dim)
        self.W_value = Linear(dim, dim)
        self.out_fc = Linear(dim, dim)
        self.tanh = StyleKeys(n_heads, self.head_dim, n_tokens)

    def forward(self, x: torch.Tensor, style: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, T, C], style: [B, N, C], mask: [B, T, 1] -> [B, T, C]"""
        b, t, c = x.shape
        h, d = self.n_heads, self.head_dim
        q = self.W_query(x).view(b, t, h, d).transpose(1, 2)  # [B, H, T, D]
        v = self.W_value(style).view(b, -1, h, d).transpose(1, 2)  # [B, H, N, D]
        # Expanded to the batch explicitly: a broadcast batch matmul trips torch.compile.
        keys = self.tanh.Tanh_output_0.transpose(0, 1).expand(b, -1, -1, -1)  # [B, H, D, N]
        attn = (q @ keys / c**0.5).softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(b, t, c)
        return self.out_fc(out) * mask


class SpeechPromptedTextEncoder(nn.Module):
    """Two rounds of style-token attention, each added to the character encoding, then norm."""

    def __init__(self, dim: int, n_heads: int, n_tokens: int) -> None:
        super().__init__()
        self.attention1 = StyleTokenAttention(dim, n_heads, n_tokens)
        self.attention2 = StyleTokenAttention(dim, n_heads, n_tokens)
        self.norm = ChannelLayerNorm(dim)

    def forward(self, x: torch.Tensor, style: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: [B, C, T], style: [B, N, C], mask: [B, 1, T] -> [B, C, T]"""
        residual = x.transpose(1, 2)
        m = mask.transpose(1, 2)
        y = residual + self.attention1(residual, style, m)
        y = residual + self.attention2(y, style, m)
        return self.norm.norm(y).transpose(1, 2) * mask


class TextEncoder(nn.Module):
    """Stage 1. Published inputs: text_ids [B, T], style_ttl [B, 50, 256], text_mask [B, 1, T]."""

    def __init__(self, cfg: TextEncoderConfig) -> None:
        super().__init__()
        self.text_encoder = CharEncoder(cfg)
        self.speech_prompted_text_encoder = SpeechPromptedTextEncoder(
            cfg.dim, cfg.style_heads, cfg.style_tokens
        )

    def forward(
        self, text_ids: torch.Tensor, style_ttl: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """-> text_emb [B, 256, T], zero on padding."""
        x = self.text_encoder(text_ids, text_mask)
        return self.speech_prompted_text_encoder(x, style_ttl, text_mask)
