"""Baseline-finetune (Ravi & Larochelle 2017, "Optimization as a Model for Few-Shot Learning", ICLR).

A classifier is pretrained on all meta-train classes (metarepro.pretrain); for each meta-test episode its
features are kept, a new linear head for the N ways is put on top (the run's head, initialised from the run
seed, the same for every episode), and the network is fine-tuned on the support set with full-batch SGD for
`steps` steps. Nothing is meta-trained. `head_only` freezes the features (then they are computed once per
episode, which makes many steps cheap). The paper chooses the fine-tuning hyperparameters on the validation
episodes and does not publish them.
"""
from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .base import Learner, MetaLearner, Params, Task

HEAD = "head."


class Finetune(MetaLearner):
    name = "finetune"
    needs_pretrained = True
    meta_trainable = False

    def __init__(self, model: nn.Module, task_type: str = "classification", steps: int = 100, lr: float = 0.01,
                 head_only: bool = False) -> None:
        # steps, lr: chosen on validation episodes in Ravi & Larochelle 2017 (values not published): tune them
        # head_only: False = "fine-tune this network" (all layers), as in the paper
        if not hasattr(model, "head") or not isinstance(model.head, nn.Linear):
            raise TypeError(f"{self.name} needs a backbone with a linear `head`; got {type(model).__name__}")
        if steps < 0 or lr <= 0:
            raise ValueError(f"finetune needs steps >= 0 and lr > 0, got steps={steps} lr={lr}")
        super().__init__(model, task_type, inner_steps=steps, eval_inner_steps=steps)
        self.lr, self.head_only = float(lr), bool(head_only)

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        return {k: (v - self.lr * grads[k]) if k in grads else v for k, v in params.items()}

    def head(self, params: Params, z: Tensor) -> Tensor:
        """The head at `params` applied to features z (B, D) -> (B, ways)."""
        return functional_call(self.model.head, {k[len(HEAD):]: v for k, v in params.items() if k.startswith(HEAD)},
                               (z,))

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[Learner]:
        if not self.head_only:
            yield from super().adapt_trajectory(task, steps, create_graph=False)   # nothing to differentiate through
            return
        with torch.no_grad():
            zs = self.embed(task.x_support)                  # frozen features, computed once: (S, D)
        params = {k: v.detach() for k, v in self.init_params().items()}
        yield Learner(self, params, 0)
        for j in range(steps):
            with torch.enable_grad():
                head = {k: params[k].requires_grad_(True) for k in params if k.startswith(HEAD)}
                loss = self.loss(self.head(head, zs), task.y_support)
                grads = dict(zip(head, torch.autograd.grad(loss, list(head.values()))))
            params = {k: v.detach() for k, v in self.inner_update(params, grads, j).items()}
            yield Learner(self, params, j + 1)

    def evaluate_task(self, task: Task, steps: int | None = None, every_step: bool = True) -> list[float]:
        """As the base, but with frozen features the query features are computed once, not once per step."""
        if not self.head_only:
            return super().evaluate_task(task, steps, every_step)
        steps = self.eval_inner_steps if steps is None else steps
        with torch.no_grad():
            zq = self.embed(task.x_query)
        scores = []
        for learner in self.adapt_trajectory(task, steps, create_graph=False):
            if every_step or learner.step == steps:
                with torch.no_grad():
                    scores.append(self.metric(self.head(learner.params, zq), task.y_query))
        return scores
