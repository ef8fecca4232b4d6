"""Method cards (method_cards.yaml): each method's hyperparameters with defaults and sources, label, citation and
needs, written once. Torch-free, so that the Snakefile and the config validator can read them; the method
registry (metarepro.methods), the schema (metarepro.config) and the reports (metarepro.report) derive from them."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import yaml_io

CARDS_PATH = Path(__file__).resolve().parent / "method_cards.yaml"
FLAGS = {"gradient_based": False, "needs_pretrained": False, "meta_trainable": True, "any_train_ways": False,
         "classification_only": False, "on_graphs": False, "graph_only": False, "reference": False,
         "records_gates": False}


@dataclass(frozen=True)
class MethodCard:
    name: str
    label: str
    citation: str
    hparams: dict[str, dict] = field(default_factory=dict)
    choices: str = ""      # what the papers leave open and we chose (printed under the tables that show the method)
    gradient_based: bool = False
    needs_pretrained: bool = False
    meta_trainable: bool = True
    any_train_ways: bool = False
    classification_only: bool = False     # compares class prototypes or attends over labels: no regression
    on_graphs: bool = False     # runs on node-classification datasets (the GNN backbone; tested there)
    graph_only: bool = False    # defined for graphs only (G-Meta, AMM-GNN): refused on image and regression data
    reference: bool = False     # the method every other is compared with, pair-wise on the same episodes (one card)
    records_gates: bool = False     # evaluation records its learned gates per inner step (the gates figure reads them)
    # settings that validate one by one but cannot mean what the label says together: each a Python expression over
    # the hyperparameters (defaults filled in) that must hold, and the message that says why and what to change
    constraints: tuple[dict, ...] = ()
    # the parameter count the method's paper gives or defines, relative to MAML on its backbone: {vs_maml: "+34%",
    # source: "..."}; the complexity tables print it beside ours
    paper_parameters: dict = field(default_factory=dict)

    def defaults(self) -> dict[str, Any]:
        """Every hyperparameter's default (what a run gets when its config block omits it)."""
        return {k: v["default"] for k, v in self.hparams.items() if "default" in v}

    def problems(self, hp: dict | None) -> list[str]:
        """The messages of the constraints that the config block `hp` (defaults filled in) violates."""
        values = {**self.defaults(), **{k: v for k, v in (hp or {}).items() if k != "addons"}}
        out = []
        for c in self.constraints:
            if not eval(c["require"], {"__builtins__": {}}, dict(values)):   # shipped expressions, not user input
                out.append(c["message"].format(**values))
        return out

    def schema(self) -> dict:
        """The JSON schema of this method's config block (its hyperparameters plus the add-ons' settings)."""
        return {"type": ["object", "null"], "additionalProperties": False, "description": self.citation,
                "properties": {"addons": {"$ref": "#/$defs/addons"}, **self.hparams}}


@functools.lru_cache(maxsize=1)
def cards() -> dict[str, MethodCard]:
    """name -> MethodCard, in the file's order (the order tables list methods in)."""
    raw = yaml_io.safe_load(CARDS_PATH.read_text())
    out = {}
    for name, c in raw.items():
        unknown = set(c) - {"label", "citation", "hparams", "choices", "constraints", "paper_parameters", *FLAGS}
        if unknown or not {"label", "citation"} <= set(c):
            raise ValueError(f"{CARDS_PATH}: method {name!r} has unknown fields {sorted(unknown)} or lacks "
                             "label/citation")
        for hp, spec in (c.get("hparams") or {}).items():
            if "default" not in spec or "description" not in spec:
                raise ValueError(f"{CARDS_PATH}: {name}.hparams.{hp} needs a default and a description (its source)")
        out[name] = MethodCard(name=name, label=c["label"], citation=c["citation"], hparams=dict(c.get("hparams") or {}),
                               choices=" ".join(str(c.get("choices") or "").split()),
                               constraints=tuple(c.get("constraints") or ()),
                               paper_parameters=dict(c.get("paper_parameters") or {}),
                               **{f: bool(c.get(f, d)) for f, d in FLAGS.items()})
    return out


def card(name: str) -> MethodCard:
    """The card of a registered method (base name, without @tag or +add-ons)."""
    try:
        return cards()[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(cards())}") from None


def with_flag(flag: str) -> frozenset[str]:
    """The methods whose card sets `flag` (one of FLAGS)."""
    return frozenset(n for n, c in cards().items() if getattr(c, flag))
