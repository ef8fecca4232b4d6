"""Sharp-MAML (Abbas, Xiao, Chen, Chen & Chen 2022, "Sharp-MAML: Sharpness-Aware Model-Agnostic Meta Learning",
ICML): MAML with sharpness-aware minimisation (SAM, Foret et al. 2021) in the outer loop, the inner loop, or both.

SAM at a point w with gradient g of a loss L: step with the gradient of L at w + e, e = radius * g / ||g|| (the
norm over every parameter the step updates), e held constant (no gradient through it), as SAM does.
- `sam_outer` ("Sharp-MAML_up"): the meta-gradient is taken at theta + e, e from the meta-gradient at theta; the
  optimizer then updates theta (not theta + e) with it.
- `sam_inner` ("Sharp-MAML_low"): each inner step of meta-training uses the support gradient at phi + e, e from
  the support gradient at phi. Test-time adaptation is plain gradient descent (SAM regularises training).
The official code's `--SAM_lower` flag is parsed with `type=bool`, so any value given (even "False") turns
lower-level SAM on; here `sam_inner: false` is off.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor, nn

from .base import Params, StepStats, Task, finite_grads
from .maml import MAML


def sam_perturbation(grads: dict[Any, Tensor], radius: float) -> dict[Any, Tensor]:
    """e = radius * g / ||g||, ||g|| the L2 norm over all the gradients together (detached)."""
    norm = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads.values()))
    scale = radius / (norm + 1e-12)
    return {k: g.detach() * scale for k, g in grads.items()}


class SharpMAML(MAML):
    name = "sharp_maml"
    task_batching = False     # the perturbation's norm is per task: keep the per-task loop

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float,
                 inner_steps: int, eval_inner_steps: int | None, first_order: bool,
                 sam_outer: bool, sam_inner: bool, radius: float) -> None:
        # defaults and their sources: the card in method_cards.yaml
        super().__init__(model, task_type, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=first_order)
        self.sam_outer, self.sam_inner, self.radius = bool(sam_outer), bool(sam_inner), float(radius)

    def support_grads(self, params: Params, task: Task, step: int, create_graph: bool) -> dict[str, Tensor]:
        if not (self.sam_inner and self.training):
            return super().support_grads(params, task, step, create_graph)
        e = sam_perturbation(super().support_grads(params, task, step, create_graph=False), self.radius)
        shifted = {k: v + e[k] if k in e else v for k, v in params.items()}
        return super().support_grads(shifted, task, step, create_graph)

    def outer_gradient(self, gradient: Callable[[], StepStats], params: list[Tensor]) -> StepStats:
        """With `sam_outer`: the meta-gradient at theta + e (e from the meta-gradient at theta) left in `.grad`,
        theta restored; the stats (what is logged) are those at theta."""
        stats = gradient()
        if not self.sam_outer or not finite_grads(params):
            return stats
        moved = {i: p for i, p in enumerate(params) if p.grad is not None}
        e = sam_perturbation({i: p.grad for i, p in moved.items()}, self.radius)
        saved = {i: p.detach().clone() for i, p in moved.items()}
        with torch.no_grad():
            for i, p in moved.items():
                p.add_(e[i])
        for p in params:
            p.grad = None
        gradient()
        with torch.no_grad():
            for i, p in moved.items():
                p.copy_(saved[i])
        return stats
