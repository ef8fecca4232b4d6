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
    # needs_pretrained = True, meta_trainable = False: set from its card (method_cards.yaml)

    def __init__(self, model: nn.Module, task_type: str = "classification", *, steps: int, lr: float,
                 head_only: bool, transductive: bool) -> None:
        # transductive (head_only only): the frozen support and query features come from one batch, so batch norm
        #   sees all S + Q images; fine-tuning every layer trains on the support batch alone, as the paper's
        # steps, lr: chosen on validation episodes in Ravi & Larochelle 2017 (values not published): tune them
        # head_only: False = "fine-tune this network" (all layers), as in the paper
        if not hasattr(model, "head") or not isinstance(model.head, nn.Linear):
            raise TypeError(f"{self.name} needs a backbone with a linear `head`; got {type(model).__name__}")
        if steps < 0 or lr <= 0:
            raise ValueError(f"finetune needs steps >= 0 and lr > 0, got steps={steps} lr={lr}")
        super().__init__(model, task_type, inner_steps=steps, eval_inner_steps=steps)
        self.lr, self.head_only, self.transductive = float(lr), bool(head_only), bool(transductive)

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
            zs, zq = self.embed_task(task, self.transductive)   # frozen features, computed once: (S, D), (Q, D)
        yield from self._head_trajectory(task, steps, zs, zq)

    def _head_trajectory(self, task: Task, steps: int, zs: Tensor, zq: Tensor | None) -> Iterator[Learner]:
        """Full-batch SGD on the head over frozen support features zs; learners score x_query by zq when given."""
        params = {k: v.detach() for k, v in self.init_params().items()}
        yield HeadLearner(self, params, 0, task, zq)
        for j in range(steps):
            with torch.enable_grad():
                head = {k: params[k].requires_grad_(True) for k in params if k.startswith(HEAD)}
                loss = self.loss(self.head(head, zs), task.y_support)
                grads = dict(zip(head, torch.autograd.grad(loss, list(head.values()))))
            params = {k: v.detach() for k, v in self.inner_update(params, grads, j).items()}
            yield HeadLearner(self, params, j + 1, task, zq)

    def evaluate_task(self, task: Task, steps: int | None = None, every_step: bool = True) -> list[float]:
        """As the base, but with frozen features the query features are computed once, not once per step."""
        if not self.head_only:
            return super().evaluate_task(task, steps, every_step)
        steps = self.eval_inner_steps if steps is None else steps
        with torch.no_grad():
            zs, zq = self.embed_task(task, self.transductive)
            if zq is None:
                zq = self.embed(task.x_query)
        scores = []
        for learner in self._head_trajectory(task, steps, zs, zq):
            if every_step or learner.step == steps:
                with torch.no_grad():
                    scores.append(self.metric(self.head(learner.params, zq), task.y_query))
        return scores


class HeadLearner(Learner):
    """The fine-tuned head on frozen features: the task's query set is scored from its precomputed features
    (computed with the support in one batch when transductive), any other input through the backbone."""

    def __init__(self, meta: Finetune, params: Params, step: int, task: Task, zq: Tensor | None) -> None:
        super().__init__(meta, params, step)
        self.task, self.zq = task, zq

    def __call__(self, x: Tensor) -> Tensor:
        z = self.zq if self.zq is not None and x is self.task.x_query else self.meta.embed(x)
        return self.meta.head(self.params, z)
