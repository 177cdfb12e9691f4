"""The full-size Supertonic-2 architecture, for running without the published `tts.json`.

Only the hyperparameters the networks need; the test suite checks that this equals the
published configuration, so demo mode times exactly the real model.
"""

from __future__ import annotations

from typing import Any


def _convnext(dim: int, hidden: int, dilations: list[int], ksz: int = 5) -> dict[str, Any]:
    return {
        "idim": dim,
        "ksz": ksz,
        "intermediate_dim": hidden,
        "num_layers": len(dilations),
        "dilation_lst": dilations,
    }


def default_config_dict() -> dict[str, Any]:
    """A `tts.json`-shaped dictionary of the published v1.6.0 architecture."""
    return {
        "tts_version": "v1.6.0",
        "ttl": {
            "latent_dim": 24,
            "chunk_compress_factor": 6,
            "text_encoder": {
                "text_embedder": {"char_emb_dim": 256},
                "convnext": _convnext(256, 1024, [1] * 6),
                "attn_encoder": {
                    "hidden_channels": 256,
                    "filter_channels": 1024,
                    "n_heads": 4,
                    "n_layers": 4,
                },
            },
            "style_encoder": {"style_token_layer": {"n_style": 50, "n_heads": 2}},
            "speech_prompted_text_encoder": {"n_heads": 2},
            "vector_field": {
                "proj_in": {"odim": 512},
                "time_encoder": {"time_dim": 64, "hdim": 256},
                "main_blocks": {
                    "n_blocks": 4,
                    "style_cond_layer": {"style_dim": 256},
                    "text_cond_layer": {"text_dim": 256, "n_heads": 4},
                    "convnext_0": _convnext(512, 1024, [1, 2, 4, 8]),
                    "convnext_1": _convnext(512, 1024, [1]),
                    "convnext_2": _convnext(512, 1024, [1]),
                },
                "last_convnext": _convnext(512, 1024, [1] * 4),
            },
        },
        "ae": {
            "sample_rate": 44100,
            "base_chunk_size": 512,
            "ldim": 24,
            "decoder": {
                "ksz_init": 7,
                "ksz": 7,
                "num_layers": 10,
                "dilation_lst": [1, 2, 4, 1, 2, 4, 1, 1, 1, 1],
                "intermediate_dim": 2048,
                "hdim": 512,
                "head": {"hdim": 2048, "ksz": 3},
            },
        },
        "dp": {
            "sentence_encoder": {
                "char_emb_dim": 64,
                "convnext": _convnext(64, 256, [1] * 6),
                "attn_encoder": {
                    "hidden_channels": 64,
                    "filter_channels": 256,
                    "n_heads": 2,
                    "n_layers": 2,
                },
            },
            "predictor": {"n_style": 8, "style_dim": 16, "hdim": 128},
        },
    }
