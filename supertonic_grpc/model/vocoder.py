"""Vocoder: compressed latent `[B, 144, L]` -> waveform `[B, L * 3072]` at 44.1 kHz."""

from __future__ import annotations

import torch
from torch import nn

from supertonic_grpc.model.config import VocoderConfig
from supertonic_grpc.model.layers import CausalConv, ConvNeXtBlock


class FinalNorm(nn.Module):
    """Holds the decoder's closing BatchNorm under the published name `final_norm.norm`."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(dim)


class Normalizer(nn.Module):
    """Holds the flow's latent scale under the published name `normalizer.scale`."""

    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0))


class Head(nn.Module):
    """Per-frame waveform head: causal conv -> PReLU -> 1x1 conv to `hop` samples."""

    def __init__(self, dim: int, hidden: int, kernel: int, hop: int) -> None:
        super().__init__()
        self.layer1 = CausalConv(dim, hidden, kernel)
        self.act = nn.PReLU(1)
        self.layer2 = nn.Conv1d(hidden, hop, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, F] -> [B, hop, F]"""
        return self.layer2(self.act(self.layer1(x)))


class Decoder(nn.Module):
    """Causal ConvNeXt decoder of the speech autoencoder."""

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        cn = cfg.convnext
        self.embed = CausalConv(cfg.latent_dim, cfg.dim, cfg.embed_kernel)
        self.convnext = nn.ModuleList(
            ConvNeXtBlock(cn.dim, cn.hidden_dim, cn.kernel_size, d, causal=True)
            for d in cn.dilations
        )
        self.final_norm = FinalNorm(cfg.dim)
        self.head = Head(cfg.dim, cfg.head_hidden, cfg.head_kernel, cfg.hop)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z: [B, 24, F] -> waveform [B, F * hop]"""
        x = self.embed(z)
        for block in self.convnext:
            x = block(x)
        x = self.head(self.final_norm.norm(x))
        return x.transpose(1, 2).flatten(1)


class Vocoder(nn.Module):
    """Stage 4. Undoes the flow's latent scaling and chunk compression, then decodes."""

    latent_mean: torch.Tensor
    latent_std: torch.Tensor

    def __init__(self, cfg: VocoderConfig) -> None:
        super().__init__()
        self.latent_dim = cfg.latent_dim
        self.factor = cfg.compress_factor
        self.register_buffer("latent_mean", torch.zeros(1, cfg.latent_dim, 1))
        self.register_buffer("latent_std", torch.ones(1, cfg.latent_dim, 1))
        self.normalizer = Normalizer()
        self.decoder = Decoder(cfg)

    def decompress(self, latent: torch.Tensor) -> torch.Tensor:
        """latent: [B, 144, L] -> the decoder's input z: [B, 24, L * 6]. Frame by frame, so a
        span of latent frames gives the same span of decoder frames."""
        b, _, length = latent.shape
        z = latent / self.normalizer.scale
        z = z.view(b, self.latent_dim, self.factor, length).transpose(2, 3)
        z = z.reshape(b, self.latent_dim, length * self.factor)
        return z * self.latent_std + self.latent_mean

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        """latent: [B, 144, L] -> waveform [B, L * 3072]"""
        return self.decoder(self.decompress(latent))
