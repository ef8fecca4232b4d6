"""MLP 1-40-40-1 with ReLU, the sinusoid regressor of Finn et al. 2017 (Sec. 5.1)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .task_layers import TaskLinear


class MLP(nn.Module):
    task_batched = True      # accepts stacked per-task parameters (see TaskLinear)
    stack_tasks = True       # and meta_step uses them by default (~10x on the sinusoid; train.stack_tasks: false)
    feature_map = "features"  # the last hidden layer: what CML's co-learner reads for regression

    def __init__(self, in_shape: tuple[int, ...], out_dim: int, hidden: Sequence[int] = (40, 40)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        d = int(in_shape[-1])
        for h in hidden:
            layers += [TaskLinear(d, h), nn.ReLU()]
            d = h
        self.features = nn.Sequential(*layers)
        self.feature_dim = d
        self.head = TaskLinear(d, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1) -> (B, 1)
        return self.head(self.features(x))
