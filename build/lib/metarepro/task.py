"""The few-shot task and a task's detached outcome: the data layer's vocabulary, shared with methods and add-ons.

Its own module so that data/ (which builds tasks) imports nothing from methods/ (which consumes them).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor


@dataclass(frozen=True)
class Task:
    """One few-shot task. Classification: x (N, C, H, W), y int64 labels 0..ways-1.
    Regression: x (N, 1), y (N, 1)."""
    x_support: Tensor
    y_support: Tensor
    x_query: Tensor
    y_query: Tensor
    classes: tuple = ()               # global class ids (hard-task sampling, analysis); a stack: one tuple per task
    info: Mapping[str, Any] | None = None  # e.g. sinusoid amplitude/phase
    n_tasks: int = 0                  # > 0: a stack of n_tasks tasks along a leading dim (Task.stack)

    def to(self, device: torch.device | str) -> "Task":
        return Task(self.x_support.to(device), self.y_support.to(device), self.x_query.to(device),
                    self.y_query.to(device), self.classes, self.info, self.n_tasks)

    @staticmethod
    def stack(tasks: "list[Task]") -> "Task":
        """Tasks of equal shapes as one task with a leading task dim: x (T, N, ...), y (T, N, ...)."""
        return Task(*(torch.stack([getattr(t, f) for t in tasks])
                      for f in ("x_support", "y_support", "x_query", "y_query")),
                    classes=tuple(t.classes for t in tasks) if any(t.classes for t in tasks) else (),
                    n_tasks=len(tasks))


@dataclass(frozen=True)
class TaskResult:
    """One task's outcome of a meta-step, detached (what a TaskSampler receives): query loss, metric (accuracy % or
    MSE), per-class query accuracy in % (index = the task's label, `classes[i]` its global class id; None for
    regression)."""
    loss: float
    metric: float
    class_accuracy: tuple[float, ...] | None
    classes: tuple[int, ...]
