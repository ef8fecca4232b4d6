"""Add-on registries: the only place an add-on name is bound to code, one registry per kind.

- SAMPLERS: task samplers, which tasks a meta-iteration trains on (`uniform` is the default);
- AGGREGATORS: how per-task meta-gradients are combined (`mean` is the default);
- TERMS: outer-loss terms with their own parameters.
A run names its add-ons after its method: `<method>[@<tag>][+<addon>...]`, e.g. `mamlpp+cml`, `fomaml+oamfs`,
`maml+ht+cml`; the add-ons' hyperparameters sit in the method's config block under `addons: {<addon>: {...}}`.
metarepro.config.ADDON_KINDS is the torch-free copy of these names that config validation uses (a test checks
they agree).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..addon_cards import card
from ..config import MethodName, RunConfig
from ..data.sampling import TaskSampler
from ..methods.base import MetaLearner
from .base import Aggregator, OuterTerm
from .cml import CoLearner
from .ht import HardTaskSampler
from .mean import MeanAggregator
from .oamfs import CosineAggregator

SAMPLERS: dict[str, type[TaskSampler]] = {"uniform": TaskSampler, "ht": HardTaskSampler}
AGGREGATORS: dict[str, type[Aggregator]] = {"mean": MeanAggregator, "oamfs": CosineAggregator}
TERMS: dict[str, type[OuterTerm]] = {"cml": CoLearner}


def registry(name: str) -> dict[str, type]:
    """The registry that binds add-on `name`: SAMPLERS, AGGREGATORS or TERMS."""
    return {"sampler": SAMPLERS, "aggregator": AGGREGATORS, "term": TERMS}[kind(name)]


def make(name: str, *args: Any, **hparams: Any) -> Any:
    """Construct add-on `name` (after its registry's leading arguments: the episodes of a sampler, the learner,
    input shape and output size of a term); every setting `hparams` omits gets its card's default (never the
    constructor's: they have none)."""
    return registry(name)[name](*args, **{**card(name).defaults(), **hparams})


def kind(name: str) -> str:
    """'sampler', 'aggregator' or 'term'; unknown names get an error listing the known ones."""
    for k, reg in (("sampler", SAMPLERS), ("aggregator", AGGREGATORS), ("term", TERMS)):
        if name in reg:
            return k
    known = sorted(set(SAMPLERS) | set(AGGREGATORS) | set(TERMS))
    raise KeyError(f"unknown add-on {name!r}; known: {', '.join(known)}")


@dataclass
class AddOns:
    """A run's add-ons, built around its learner by `build`."""
    sampler: str = "uniform"
    sampler_args: dict = field(default_factory=dict)
    aggregator: Aggregator = field(default_factory=MeanAggregator)
    terms: nn.ModuleList = field(default_factory=nn.ModuleList)

    def make_sampler(self, episodes: Any) -> TaskSampler:
        return make(self.sampler, episodes, **self.sampler_args)


def build(run: RunConfig, learner: MetaLearner, in_shape: tuple[int, ...], out_dim: int) -> AddOns:
    """The add-ons named in `run.method` (with their hyperparameters from run.addons)."""
    out = AddOns()
    for name in MethodName.parse(run.method).addons:
        hp = dict((run.addons or {}).get(name) or {})
        k = kind(name)
        # make() fills the settings the block omits from the add-on's card (not written back into run.addons)
        if k == "sampler":
            out.sampler, out.sampler_args = name, hp
        elif k == "aggregator":
            out.aggregator = make(name, **hp)
        else:
            out.terms.append(make(name, learner, in_shape, out_dim, **hp))
    if out.aggregator.per_task_gradients and any(t.noise_control for t in out.terms):
        raise ValueError(f"method {run.method!r}: the noise control of an outer-loss term needs the mean "
                         f"aggregator, not {out.aggregator.name!r}")
    return out


__all__ = ["AGGREGATORS", "SAMPLERS", "TERMS", "AddOns", "Aggregator", "OuterTerm", "build", "kind", "make",
           "registry"]
