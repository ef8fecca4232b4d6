"""Backbone registry: the only place a backbone name is bound to code."""
from __future__ import annotations

from typing import Any

from torch import nn

from .conv4 import Conv4
from .gnn import GNN
from .mlp import MLP
from .resnet12 import ResNet12

BACKBONES: dict[str, type[nn.Module]] = {"conv4": Conv4, "resnet12": ResNet12, "mlp": MLP, "gnn": GNN}


def drop_head(model: nn.Module) -> None:
    """Replace the backbone's linear head by the identity: metric-based methods classify by distances between
    features, so the head would be an unused (and saved, and counted) parameter block."""
    if hasattr(model, "head"):
        model.head = nn.Identity()


def build(name: str, in_shape: tuple[int, ...], out_dim: int, **kwargs: Any) -> nn.Module:
    """Build backbone `name` for inputs of shape `in_shape` (C, H, W or D) with `out_dim` outputs."""
    if name not in BACKBONES:
        raise KeyError(f"unknown backbone {name!r}; known: {', '.join(sorted(BACKBONES))}")
    return BACKBONES[name](in_shape, out_dim, **kwargs)
