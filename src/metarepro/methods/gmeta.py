"""G-Meta (Huang & Zitnik 2020, "Graph Meta Learning via Local Subgraphs", NeurIPS): MAML on local subgraphs with
a prototypical loss.

Each node is its local subgraph (metarepro.data.graphs); the GNN (metarepro.models.gnn) embeds it: z = the linear
layer on the centre node's embedding (G-Meta's code: GCN layers, then one linear layer whose `ways` outputs are
the embedding the prototypes average; the co-learner of CML reads the centre embedding before that layer). With parameters theta_j after j inner steps, the prototype of class k is the
mean support embedding c_k = mean_{i: y_i = k} z_i(theta_j), and a node's logits are the negative squared
Euclidean distances -||z(theta_j) - c_k||^2 (Snell et al. 2017). Inner step (MAML, Finn et al. 2017):
theta_{j+1} = theta_j - alpha * grad L_support(theta_j), L_support = cross-entropy of the support nodes' logits
against their own prototypes. The outer loss is the query nodes' cross-entropy against the prototypes of the
adapted parameters. G-Meta's code is first order (its inner gradients are constants: autograd.grad without
create_graph), the card's default; `first_order: false` differentiates through the inner loop. Prototypes: at
step j from theta_j, as the method defines them (the code scores the query after step j + 1 against the
prototypes of theta_j, a one-step lag that the paper does not describe).
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Learner, Params, Task
from .maml import MAML
from .protonet import class_means


def prototype_logits(z: Tensor, protos: Tensor) -> Tensor:
    """-||z - c_k||^2: z (N, D), protos (ways, D) -> (N, ways)."""
    return -((z.unsqueeze(1) - protos.unsqueeze(0)) ** 2).sum(-1)


class PrototypeLearner(Learner):
    """The adapted GNN classifying by distance to the support prototypes that the same parameters give. The support
    pass runs first and once, so a forward hook (CML's tap) sees the scored nodes' pass last."""

    def __init__(self, meta: "GMeta", params: Params, step: int, task: Task) -> None:
        super().__init__(meta, params, step)
        self.task = task
        self._protos: Tensor | None = None

    def prototypes(self) -> Tensor:
        if self._protos is None:
            slot = self.meta.query_slot(self.step)
            zs = self.meta.forward_with(self.params, self.task.x_support, slot)
            self._protos = class_means(zs, self.task.y_support, int(self.task.y_support.max()) + 1)
        return self._protos

    def __call__(self, x: Tensor) -> Tensor:
        protos = self.prototypes()
        return prototype_logits(self.meta.forward_with(self.params, x, self.meta.query_slot(self.step)), protos)


class GMeta(MAML):
    name = "gmeta"
    task_batching = False

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float,
                 inner_steps: int, eval_inner_steps: int | None, first_order: bool) -> None:
        # defaults and their sources: the card in method_cards.yaml
        if task_type != "classification":
            raise ValueError(f"{self.name} is a classification method; got task_type {task_type!r}")
        super().__init__(model, task_type, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=first_order)

    def support_grads(self, params: Params, task: Task, step: int, create_graph: bool) -> dict[str, Tensor]:
        """Gradient of the support nodes' prototypical loss (their logits against their own class means)."""
        with torch.enable_grad():
            zs = self.forward_with(params, task.x_support, step)
            protos = class_means(zs, task.y_support, int(task.y_support.max()) + 1)
            loss = F.cross_entropy(prototype_logits(zs, protos), task.y_support)
            names = [k for k, v in params.items() if v.requires_grad]
            grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph)
        if not create_graph:
            grads = tuple(g.detach() for g in grads)
        return dict(zip(names, grads))

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[Learner]:
        for learner in super().adapt_trajectory(task, steps, create_graph):
            yield PrototypeLearner(self, learner.params, learner.step, task)
