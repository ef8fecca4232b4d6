"""Conv-4 backbone (Vinyals et al. 2016; Finn et al. 2017): 4 x [conv3x3 -> BN -> ReLU -> maxpool2] + linear head.

Filters 32 (Ravi & Larochelle / MAML miniImageNet), 48 (MAML++) or 64 (MAML Omniglot).
Batch norm keeps no running statistics by default: as in Finn et al.'s code, it always normalises with
the current batch (transductive at test time), which is what every MAML-family paper reports.
"""
from __future__ import annotations

import torch
from torch import nn

from .task_layers import MaxPool2x2, TaskBatchNorm2d, TaskConv2d, TaskLinear


def conv_block(cin: int, cout: int, running_stats: bool) -> nn.Sequential:
    return nn.Sequential(
        TaskConv2d(cin, cout, kernel_size=3, padding=1),
        TaskBatchNorm2d(cout, track_running_stats=running_stats),
        nn.ReLU(inplace=False),
        MaxPool2x2(),
    )


class Conv4(nn.Module):
    # the feature map before the last pooling (ReLU of block 4): what CML's co-learner reads
    feature_map = "features.3.2"
    # the tapped feature map of a stack is in the (N, T*C, H, W) layout, not (T, N, ...): no stacking with taps
    stacked_taps = False

    def __init__(self, in_shape: tuple[int, int, int], out_dim: int, filters: int = 64,
                 bn_running_stats: bool = False, extra_blocks: int = 0, branch: bool = False) -> None:
        """`extra_blocks` and `branch` are CML's parameter-matched controls (Shin et al. 2024), both adapted in the
        inner loop and used at test time like every other weight:
        - extra_blocks k ("More-MAML"): k more conv3x3-BN-ReLU layers (filters -> filters, no pooling) in block 4,
          before its pooling: with k = 2 about the parameter count of CML's co-learner;
        - branch ("multi-branch"): a second classifier with the co-learner's architecture (conv3x3-BN-ReLU,
          conv3x3-BN-ReLU-maxpool, linear) on the feature map before the last pooling; the model predicts the mean
          of both branches' logits."""
        super().__init__()
        c, h, w = in_shape
        if extra_blocks < 0:
            raise ValueError(f"extra_blocks must be >= 0, got {extra_blocks}")
        last = conv_block(filters, filters, bn_running_stats)
        extra = [layer for _ in range(extra_blocks) for layer in
                 (TaskConv2d(filters, filters, kernel_size=3, padding=1),
                  TaskBatchNorm2d(filters, track_running_stats=bn_running_stats), nn.ReLU(inplace=False))]
        if extra:
            last = nn.Sequential(*list(last)[:3], *extra, last[3])
            self.feature_map = f"features.3.{2 + len(extra)}"
        self.features = nn.Sequential(
            conv_block(c, filters, bn_running_stats),
            conv_block(filters, filters, bn_running_stats),
            conv_block(filters, filters, bn_running_stats),
            last,
            nn.Flatten(),
        )
        # 28 -> 1x1, 32 -> 2x2, 84 -> 5x5 spatial after four 2x2 pools
        self.feature_dim = filters * (h // 16) * (w // 16)
        if self.feature_dim == 0:
            raise ValueError(f"Conv4 needs inputs of at least 16x16, got {h}x{w}")
        self.head = TaskLinear(self.feature_dim, out_dim)
        # accepts stacked per-task parameters (models/task_layers.py), unless batch norm keeps running statistics;
        # used only when asked (train.stack_tasks): it pays only for tiny tasks and changes float rounding
        # (benchmarks/README.md)
        self.task_batched = not bn_running_stats and not branch
        self.stack_tasks = False
        self.branch = None
        if branch:
            fh, fw = h // 8, w // 8              # the feature map before the last pooling
            self.branch = nn.Sequential(
                nn.Conv2d(filters, filters, 3, padding=1),
                nn.BatchNorm2d(filters, track_running_stats=bn_running_stats), nn.ReLU(),
                nn.Conv2d(filters, filters, 3, padding=1),
                nn.BatchNorm2d(filters, track_running_stats=bn_running_stats), nn.ReLU(),
                nn.MaxPool2d(2) if min(fh, fw) >= 2 else nn.Identity(), nn.Flatten(),
                nn.Linear(filters * max(1, fh // 2) * max(1, fw // 2), out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, C, H, W) -> (B, out_dim)
        if self.branch is None:
            return self.head(self.features(x))
        blocks = list(self.features)
        for block in blocks[:3]:
            x = block(x)
        last = blocks[3]
        fmap = x
        for layer in list(last)[:-1]:
            fmap = layer(fmap)
        pooled = blocks[4](last[-1](fmap))
        return (self.head(pooled) + self.branch(fmap)) / 2
