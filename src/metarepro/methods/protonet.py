"""Prototypical Networks (Snell, Swersky & Zemel 2017, "Prototypical Networks for Few-shot Learning", NeurIPS).

Embedding f = the backbone's features (its linear head is dropped). Prototype of class k: c_k = mean of f(x_i)
over the support images of class k. Logits of a query x: -d(f(x), c_k), d = squared Euclidean distance (the
paper's choice; cosine, their ablation, is the option `distance: cosine`). Adaptation is closed form, 0 gradient
steps, so evaluation reports a single score (by_step "0"). Meta-training is episodic cross-entropy of the query
logits, back-propagated into the embedding through the query embeddings and the prototypes.
Batch norm: support and query are embedded as one batch (`transductive`, the default), as Snell et al.'s code does,
so the batch statistics come from all S + Q images rather than from a 1-shot support set of `ways` images.
Training ways: the paper trains with more ways than it tests (60-way Omniglot, 30/20-way miniImageNet): set
`train.ways` (the prototypes adapt to any number of classes).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import drop_head
from .base import ClosedFormLearner, MetaLearner, Task

DISTANCES = ("sqeuclidean", "cosine")


def class_means(z: Tensor, y: Tensor, ways: int) -> Tensor:
    """Per-class mean of embeddings: z (S, D), y (S,) in 0..ways-1 -> (ways, D)."""
    onehot = F.one_hot(y, ways).to(z.dtype)                     # (S, ways)
    return onehot.t() @ z / onehot.sum(0).unsqueeze(1)          # (ways, D) / (ways, 1)


class ProtoNet(MetaLearner):
    name = "protonet"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, distance: str,
                 cosine_scale: float, learn_scale: bool, transductive: bool) -> None:
        # transductive: embed support and query as one batch (batch norm over all S + Q images), as Snell et al.'s
        #   code does; False: separate batches (a 1-shot support set is then a batch of `ways` images)
        # distance: squared Euclidean (Snell et al. 2017: it beats cosine in their comparison)
        # cosine_scale: cosine logits lie in [-1, 1], too flat for a softmax over 5+ classes; they are multiplied
        #   by a temperature, learned (metric scaling, Oreshkin et al. 2018, TADAM) from 10 (the initial scale of
        #   the cosine classifier of Gidaris & Komodakis 2018); unused with sqeuclidean
        if task_type != "classification":
            raise ValueError(f"{self.name} is a classification method; got task_type {task_type!r}")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {', '.join(DISTANCES)}, got {distance!r}")
        if cosine_scale <= 0:
            raise ValueError(f"cosine_scale must be > 0, got {cosine_scale}")
        drop_head(model)
        super().__init__(model, task_type, inner_steps=0, eval_inner_steps=0)
        self.distance, self.transductive = distance, bool(transductive)
        if distance == "cosine":     # only then: a squared-Euclidean ProtoNet keeps exactly its parameters
            scale = torch.tensor(float(cosine_scale), dtype=next(model.parameters()).dtype)
            if learn_scale:
                self.scale = nn.Parameter(scale)
            else:
                self.register_buffer("scale", scale)

    def scores(self, z: Tensor, protos: Tensor) -> Tensor:
        """Logits of embeddings z (Q, D) against prototypes (ways, D) -> (Q, ways)."""
        if self.distance == "cosine":
            return self.scale * (F.normalize(z, dim=1) @ F.normalize(protos, dim=1).t())
        return -((z.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1)   # (Q, 1, D) - (1, ways, D) -> (Q, ways)

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[ClosedFormLearner]:
        """Closed form: one learner (step 0) whatever `steps` is. Keeps the graph only while training."""
        ctx = contextlib.nullcontext() if self.training else torch.no_grad()
        ways = int(task.y_support.max()) + 1
        with ctx:
            zs, zq = self.embed_task(task, self.transductive)
            protos = class_means(zs, task.y_support, ways)

        def predict(x: Tensor) -> Tensor:
            with ctx:
                return self.scores(zq if zq is not None and x is task.x_query else self.embed(x), protos)
        yield ClosedFormLearner(self, predict, 0)
