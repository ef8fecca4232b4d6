"""Layers that also take one set of weights per task, so a meta-batch of T equal-shape tasks runs as one batch
(MetaLearner.task_batching): the meta-learners pass stacked per-task parameters (T, ...) to functional_call.
With ordinary weights each layer is exactly its torch.nn parent (same parameters, same state-dict keys).

Image layout of a stack: the input is (T, N, C, H, W); the first TaskConv2d turns it into (N, T*C, H, W), the
layout the following layers keep: a grouped convolution (groups = T) applies task t's filters to task t's
channels only, batch norm normalises each of the T*C channels over its own task's N images (per-task
statistics), ReLU and max-pooling are channel-wise anyway, and TaskLinear splits the flattened (N, T*d) features
back into (T, N, d) for the per-task head.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TaskLinear(nn.Linear):
    """nn.Linear that also takes weight (T, out, in), bias (T, out) with x (T, N, in), or x (N, T*in) from a
    stacked image backbone -> (T, N, out)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 3:
            if x.dim() == 2:                                  # (N, T*in) from a stacked feature extractor
                x = x.reshape(x.shape[0], self.weight.shape[0], -1).transpose(0, 1)
            return torch.baddbmm(self.bias.unsqueeze(-2), x, self.weight.transpose(-1, -2))
        return super().forward(x)


class TaskConv2d(nn.Conv2d):
    """nn.Conv2d that also takes weight (T, out, in, k, k), bias (T, out): one grouped convolution over the stack."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 5:
            t = self.weight.shape[0]
            if x.dim() == 5:                                  # (T, N, C, H, W) -> (N, T*C, H, W)
                x = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:])
            w = self.weight.reshape(-1, *self.weight.shape[2:])
            b = self.bias.reshape(-1) if self.bias is not None else None
            return F.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups * t)
        return super().forward(x)


class TaskBatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d over a stack's (N, T*C, H, W) channels with the batch's own statistics (per task, per
    channel); its affine weights are per task (T, C) or shared (C,). Stacks need track_running_stats=False."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == self.num_features:
            return super().forward(x)
        if self.track_running_stats:
            raise RuntimeError("a stacked meta-batch cannot update per-task running statistics")
        t = x.shape[1] // self.num_features
        w, b = self.weight, self.bias
        if w is not None:
            w = w.reshape(-1) if w.dim() == 2 else w.repeat(t)
            b = b.reshape(-1) if b.dim() == 2 else b.repeat(t)
        return F.batch_norm(x, None, None, w, b, True, 0.0, self.eps)


class MaxPool2x2(nn.MaxPool2d):
    """nn.MaxPool2d(2) whose forward, when no gradient will flow back through it (evaluation's query passes,
    embeddings under no_grad), takes the maximum of the four strided 2x2 corners instead of torch's pooling
    kernel: the same values bit for bit (a maximum is exact), about 10x faster on CPU for Conv-4's feature maps
    (benchmarks/README.md). With a gradient it is torch's max_pool2d, whose backward is the fast one."""

    def __init__(self) -> None:
        super().__init__(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            return super().forward(x)
        h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        x = x[..., :h, :w]
        return torch.maximum(torch.maximum(x[..., 0::2, 0::2], x[..., 1::2, 0::2]),
                             torch.maximum(x[..., 0::2, 1::2], x[..., 1::2, 1::2]))
