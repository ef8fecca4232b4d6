"""Tiny float64 models and tasks shared by the hand-computed update-rule tests."""
import numpy as np
import torch
from torch import nn

from metarepro.methods.base import Task


class Linear1D(nn.Module):
    """y = w x + b: small enough to write an inner step, its Hessian and the meta-gradient by hand."""

    def __init__(self, w: float, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor([w], dtype=torch.float64))
        self.b = nn.Parameter(torch.tensor([b], dtype=torch.float64))

    def forward(self, x):
        return x * self.w + self.b


def regression_task():
    """(numpy arrays x, y, u, v) and the same data as a Task: support (x, y), query (u, v)."""
    x = np.array([[0.5], [-1.2], [2.0]]); y = np.array([[1.0], [0.3], [-0.7]])
    u = np.array([[1.5], [-0.4]]); v = np.array([[0.2], [1.1]])
    t = lambda a: torch.tensor(a, dtype=torch.float64)
    return (x, y, u, v), Task(t(x), t(y), t(u), t(v))


def random_image_tasks(n: int, queries: int, seed: int = 0, ways: int = 5, shots: int = 1,
                       size: int = 28) -> list[Task]:
    """n random Omniglot-shaped classification tasks (support then query images from one seeded generator)."""
    g = torch.Generator().manual_seed(seed)
    tasks = []
    for _ in range(n):
        ys = torch.arange(ways).repeat_interleave(shots); yq = torch.arange(ways).repeat_interleave(queries)
        tasks.append(Task(torch.randn(len(ys), 1, size, size, generator=g), ys,
                          torch.randn(len(yq), 1, size, size, generator=g), yq))
    return tasks
