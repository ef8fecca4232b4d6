"""MAML (Finn, Abbeel & Levine 2017, "Model-Agnostic Meta-Learning for Fast Adaptation of Deep Networks").

Inner step: theta' = theta - alpha * grad_theta L_support(theta). Second order differentiates through
the inner gradient (create_graph=True); first-order MAML (FO-MAML, same paper, Sec. 5.2) treats the
inner gradient as a constant, so the meta-gradient is grad L_query evaluated at theta'.
"""
from __future__ import annotations

from torch import nn

from .base import MetaLearner, Params


class MAML(MetaLearner):
    name = "maml"
    task_batching = True

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float,
                 inner_steps: int, eval_inner_steps: int | None, first_order: bool = False) -> None:
        # defaults and their sources: the card in method_cards.yaml
        super().__init__(model, task_type, inner_steps, eval_inner_steps, first_order)
        self.inner_lr = float(inner_lr)

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        return {k: (v - self.inner_lr * grads[k]) if k in grads else v for k, v in params.items()}


class FOMAML(MAML):
    """First-order MAML: the registry name `fomaml`."""
    name = "fomaml"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float,
                 inner_steps: int, eval_inner_steps: int | None) -> None:
        super().__init__(model, task_type, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=True)
