"""The default meta-gradient aggregation: the mean of the per-task gradients (Finn et al. 2017, Alg. 1)."""
from __future__ import annotations

from torch import Tensor

from .base import Aggregator


class MeanAggregator(Aggregator):
    """The outer step (addons.outer.meta_step) computes the mean as sum_i backward(objective_i / T), one task's graph at a time, exactly as the
    pre-add-on code did, so every existing meta-gradient (and number) is unchanged bit for bit."""

    name = "mean"
    per_task_gradients = False

    def combine(self, grads: Tensor) -> Tensor:
        return grads.mean(0)
