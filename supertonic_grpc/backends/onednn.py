"""oneDNN's packed linear layer, the one way the CPU backends call it.

A weight is reordered once into oneDNN's blocked layout; every product then skips that
reorder (and, with an activation, fuses it into the product).
"""

from __future__ import annotations

from typing import Literal

import torch

# Rows the packed weights are laid out for (oneDNN picks a blocking from it).
PACK_ROWS = 256

Activation = Literal["none", "gelu", "relu"]


def pack(weight: torch.Tensor) -> torch.Tensor:
    """`[out, in]` weight -> oneDNN's packed layout, for `linear`."""
    return torch.ops.mkldnn._reorder_linear_weight(weight, PACK_ROWS)


def linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    activation: Activation = "none",
) -> torch.Tensor:
    """`x [..., in]` @ packed `weight` + `bias`, then the activation (GELU is the exact, erf
    form)."""
    if activation == "gelu":
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu", [], "none")
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, activation, [], "")
