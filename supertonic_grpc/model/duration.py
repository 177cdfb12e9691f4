"""Duration predictor: characters and a voice's duration style -> utterance length in seconds."""

from __future__ import annotations

import torch
from torch import nn

from supertonic_grpc.model.config import DurationConfig
from supertonic_grpc.model.layers import (
    AttentionEncoder,
    CharEmbedder,
    ConvNeXtStack,
    PointwiseConv,
)


class SentenceEncoder(nn.Module):
    """Encodes the text with a learned sentence token in front and returns that token's state."""

    def __init__(self, cfg: DurationConfig) -> None:
        super().__init__()
        cn, at = cfg.convnext, cfg.attention
        self.sentence_token = nn.Parameter(torch.zeros(1, cfg.dim, 1))
        self.text_embedder = CharEmbedder(cfg.vocab_size, cfg.dim)
        self.convnext = ConvNeXtStack(cn.dim, cn.hidden_dim, cn.kernel_size, cn.dilations)
        self.attn_encoder = AttentionEncoder(
            at.channels, at.filter_channels, at.n_heads, at.n_layers
        )
        self.proj_out = PointwiseConv(cfg.dim, cfg.dim)

    def forward(self, text_ids: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """text_ids: [B, T], text_mask: [B, 1, T] -> [B, C]"""
        b = text_ids.shape[0]
        x = self.text_embedder(text_ids) * text_mask
        x = torch.cat([self.sentence_token.expand(b, -1, -1), x], dim=2)
        mask = torch.cat([text_mask.new_ones(b, 1, 1), text_mask], dim=2)
        x = self.convnext(x, mask)
        x = (x + self.attn_encoder(x, mask)) * mask
        return self.proj_out(x[:, :, :1]).squeeze(2)


class DurationHead(nn.Module):
    """MLP on [sentence state, flattened style] with PReLU; predicts log-duration."""

    def __init__(self, in_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList([nn.Linear(in_dim, hidden_dim), nn.Linear(hidden_dim, 1)])
        self.activation = nn.PReLU(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, in_dim] -> [B] seconds"""
        x = self.activation(self.layers[0](x))
        return torch.exp(self.layers[1](x).squeeze(1))


class DurationPredictor(nn.Module):
    """Stage 2. Published inputs: text_ids [B, T], style_dp [B, 8, 16], text_mask [B, 1, T]."""

    def __init__(self, cfg: DurationConfig) -> None:
        super().__init__()
        self.sentence_encoder = SentenceEncoder(cfg)
        self.predictor = DurationHead(cfg.dim + cfg.style_tokens * cfg.style_dim, cfg.hidden_dim)

    def forward(
        self, text_ids: torch.Tensor, style_dp: torch.Tensor, text_mask: torch.Tensor
    ) -> torch.Tensor:
        """-> duration [B] in seconds, at speed 1.0."""
        sentence = self.sentence_encoder(text_ids, text_mask)
        return self.predictor(torch.cat([sentence, style_dp.flatten(1)], dim=1))
