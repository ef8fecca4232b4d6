"""Baseline-nearest-neighbor (Ravi & Larochelle 2017, "Optimization as a Model for Few-Shot Learning", ICLR).

A classifier is pretrained on all meta-train classes (metarepro.pretrain); at meta-test time each query is
given the label of its nearest support example under cosine distance between the pretrained features (the
head is dropped). Nothing is meta-trained. The learner's logits are, per class, the largest cosine similarity
to that class's support examples, so argmax = the 1-NN label.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import ClosedFormLearner, MetaLearner, Task
from ..models import drop_head


class NearestNeighbor(MetaLearner):
    name = "nearest_neighbor"
    # needs_pretrained = True, meta_trainable = False: set from its card (method_cards.yaml)

    def __init__(self, model: nn.Module, task_type: str = "classification", *, transductive: bool) -> None:
        # transductive: support and query features from one batch (batch norm over all S + Q images); the
        #   pretrained backbone keeps no running statistics (it normalises with the batch, as MAML's Conv-4)
        if task_type != "classification":
            raise ValueError(f"{self.name} is a classification method; got task_type {task_type!r}")
        drop_head(model)
        super().__init__(model, task_type, inner_steps=0, eval_inner_steps=0)
        self.transductive = bool(transductive)

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[ClosedFormLearner]:
        ctx = contextlib.nullcontext() if self.training else torch.no_grad()
        ways = int(task.y_support.max()) + 1
        with ctx:
            zs, zq = self.embed_task(task, self.transductive)
            zs = F.normalize(zs, dim=1)                               # (S, D) unit vectors
        # (S, ways): 0 where the support example is of the class, -inf elsewhere
        mask = torch.full((len(task.y_support), ways), float("-inf"), dtype=zs.dtype, device=zs.device)
        mask[torch.arange(len(task.y_support)), task.y_support] = 0.0

        def predict(x: Tensor) -> Tensor:
            with ctx:
                z = zq if zq is not None and x is task.x_query else self.embed(x)
                sims = F.normalize(z, dim=1) @ zs.t()                       # (Q, S) cosine similarities
                return (sims.unsqueeze(2) + mask.unsqueeze(0)).amax(dim=1)  # (Q, S, ways) -> (Q, ways)
        yield ClosedFormLearner(self, predict, 0)
