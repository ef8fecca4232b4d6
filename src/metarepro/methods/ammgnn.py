"""AMM-GNN (Wang, Ding, Zhou, Liu & Liu 2020, "Graph Few-shot Learning with Attribute Matching", CIKM): MAML on a
GNN whose node attributes are modulated per task by a feature-level attention, because the attribute
distributions of meta-tasks differ.

Our reading (the paper's formulas could not be read here; its abstract names an attribute-level attention that
captures each task's distinct information, and no official code exists): a task summary s = the mean attribute
vector over the real nodes of the support subgraphs; the attention gives a feature-wise scale and shift
gamma = tanh(W_g s + b_g), beta = tanh(W_b s + b_b), and every node's attributes x become (1 + gamma) * x + beta
(FiLM, Perez et al. 2018) before the GNN. The modulation network is meta-learned in the outer loop only; the
inner loop adapts the GNN and its head by gradient steps, as MAML (Finn et al. 2017).
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import torch
from torch import Tensor, nn

from .base import Learner, Task
from .maml import MAML


class ModulatedLearner(Learner):
    """A learner that modulates its inputs' node attributes with the task's (gamma, beta) before the GNN."""

    def __init__(self, inner: Learner, meta: "AMMGNN", film: tuple[Tensor, Tensor]) -> None:
        super().__init__(meta, inner.params, inner.step)
        self.inner, self.film = inner, film

    def __call__(self, x: Tensor) -> Tensor:
        return self.inner(self.meta.modulate(x, self.film))


class AMMGNN(MAML):
    name = "ammgnn"
    task_batching = False

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float,
                 inner_steps: int, eval_inner_steps: int | None, first_order: bool) -> None:
        # defaults and their sources: the card in method_cards.yaml
        if task_type != "classification":
            raise ValueError(f"{self.name} is a classification method; got task_type {task_type!r}")
        super().__init__(model, task_type, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=first_order)
        feats = getattr(model, "features", None)
        n_nodes = getattr(feats, "n_nodes", None)
        first = feats.layers[0] if feats is not None and hasattr(feats, "layers") else None
        if n_nodes is None or first is None:
            raise TypeError(f"{self.name} needs the gnn backbone (node samples (M, M + F)); got "
                            f"{type(model).__name__}")
        self.n_nodes, d = int(n_nodes), int(first.in_features)
        self.attention = nn.Linear(d, 2 * d, dtype=first.weight.dtype, device=first.weight.device)
        # start at the identity modulation (gamma = beta = 0): meta-training begins from plain MAML
        nn.init.zeros_(self.attention.weight)
        nn.init.zeros_(self.attention.bias)

    def task_film(self, x_support: Tensor) -> tuple[Tensor, Tensor]:
        """(gamma, beta), each (F,), from the mean attributes of the support subgraphs' real nodes."""
        m = self.n_nodes
        real = (x_support[..., :m].diagonal(dim1=-2, dim2=-1) > 0).to(x_support.dtype)   # (S, M): self-loops
        attrs = x_support[..., m:]                                                          # (S, M, F)
        s = (attrs * real.unsqueeze(-1)).sum((0, 1)) / real.sum().clamp_min(1.0)            # (F,)
        gamma, beta = torch.tanh(self.attention(s)).chunk(2)
        return gamma, beta

    def modulate(self, x: Tensor, film: tuple[Tensor, Tensor]) -> Tensor:
        """x (B, M, M + F) with each real node's attributes a -> (1 + gamma) * a + beta (padding rows stay 0)."""
        m = self.n_nodes
        gamma, beta = film
        real = (x[..., :m].diagonal(dim1=-2, dim2=-1) > 0).to(x.dtype).unsqueeze(-1)       # (B, M, 1)
        attrs = (x[..., m:] * (1 + gamma) + beta) * real
        return torch.cat([x[..., :m], attrs], dim=-1)

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[Learner]:
        film = self.task_film(task.x_support)
        if not self.training:
            film = (film[0].detach(), film[1].detach())
        modulated = dataclasses.replace(task, x_support=self.modulate(task.x_support, film),
                                        x_query=self.modulate(task.x_query, film))
        for learner in super().adapt_trajectory(modulated, steps, create_graph):
            yield ModulatedLearner(learner, self, film)
