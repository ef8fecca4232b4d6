"""Method registry: the only place a method name is bound to code. Everything else about a method (hyperparameters
and their defaults, label, citation, needs) is its card in metarepro/method_cards.yaml."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..cards import card
from ..config import ConfigError, MethodName
from .amfs import AMFS
from .ammgnn import AMMGNN
from .base import Learner, MetaLearner, Task
from .boil import BOIL
from .finetune import Finetune
from .gmeta import GMeta
from .maml import FOMAML, MAML
from .mamlpp import MAMLpp
from .matchingnet import MatchingNet
from .metalstm import MetaLSTM
from .metasgd import MetaSGD
from .mtl import MTL
from .nearest_neighbor import NearestNeighbor
from .pamela import PAMELA
from .protonet import ProtoNet
from .sharp_maml import SharpMAML

METHODS: dict[str, type[MetaLearner]] = {
    "maml": MAML, "fomaml": FOMAML, "metasgd": MetaSGD, "mamlpp": MAMLpp, "pamela": PAMELA, "metalstm": MetaLSTM,
    "boil": BOIL, "sharp_maml": SharpMAML, "amfs": AMFS, "mtl": MTL,
    "gmeta": GMeta, "ammgnn": AMMGNN,
    "protonet": ProtoNet, "matchingnet": MatchingNet, "finetune": Finetune, "nearest_neighbor": NearestNeighbor,
}

# the classes' flags come from their cards (the training loop reads them from the class)
for _name, _cls in METHODS.items():
    _cls.needs_pretrained = card(_name).needs_pretrained
    _cls.meta_trainable = card(_name).meta_trainable
    _cls.gradient_based = card(_name).gradient_based


def build(name: str, model: nn.Module, task_type: str, **hparams: Any) -> MetaLearner:
    """Build method `name` around `model`; unknown names get an error listing the known ones.

    A variant `<method>@<tag>` (metarepro.config.VARIANT_SEP) builds <method> with `hparams`: the variant's
    switches are its config block, the tag only names the run. Add-ons after the name (`maml+cml`) are built by
    metarepro.addons, not here: the method itself never knows about them.
    """
    try:
        method = MethodName.parse(name)
    except ConfigError:
        method = None
    if method is None or method.train_shots is not None or method.base not in METHODS:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(sorted(METHODS))} "
                       "(or <method>@<tag> and/or <method>+<addon>, of a-z, 0-9, _)")
    # every hyperparameter the config omits gets its card's default (the constructors have none of their own)
    return METHODS[method.base](model, task_type=task_type, **{**card(method.base).defaults(), **hparams})


__all__ = ["METHODS", "build", "Learner", "MetaLearner", "Task"]
