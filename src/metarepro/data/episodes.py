"""N-way K-shot Q-query episode samplers, deterministic per seed.

Every episode is a pure function of (seed, index): resumed training sees exactly the tasks an
uninterrupted run sees, and evaluation episodes are fixed per (dataset, split, ways, shots, seed)
and therefore shared by all methods (pair-wise comparisons on identical episodes).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np
import torch

from ..methods.base import Task
from ..utils import stable_hash
from .sinusoid import SinusoidTasks
from .store import ImageSplit


class ImageEpisodes:
    """Episodes from a prepared image split. With `rotations`, class c*4+r is class c rotated by r*90 deg."""

    def __init__(self, split: ImageSplit, ways: int, shots: int, queries: int, seed: int,
                 rotations: bool = False, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None) -> None:
        self.split, self.ways, self.shots, self.queries, self.seed = split, ways, shots, queries, seed
        self.n_rot = 4 if rotations else 1
        self.n_classes = split.n_classes * self.n_rot
        if ways > self.n_classes:
            raise ValueError(f"{ways}-way episodes need >= {ways} classes; the split has {self.n_classes}")
        smallest = min(len(ix) for ix in split.by_class)
        if shots + queries > smallest:
            raise ValueError(f"{shots} shots + {queries} queries exceed the {smallest} images of the smallest class")
        c = split.images.shape[-1]
        self.mean = torch.tensor(mean if mean is not None else [0.0] * c, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * c, dtype=torch.float32).view(1, c, 1, 1)

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes (ways,), image indices (ways, shots+queries)) of episode `index`."""
        rng = np.random.default_rng([self.seed, index])
        classes = rng.choice(self.n_classes, size=self.ways, replace=False)
        picks = np.stack([rng.choice(self.split.by_class[c // self.n_rot], size=self.shots + self.queries,
                                     replace=False) for c in classes])
        return classes, picks

    def episode(self, index: int) -> Task:
        classes, picks = self.indices(index)
        imgs = self.split.images[picks]                      # (ways, S+Q, H, W, C) uint8
        rots = classes % self.n_rot
        if self.n_rot > 1:
            imgs = np.stack([np.rot90(imgs[i], k=int(r), axes=(1, 2)) for i, r in enumerate(rots)])
        x = torch.from_numpy(np.ascontiguousarray(imgs)).float().div_(255.0)
        x = x.permute(0, 1, 4, 2, 3)                         # (ways, S+Q, C, H, W)
        x = (x - self.mean.unsqueeze(0)) / self.std.unsqueeze(0)
        y = torch.arange(self.ways).view(-1, 1).expand(-1, self.shots + self.queries)
        k = self.shots
        xs, ys = x[:, :k].reshape(-1, *x.shape[2:]), y[:, :k].reshape(-1)
        xq, yq = x[:, k:].reshape(-1, *x.shape[2:]), y[:, k:].reshape(-1)
        return Task(xs, ys.contiguous(), xq, yq.contiguous(), classes=tuple(int(c) for c in classes))

    def fingerprint(self, n: int) -> str:
        """Identifier of the first n episodes (same across methods => valid paired comparisons)."""
        h = hashlib.sha256()
        for i in range(n):
            classes, picks = self.indices(i)
            h.update(classes.tobytes()); h.update(picks.tobytes())
        return h.hexdigest()[:16]


class SinusoidEpisodes:
    def __init__(self, tasks: SinusoidTasks, shots: int, queries: int, seed: int) -> None:
        self.tasks, self.shots, self.queries, self.seed = tasks, shots, queries, seed

    def episode(self, index: int) -> Task:
        return self.tasks.task(np.random.default_rng([self.seed, index]), self.shots, self.queries)

    def fingerprint(self, n: int) -> str:
        h = hashlib.sha256()
        for i in range(n):
            t = self.episode(i)
            h.update(t.x_support.numpy().tobytes()); h.update(t.x_query.numpy().tobytes())
        return h.hexdigest()[:16]


def eval_seed(base_seed: int, dataset: str, split: str, ways: int, shots: int) -> int:
    """The episode seed of the fixed evaluation set for (dataset, split, ways, shots, seed)."""
    return stable_hash("eval-episodes", dataset, split, ways, shots, base_seed)


class TaskSampler:
    """Meta-training task distribution: meta-batch `iteration` is a pure function of (seed, iteration).

    Subclasses (e.g. the hard-task meta-batch of MTL) may override `sample` and use `feedback`.
    """

    def __init__(self, episodes: ImageEpisodes | SinusoidEpisodes) -> None:
        self.episodes = episodes

    def sample(self, iteration: int, batch: int) -> list[Task]:
        return [self.episodes.episode(iteration * batch + b) for b in range(batch)]

    def feedback(self, tasks: list[Task], losses: list[float]) -> None:
        """Called after each meta-step with the per-task losses (unused by the default sampler)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
