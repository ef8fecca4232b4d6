"""Method registry: the only place a method name is bound to code."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import Learner, MetaLearner, Task
from .finetune import Finetune
from .maml import FOMAML, MAML
from .mamlpp import MAMLpp
from .matchingnet import MatchingNet
from .metalstm import MetaLSTM
from .metasgd import MetaSGD
from .nearest_neighbor import NearestNeighbor
from .pamela import PAMELA
from .protonet import ProtoNet

METHODS: dict[str, type[MetaLearner]] = {
    "maml": MAML, "fomaml": FOMAML, "metasgd": MetaSGD, "mamlpp": MAMLpp, "pamela": PAMELA, "metalstm": MetaLSTM,
    "protonet": ProtoNet, "matchingnet": MatchingNet, "finetune": Finetune, "nearest_neighbor": NearestNeighbor,
}


def build(name: str, model: nn.Module, task_type: str, **hparams: Any) -> MetaLearner:
    """Build method `name` around `model`; unknown names get an error listing the known ones."""
    if name not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))}")
    return METHODS[name](model, task_type=task_type, **hparams)


__all__ = ["METHODS", "build", "Learner", "MetaLearner", "Task"]
