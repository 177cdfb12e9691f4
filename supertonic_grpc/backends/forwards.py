"""Prepared forwards: a module's `forward` shadowed by a plain callable, and put back.

An instance attribute named `forward` shadows the class's, and `nn.Module.__call__` uses it;
the module's parameters and state dict are untouched, so `restore` is exact.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn


def install(model: nn.Module, prepared: Mapping[type[nn.Module], Callable[[Any], object]]) -> int:
    """Give every module of `model` whose type is in `prepared` the forward built from it;
    returns how many. Idempotent (what was installed before is removed first)."""
    restore(model, tuple(prepared))
    count = 0
    for module in model.modules():
        make = prepared.get(type(module))
        if make is not None:
            object.__setattr__(module, "forward", make(module))
            count += 1
    return count


def installed(module: nn.Module) -> object | None:
    """The forward `install` gave `module`, or None when it runs its class's."""
    return module.__dict__.get("forward")


def restore(model: nn.Module, types: tuple[type[nn.Module], ...]) -> None:
    """Every module of `model` of one of `types` runs its class's forward again."""
    for module in model.modules():
        if isinstance(module, types) and installed(module) is not None:
            del module.__dict__["forward"]
