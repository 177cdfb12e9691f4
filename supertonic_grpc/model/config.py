"""Typed view of the published `tts.json`: every width, kernel and count the networks need."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ConvNeXtConfig:
    """A stack of ConvNeXt blocks: `num_layers` blocks with the given dilations."""

    dim: int
    kernel_size: int
    hidden_dim: int
    dilations: tuple[int, ...]

    @classmethod
    def parse(cls, d: dict[str, Any]) -> ConvNeXtConfig:
        dilations = tuple(int(x) for x in d["dilation_lst"])
        if len(dilations) != int(d["num_layers"]):
            raise ValueError(f"convnext: {d['num_layers']} layers but {len(dilations)} dilations")
        return cls(int(d["idim"]), int(d["ksz"]), int(d["intermediate_dim"]), dilations)


@dataclass(frozen=True)
class AttentionEncoderConfig:
    """A relative-position self-attention encoder (VITS style)."""

    channels: int
    filter_channels: int
    n_heads: int
    n_layers: int

    @classmethod
    def parse(cls, d: dict[str, Any]) -> AttentionEncoderConfig:
        return cls(
            int(d["hidden_channels"]),
            int(d["filter_channels"]),
            int(d["n_heads"]),
            int(d["n_layers"]),
        )


@dataclass(frozen=True)
class TextEncoderConfig:
    vocab_size: int
    dim: int
    convnext: ConvNeXtConfig
    attention: AttentionEncoderConfig
    style_tokens: int
    style_heads: int


@dataclass(frozen=True)
class DurationConfig:
    vocab_size: int
    dim: int
    convnext: ConvNeXtConfig
    attention: AttentionEncoderConfig
    style_tokens: int
    style_dim: int
    hidden_dim: int


@dataclass(frozen=True)
class VectorFieldConfig:
    latent_channels: int  # latent_dim * chunk_compress_factor
    dim: int
    time_dim: int
    time_hidden: int
    n_blocks: int
    convnext_0: ConvNeXtConfig
    convnext_1: ConvNeXtConfig
    convnext_2: ConvNeXtConfig
    last_convnext: ConvNeXtConfig
    text_dim: int
    text_heads: int
    style_dim: int
    style_tokens: int
    style_heads: int


@dataclass(frozen=True)
class VocoderConfig:
    latent_dim: int
    compress_factor: int
    dim: int
    embed_kernel: int
    convnext: ConvNeXtConfig
    head_hidden: int
    head_kernel: int
    hop: int  # samples per decoder frame


@dataclass(frozen=True)
class SupertonicConfig:
    """Everything `build_model` needs, parsed from `tts.json`."""

    version: str
    sample_rate: int
    latent_dim: int
    compress_factor: int
    text_encoder: TextEncoderConfig
    duration: DurationConfig
    vector_field: VectorFieldConfig
    vocoder: VocoderConfig

    @property
    def latent_channels(self) -> int:
        """Channels of the compressed latent the flow works in (24 * 6 = 144)."""
        return self.latent_dim * self.compress_factor

    @property
    def samples_per_frame(self) -> int:
        """Waveform samples per latent frame (512 * 6 = 3072)."""
        return self.vocoder.hop * self.compress_factor

    @classmethod
    def from_dict(cls, cfg: dict[str, Any], vocab_size: int = 163) -> SupertonicConfig:
        """Parse a `tts.json` dictionary. `vocab_size` is the embedding table's row count."""
        ttl, ae, dp = cfg["ttl"], cfg["ae"], cfg["dp"]
        latent_dim = int(ttl["latent_dim"])
        factor = int(ttl["chunk_compress_factor"])
        te = ttl["text_encoder"]
        spte = ttl["speech_prompted_text_encoder"]
        style_layer = ttl["style_encoder"]["style_token_layer"]
        text_encoder = TextEncoderConfig(
            vocab_size=vocab_size,
            dim=int(te["text_embedder"]["char_emb_dim"]),
            convnext=ConvNeXtConfig.parse(te["convnext"]),
            attention=AttentionEncoderConfig.parse(te["attn_encoder"]),
            style_tokens=int(style_layer["n_style"]),
            style_heads=int(spte["n_heads"]),
        )
        se = dp["sentence_encoder"]
        pred = dp["predictor"]
        duration = DurationConfig(
            vocab_size=vocab_size,
            dim=int(se["char_emb_dim"]),
            convnext=ConvNeXtConfig.parse(se["convnext"]),
            attention=AttentionEncoderConfig.parse(se["attn_encoder"]),
            style_tokens=int(pred["n_style"]),
            style_dim=int(pred["style_dim"]),
            hidden_dim=int(pred["hdim"]),
        )
        vf = ttl["vector_field"]
        mb = vf["main_blocks"]
        vector_field = VectorFieldConfig(
            latent_channels=latent_dim * factor,
            dim=int(vf["proj_in"]["odim"]),
            time_dim=int(vf["time_encoder"]["time_dim"]),
            time_hidden=int(vf["time_encoder"]["hdim"]),
            n_blocks=int(mb["n_blocks"]),
            convnext_0=ConvNeXtConfig.parse(mb["convnext_0"]),
            convnext_1=ConvNeXtConfig.parse(mb["convnext_1"]),
            convnext_2=ConvNeXtConfig.parse(mb["convnext_2"]),
            last_convnext=ConvNeXtConfig.parse(vf["last_convnext"]),
            text_dim=int(mb["text_cond_layer"]["text_dim"]),
            text_heads=int(mb["text_cond_layer"]["n_heads"]),
            style_dim=int(mb["style_cond_layer"]["style_dim"]),
            style_tokens=int(style_layer["n_style"]),
            style_heads=int(style_layer["n_heads"]),
        )
        dec = ae["decoder"]
        vocoder = VocoderConfig(
            latent_dim=int(ae["ldim"]),
            compress_factor=factor,
            dim=int(dec["hdim"]),
            embed_kernel=int(dec["ksz_init"]),
            convnext=ConvNeXtConfig(
                int(dec["hdim"]),
                int(dec["ksz"]),
                int(dec["intermediate_dim"]),
                tuple(int(x) for x in dec["dilation_lst"]),
            ),
            head_hidden=int(dec["head"]["hdim"]),
            head_kernel=int(dec["head"]["ksz"]),
            hop=int(ae["base_chunk_size"]),
        )
        return cls(
            version=str(cfg.get("tts_version", "unknown")),
            sample_rate=int(ae["sample_rate"]),
            latent_dim=latent_dim,
            compress_factor=factor,
            text_encoder=text_encoder,
            duration=duration,
            vector_field=vector_field,
            vocoder=vocoder,
        )
