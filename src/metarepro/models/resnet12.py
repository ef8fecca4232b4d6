"""ResNet-12 (Oreshkin et al. 2018; Lee et al. 2019; used by MTL, Sun et al. 2019).

Four residual stages (64-160-320-640), each three conv3x3-BN-LeakyReLU(0.1) with a 1x1-conv shortcut
and a 2x2 max-pool; global average pooling; linear head.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .task_layers import MaxPool2x2


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, running_stats: bool, drop_rate: float) -> None:
        super().__init__()
        def bn() -> nn.BatchNorm2d:
            return nn.BatchNorm2d(cout, track_running_stats=running_stats)
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), bn()
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), bn()
        self.conv3, self.bn3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), bn()
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), bn())
        self.act = nn.LeakyReLU(0.1)
        self.pool = MaxPool2x2()
        self.drop = nn.Dropout(drop_rate) if drop_rate > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.drop(self.pool(self.act(out + self.shortcut(x))))


class ResNet12(nn.Module):
    feature_map = "features.3"   # the last residual stage, before global average pooling (CML's co-learner input)

    def __init__(self, in_shape: tuple[int, int, int], out_dim: int, widths: Sequence[int] = (64, 160, 320, 640),
                 drop_rate: float = 0.0, bn_running_stats: bool = False, filters: int | None = None) -> None:
        super().__init__()
        if filters is not None:  # `filters` scales the standard widths (filters=64 -> 64-160-320-640)
            widths = tuple(int(round(w * filters / 64)) for w in (64, 160, 320, 640))
        blocks, cin = [], in_shape[0]
        for w in widths:
            blocks.append(ResBlock(cin, w, bn_running_stats, drop_rate))
            cin = w
        self.features = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.feature_dim = cin
        self.head = nn.Linear(cin, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) -> (B, out_dim)
        return self.head(self.features(x))
