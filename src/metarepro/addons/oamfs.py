"""O-AMFS: the cosine-weighted outer loop of "Fast Adaptation with Kernel and Gradient based Meta Learning"
(arXiv:2411.00404). Per-task meta-gradients are weighted by how well they agree with the other tasks' gradients,
so that a task whose gradient conflicts with the rest of the meta-batch counts less.

No code was published; the exact weighting is our choice, written here:
    c_i = 1/(T-1) * sum_{j != i} cos(g_i, g_j)        mean cosine similarity with the other tasks (in [-1, 1])
    w_i = (1 + c_i) / 2                                mapped to [0, 1]: full agreement 1, full conflict 0
    g   = sum_i w_i g_i / sum_i w_i                    a weighted mean (equal weights give the plain mean)
T = 1 gives g_1; if every w_i is 0 (two exactly opposite gradients) the plain mean is used. A zero gradient
vector has cosine 0 with every other one.

With an outer-loss term that has parameters of its own (CML's co-learner), g_i also holds the term's parameters.
The weights w_i are computed from the learner's own columns only (its meta-gradient, which includes the term's
share on the learner's parameters) and applied to the whole g_i: O-AMFS weighs tasks by how the meta-learner's
updates agree, and a separate model of another size in the same vector would otherwise shift that agreement.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Aggregator


def cosine_weights(grads: Tensor) -> Tensor:
    """(T, P) per-task gradients -> (T,) weights summing to 1 (see the module docstring)."""
    t = grads.shape[0]
    if t == 1:
        return torch.ones(1, dtype=grads.dtype, device=grads.device)
    unit = F.normalize(grads, dim=1)                    # (T, P); a zero row stays zero
    cos = unit @ unit.t()                               # (T, T)
    c = (cos.sum(1) - cos.diagonal()) / (t - 1)
    w = (1 + c) / 2
    if float(w.sum()) <= 0:
        w = torch.ones_like(w)
    return w / w.sum()


class CosineAggregator(Aggregator):
    name = "oamfs"
    per_task_gradients = True

    def combine(self, grads: Tensor) -> Tensor:
        return (cosine_weights(grads).unsqueeze(1) * grads).sum(0)

    def combine_with(self, grads: Tensor, learner_columns: Tensor) -> Tensor:
        own = grads if bool(learner_columns.all()) else grads[:, learner_columns]
        return (cosine_weights(own).unsqueeze(1) * grads).sum(0)
