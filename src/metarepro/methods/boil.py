"""BOIL (Oh, Yoo, Kim & Yun 2021, "BOIL: Towards Representation Change for Few-shot Learning", ICLR).

MAML whose inner loop updates the body only: the head's inner learning rate is 0, so adaptation must change the
representation (the features) while the classifier keeps its meta-learned weights; the outer loop meta-learns
body and head as MAML does. The head is the backbone's `head` module (every backbone in metarepro.models has one).
"""
from __future__ import annotations

from torch import nn

from .base import Params
from .maml import MAML

HEAD = "head."


class BOIL(MAML):
    name = "boil"

    def __init__(self, model: nn.Module, task_type: str = "classification", *, inner_lr: float,
                 inner_steps: int, eval_inner_steps: int | None, first_order: bool) -> None:
        # defaults and their sources: the card in method_cards.yaml
        super().__init__(model, task_type, inner_lr=inner_lr, inner_steps=inner_steps,
                         eval_inner_steps=eval_inner_steps, first_order=first_order)

    def inner_update(self, params: Params, grads: Params, step: int) -> Params:
        return {k: (v - self.inner_lr * grads[k]) if k in grads and not k.startswith(HEAD) else v
                for k, v in params.items()}
