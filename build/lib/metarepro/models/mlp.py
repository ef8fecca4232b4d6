"""MLP 1-40-40-1 with ReLU, the sinusoid regressor of Finn et al. 2017 (Sec. 5.1)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class TaskLinear(nn.Linear):
    """nn.Linear that also takes one weight per task: weight (T, out, in), bias (T, out), x (T, N, in).

    Lets the meta-learners run a whole meta-batch of tasks through one batched matmul (MetaLearner.task_batching)
    by passing stacked per-task parameters to functional_call; with ordinary (out, in) weights it is nn.Linear.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 3:
            return torch.baddbmm(self.bias.unsqueeze(-2), x, self.weight.transpose(-1, -2))
        return super().forward(x)


class MLP(nn.Module):
    task_batched = True      # accepts stacked per-task parameters (see TaskLinear)
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
