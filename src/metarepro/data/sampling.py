"""N-way K-shot Q-query episode samplers, deterministic per seed.

Every episode is a pure function of (seed, index): resumed training sees exactly the tasks an
uninterrupted run sees, and evaluation episodes are fixed per (dataset, split, ways, shots, seed)
and therefore shared by all methods (pair-wise comparisons on identical episodes).
"""
from __future__ import annotations

import hashlib
from typing import Callable, Sequence

import numpy as np
import torch

from ..task import Task, TaskResult
from ..utils import stable_hash
from .sinusoid import SinusoidTasks
from .store import ImageSplit


class ImageEpisodes:
    """Episodes from a prepared image split. With `rotations`, class c*4+r is class c rotated by r*90 deg."""

    def __init__(self, split: ImageSplit, ways: int, shots: int, queries: int, seed: int,
                 rotations: bool = False, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, out_shape: Sequence[int] | None = None,
                 input_crop: dict | None = None, exclude: Sequence[int] = ()) -> None:
        self.split, self.ways, self.shots, self.queries, self.seed = split, ways, shots, queries, seed
        self.n_rot = 4 if rotations else 1
        self.n_classes = split.n_classes * self.n_rot
        # exclude: split classes (and all their rotations) that no episode draws, e.g. a cross-domain target's test
        # classes that the source trained on; None of it: every class, the plain episode stream
        gone = {int(c) for c in exclude}
        self.allowed = (None if not gone else
                        np.array([c for c in range(self.n_classes) if c // self.n_rot not in gone], dtype=np.int64))
        available = self.n_classes if self.allowed is None else len(self.allowed)
        if ways > available:
            raise ValueError(f"{ways}-way episodes need >= {ways} classes; the split has {available}"
                             + (f" after excluding {len(gone)}" if gone else ""))
        smallest = min(len(ix) for ix in split.by_class)
        if shots + queries > smallest:
            raise ValueError(f"{shots} shots + {queries} queries exceed the {smallest} images of the smallest class")
        # out_shape (C, H, W): convert images to another model's input (cross-domain evaluation); then mean/std
        # are that model's (its training data's) statistics, with its channel count
        self.out_shape = tuple(out_shape) if out_shape is not None else None
        # input_crop {resize, crop}: the model's own input transform (MTL's 80x80 miniImageNet), applied first
        self.input_crop = dict(input_crop) if input_crop else None
        c = self.out_shape[0] if self.out_shape is not None else split.images.shape[-1]
        self.mean = torch.tensor(mean if mean is not None else [0.0] * c, dtype=torch.float32).view(1, c, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * c, dtype=torch.float32).view(1, c, 1, 1)

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(classes (ways,), image indices (ways, shots+queries)) of episode `index`."""
        rng = np.random.default_rng([self.seed, index])
        classes = rng.choice(self.n_classes if self.allowed is None else self.allowed, size=self.ways, replace=False)
        return classes, self._picks(classes, rng)

    def _picks(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.choice(self.split.by_class[c // self.n_rot], size=self.shots + self.queries,
                                    replace=False) for c in classes])

    def episode(self, index: int) -> Task:
        return self._task(*self.indices(index), key=(self.seed, index))

    def episode_of(self, classes: Sequence[int], key: Sequence[int]) -> Task:
        """A task on the given (global) classes, label i = classes[i], with images drawn by the generator seeded
        with (seed, *key): e.g. the hard-task meta-batch's re-sampled tasks."""
        classes = np.asarray(classes, dtype=np.int64)
        if len(classes) != self.ways or len(set(classes.tolist())) != self.ways:
            raise ValueError(f"a {self.ways}-way task needs {self.ways} distinct classes, got {classes.tolist()}")
        return self._task(classes, self._picks(classes, np.random.default_rng([self.seed, *key])),
                          key=(self.seed, *key))

    def _task(self, classes: np.ndarray, picks: np.ndarray, key: tuple[int, ...]) -> Task:
        """`key`: the episode's seed, e.g. (seed, index), kept in Task.info for methods that need randomness of
        their own per episode (Matching Networks' support order under FCE)."""
        imgs = self.split.images[picks]                      # (ways, S+Q, H, W, C) uint8
        rots = classes % self.n_rot
        if self.n_rot > 1:
            imgs = np.stack([np.rot90(imgs[i], k=int(r), axes=(1, 2)) for i, r in enumerate(rots)])
        x = torch.from_numpy(np.ascontiguousarray(imgs)).float().div_(255.0)
        x = x.permute(0, 1, 4, 2, 3)                         # (ways, S+Q, C, H, W)
        if self.input_crop is not None:
            x = resize_center_crop(x.flatten(0, 1), **self.input_crop).unflatten(0, x.shape[:2])
        if self.out_shape is not None and tuple(x.shape[2:]) != self.out_shape:
            x = convert_images(x.flatten(0, 1), self.out_shape).unflatten(0, x.shape[:2])
        x = (x - self.mean.unsqueeze(0)) / self.std.unsqueeze(0)
        return split_task(x, self.shots, classes, key)

    def fingerprint(self, n: int) -> str:
        """Identifier of the first n episodes (same across methods => valid paired comparisons)."""
        return indices_fingerprint(self.indices, n)


def split_task(x: torch.Tensor, shots: int, classes: np.ndarray, key: Sequence[int]) -> Task:
    """Examples grouped by class, x (ways, S+Q, ...) -> the Task whose support is each class's first `shots`
    examples and whose query the rest; label i = row i, `key` kept in Task.info as the episode's seed."""
    y = torch.arange(x.shape[0]).view(-1, 1).expand(-1, x.shape[1])
    xs, ys = x[:, :shots].reshape(-1, *x.shape[2:]), y[:, :shots].reshape(-1)
    xq, yq = x[:, shots:].reshape(-1, *x.shape[2:]), y[:, shots:].reshape(-1)
    return Task(xs, ys.contiguous(), xq, yq.contiguous(), classes=tuple(int(c) for c in classes),
                info={"episode_key": tuple(int(k) for k in key)})


def indices_fingerprint(indices: Callable[[int], tuple[np.ndarray, np.ndarray]], n: int) -> str:
    """Identifier of the first n episodes of a sampler whose episode i is `indices(i)` = (classes, picks)."""
    h = hashlib.sha256()
    for i in range(n):
        classes, picks = indices(i)
        h.update(classes.tobytes()); h.update(picks.tobytes())
    return h.hexdigest()[:16]


def convert_images(x: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] -> (N, C', H', W'): channels 1 -> 3 by repetition, 3 -> 1 by ITU-R BT.601
    luma (0.299 R + 0.587 G + 0.114 B, PIL's "L" conversion); size by antialiased bilinear resampling."""
    c, h, w = (int(v) for v in shape)
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and c == 1:
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        else:
            raise ValueError(f"cannot convert {x.shape[1]}-channel images to {c} channels")
    if tuple(x.shape[2:]) != (h, w):
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", antialias=True,
                                            align_corners=False).clamp_(0.0, 1.0)
    return x.contiguous()


def resize_center_crop(x: torch.Tensor, crop: int, resize: int | None = None) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] -> (N, C, crop, crop): the shorter side resized to `resize` (bilinear,
    antialiased when shrinking; None: no resize), then the centre crop, top-left at round((size - crop) / 2) --
    torchvision's Resize(resize) + CenterCrop(crop), the test-time transform of MTL's official code."""
    if resize is not None:
        h, w = x.shape[-2:]
        size = (resize, max(1, int(resize * w / h))) if h <= w else (max(1, int(resize * h / w)), resize)
        if tuple(x.shape[-2:]) != size:
            x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", antialias=True,
                                                align_corners=False).clamp_(0.0, 1.0)
    h, w = x.shape[-2:]
    if crop > min(h, w):
        raise ValueError(f"input crop {crop} exceeds the {h}x{w} images" + (f" resized to {resize}" if resize else ""))
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return x[..., top:top + crop, left:left + crop].contiguous()


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
    """Meta-training task distribution (the `uniform` sampler): meta-batch `iteration` is a pure function of
    (seed, iteration). Other samplers (metarepro.addons, e.g. the hard-task meta-batch) override `sample` and
    react to `feedback`; their state goes into the training checkpoint (state_dict / load_state_dict).
    """

    name = "uniform"

    def __init__(self, episodes: ImageEpisodes | SinusoidEpisodes) -> None:
        self.episodes = episodes

    def sample(self, iteration: int, batch: int) -> list[Task]:
        return [self.episodes.episode(iteration * batch + b) for b in range(batch)]

    def feedback(self, tasks: list[Task], results: Sequence[TaskResult]) -> None:
        """Called after each meta-step with every task's TaskResult (query loss, metric, per-class accuracy), in
        the order of `tasks` (unused by the uniform sampler)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
