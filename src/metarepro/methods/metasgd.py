"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot Learning", arXiv:1707.09835).

Inner step: theta' = theta - alpha ∘ grad_theta L_support(theta), where alpha has one entry per parameter entry
(same shape as theta) and is meta-learned jointly with the initialisation theta: both are in
`learner.parameters()` (so the outer Adam updates them) and in `state_dict()`. One inner step, as in the paper.
The meta-gradient reaching alpha is dL_q/dalpha = -grad_s ∘ dL_q/dtheta' (grad_s is the support gradient), and
it flows in first-order mode too (only the Hessian term through grad_s is dropped).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .base import MetaLearner, Params


def safe_key(name: str) -> str:
    """nn.ParameterDict keys may not contain '.': 'features.0.0.weight' -> 'features__0__0__weight'."""
    return name.replace(".", "__")


class MetaSGD(MetaLearner):
    name = "metasgd"
    task_batching = True

    def __init__(self, model: nn.Module, task_type: str = "classification", *, init_lr: float,
                 init_lr_range: Sequence[float] | None, inner_steps: int,
                 eval_inner_steps: int | None, first_order: bool) -> None:
        # init_lr: constant start for every alpha entry (0.01 = MAML's alpha for miniImageNet / sinusoid).
        # init_lr_range: the paper instead draws every alpha entry uniformly from [0.005, 0.1] (Li et al. 2017,
        #   Sec. 4); give [0.005, 0.1] to do that (drawn from the torch RNG, i.e. a function of the run seed).
        # inner_steps: 1, "in just one step" for training and testing (Li et al. 2017, Sec. 3 and 4).
        super().__init__(model, task_type, inner_steps, eval_inner_steps, first_order)
        self.init_lr = float(init_lr)
        self.init_lr_range = None if init_lr_range is None else (float(init_lr_range[0]), float(init_lr_range[1]))
        if self.init_lr_range is not None and not 0 <= self.init_lr_range[0] <= self.init_lr_range[1]:
            raise ValueError(f"init_lr_range must be [low, high] with 0 <= low <= high, got {init_lr_range}")
        self.alpha = nn.ParameterDict()
        for name, p in model.named_parameters():
            a = torch.empty_like(p, requires_grad=False)
            if self.init_lr_range is None:
                a.fill_(self.init_lr)
            else:
                a.uniform_(*self.init_lr_range)
            self.alpha[safe_key(name)] = nn.Parameter(a)

    def lr(self, name: str) -> torch.Tensor:
        """The learned step-size tensor for parameter `name` (same shape as the parameter)."""
        return self.alpha[safe_key(name)]

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        return {k: (v - self.lr(k) * grads[k]) if k in grads else v for k, v in params.items()}
