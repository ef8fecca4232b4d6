"""Config loading, schema validation (with defaults) and resolution into per-run configs.

Torch-free on purpose: the Snakefile imports this module to validate the config and to enumerate
runs, and Snakemake must never import torch.
"""
from __future__ import annotations

import copy
import difflib
import functools
import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml
from jsonschema import Draft7Validator, validators

from . import yaml_io
from .addon_cards import ADDON_CARDS, ADDON_KINDS, GRAPH_ADDONS
from .cards import card, cards, with_flag
from .report_cards import FIGURE_CARDS
from .dataset_cards import (DATASET_CARDS, DATASET_ORDER, GRAPH as GRAPH_DATASETS, IMAGE as IMAGE_DATASETS,
                            ON_THE_FLY as ON_THE_FLY_DATASETS, REGRESSION as REGRESSION_DATASETS)
from .classes import concept_overlap, overlap_error, same_collection, split_class_names
from .utils import MetareproError

# Package data, so a non-editable install validates configs too; workflow/schemas/config.schema.yaml (where the
# Snakemake layout puts it) is a symlink to this file.
SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"


class ConfigError(MetareproError):
    """A configuration problem; the message names the offending key and the allowed values."""


# Methods that start from the backbone of the `pretrain` stage: Snakemake adds its backbone.pt to their
# metatrain inputs and resolve_run puts its path in RunConfig.pretrained (from the method cards, torch-free).
PRETRAINED_METHODS: frozenset[str] = with_flag("needs_pretrained")

# A method variant `<method>@<tag>` (e.g. `pamela@q_shared`) is the registered method <method> run with the
# hyperparameters of its own config block, under its own name: so one experiment can run the same method with
# different switches (an ablation table) without the runs colliding in results/{dataset}/{method}/. The schema
# validates the block against <method>'s; the registry builds <method>; the report labels it by its full name.
VARIANT_SEP = "@"


# Add-ons compose with any base method and are named after it: `<method>[@<tag>][+<addon>...]`, e.g. `maml+cml`,
# `mamlpp+cml+oamfs`, `pamela@q_shared+ht`. The same string names the run's results folder
# (results/{dataset}/maml+cml/...) and its report label ("MAML + CML"); the add-ons' hyperparameters sit in the
# method's block under `addons: {cml: {...}}`. ADDON_KINDS (name -> kind) comes from the add-on cards
# (metarepro.addon_cards; tests/unit/test_addons.py checks they agree with the registries of metarepro.addons).
# A run has at most one sampler and one aggregator.
ADDON_SEP = "+"
# Methods with nothing to meta-train (the pretrained baselines): no outer loss, so no add-on applies to them.
NOT_META_TRAINED: frozenset[str] = frozenset(cards()) - with_flag("meta_trainable")
# Methods whose predictions do not depend on a ways-sized head, so they may meta-train with more ways than they
# are tested with (`train.ways`).
ANY_TRAIN_WAYS: frozenset[str] = with_flag("any_train_ways")
# Methods that predict labels from the support set's classes (prototypes, attention over labels): no regression.
CLASSIFICATION_ONLY: frozenset[str] = with_flag("classification_only")
ON_GRAPHS: frozenset[str] = with_flag("on_graphs")
GRAPH_ONLY: frozenset[str] = with_flag("graph_only")
# GRAPH_ADDONS (addon_cards): the add-ons tested on node classification (the hard-task sampler's re-drawn classes
# may span graphs; O-AMFS is untested there)
TRAIN_SHOTS_SEP = "~train"   # report-side suffix, `maml~train5`: a run meta-trained at 5 shots, tested at others
_METHOD_NAME = re.compile(r"^(?P<base>[a-z0-9_]+)(?:@(?P<tag>[a-z0-9_]+))?(?P<addons>(?:\+[a-z0-9_]+)*)"
                          r"(?:~train(?P<train_shots>[0-9]+))?$")


@dataclass(frozen=True)
class MethodName:
    """The one reading of a method name, `<method>[@<tag>][+<addon>...]`: the registered method, the variant tag
    that names a run with other switches, and the add-ons composed with it. `str()` gives the name back as written,
    `canonical()` the one spelling a run has (add-ons in alphabetical order). Reports read one more, optional
    suffix, `~train<K>`: a run meta-trained at K shots and tested at the row's (TRAIN_SHOTS_SEP)."""
    base: str
    tag: str = ""
    addons: tuple[str, ...] = ()
    train_shots: int | None = None

    @classmethod
    def parse(cls, name: "str | MethodName") -> "MethodName":
        """'pamela@q_shared+cml+ht' -> MethodName('pamela', 'q_shared', ('cml', 'ht')); a bad name is a ConfigError
        that shows the grammar."""
        if isinstance(name, MethodName):
            return name
        m = _METHOD_NAME.match(name)
        if m is None:
            raise ConfigError(f"method name {name!r} is not <method>[@<tag>][+<addon>...] (a-z, 0-9, _)")
        return cls(m["base"], m["tag"] or "", tuple(a for a in m["addons"].split(ADDON_SEP) if a),
                   int(m["train_shots"]) if m["train_shots"] else None)

    @classmethod
    def read(cls, name: str) -> "MethodName":
        """`parse` for names already written to results (an eval.json's run): one outside the grammar, e.g. written
        by hand, is read as a bare method name, so that reports label and sort it as it is written."""
        try:
            return cls.parse(name)
        except ConfigError:
            return cls(str(name))

    @property
    def variant(self) -> str:
        """The name without its add-ons: 'pamela@q_shared+cml' -> 'pamela@q_shared'."""
        return self.base + (VARIANT_SEP + self.tag if self.tag else "")

    def with_addons(self, addons: Iterable[str]) -> "MethodName":
        return MethodName(self.base, self.tag, tuple(addons), self.train_shots)

    def with_train_shots(self, shots: int | None) -> "MethodName":
        return MethodName(self.base, self.tag, self.addons, shots)

    def canonical(self) -> "MethodName":
        return self.with_addons(sorted(self.addons))

    def __str__(self) -> str:
        return (self.variant + "".join(ADDON_SEP + a for a in self.addons)
                + (f"{TRAIN_SHOTS_SEP}{self.train_shots}" if self.train_shots is not None else ""))


def addon_problems(where: str, method: str, hp: dict, dataset: str) -> list[str]:
    """What is wrong with the add-ons of method `method` (config block `hp`) at `where`: unknown names, two
    samplers or aggregators, hyperparameters of an add-on the name does not list, and combinations that cannot
    work (each error names both the method and the add-on)."""
    name = MethodName.parse(method)
    base, addons = name.base, name.addons
    problems = []
    for a in addons:
        if a not in ADDON_KINDS:
            hint = difflib.get_close_matches(a, list(ADDON_KINDS), n=1)
            problems.append(f"'{where}': unknown add-on {a!r} in method name {method!r}"
                            + (f" (did you mean '{hint[0]}'?)" if hint else "")
                            + f"; allowed add-ons: {', '.join(sorted(ADDON_KINDS))}")
    if len(set(addons)) != len(addons):
        problems.append(f"'{where}': method name {method!r} lists an add-on twice")
    elif list(addons) != sorted(addons):
        # one name per run: `maml+ht+cml` and `maml+cml+ht` would be two runs, two folders and two labels
        canonical = str(name.canonical())
        problems.append(f"'{where}': method name {method!r} lists its add-ons out of order; write {canonical!r} "
                        "(add-ons in alphabetical order, so that one run has one name)")
    for k in ("sampler", "aggregator"):
        same = [a for a in addons if ADDON_KINDS.get(a) == k]
        if len(same) > 1:
            problems.append(f"'{where}': method {method!r} has {len(same)} {k}s ({', '.join(same)}); at most one")
    for a in (hp or {}).get("addons") or {}:
        if a not in addons:
            problems.append(f"'{where}.addons.{a}': add-on {a!r} is not in the method name {method!r}; "
                            f"name the run {method}{ADDON_SEP}{a} to use it")
    blocks = (hp or {}).get("addons") or {}
    aggregators = [a for a in addons if ADDON_KINDS.get(a) == "aggregator"]
    for a in addons:
        control = ADDON_CARDS[a].noise_control if a in ADDON_KINDS else {}
        if aggregators and control and all((blocks.get(a) or {}).get(k) == v for k, v in control.items()):
            # the control swaps the learner's share of the term's gradient for noise after aggregation; an
            # aggregator that weighs per-task gradients never sees that share apart (metarepro.addons.build refuses
            # it too)
            setting = ", ".join(f"addons.{a}.{k}: {v}" for k, v in control.items())
            problems.append(f"'{where}': method {method!r} combines the aggregator {aggregators[0]!r} with "
                            f"{ADDON_CARDS[a].label}'s noise control ({setting}), which needs the mean "
                            "meta-gradient; drop one of them")
    for a in addons:
        if a in ADDON_KINDS and base in NOT_META_TRAINED:
            problems.append(f"'{where}': add-on {a!r} ({ADDON_KINDS[a]}) cannot work with method {base!r}: "
                            f"{base} has nothing to meta-train, so no outer loss or meta-batch to act on")
        if a in ADDON_KINDS and ADDON_CARDS[a].needs_classes and dataset in REGRESSION_DATASETS:
            problems.append(f"'{where}': add-on {a!r} ({ADDON_CARDS[a].label}, a {ADDON_CARDS[a].kind} that re-samples classes) cannot work with method "
                            f"{method!r} on dataset {dataset!r}: regression tasks have no classes to re-sample")
    return problems


def load_schema() -> dict:
    """config.schema.yaml with the method blocks generated from the method cards: `$defs/method_<name>` and the
    names allowed under `experiments.*.methods` (each method, its variants `<method>@<tag>` and add-ons). A fresh
    copy per call of one parse per process: planning a grid validates defaults hundreds of times."""
    return copy.deepcopy(_schema())


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    schema = yaml_io.safe_load(SCHEMA_PATH.read_text())
    methods = schema["$defs"]["experiment"]["properties"]["methods"]
    methods["properties"], methods["patternProperties"] = {}, {}
    for name, c in cards().items():
        schema["$defs"][f"method_{name}"] = c.schema()
        ref = {"$ref": f"#/$defs/method_{name}"}
        methods["properties"][name] = ref
        methods["patternProperties"][f"^{name}(@[a-z0-9_]+)?(\\+[a-z0-9_]+)*$"] = ref
    # each add-on's settings under a method's `addons:`, from the add-on cards
    schema["$defs"]["addons"] = {"type": "object", "additionalProperties": False,
                                 "properties": {a: {"$ref": f"#/$defs/addon_{a}"} for a in ADDON_KINDS}}
    for a in ADDON_KINDS:
        schema["$defs"][f"addon_{a}"] = ADDON_CARDS[a].schema()
    # a dataset's pretraining settings per backbone (`backbones: {resnet12: {optimizer: sgd, ...}}`): the same keys
    # without defaults, so that an override names only what differs from the dataset's block
    pre = schema["$defs"]["pretrain"]
    override = {"type": "object", "additionalProperties": False,
                "properties": {k: {kk: vv for kk, vv in v.items() if kk != "default"}
                               for k, v in pre["properties"].items()}}
    schema["properties"]["reports"]["additionalProperties"]["properties"]["figures"]["items"] = {
        "enum": list(FIGURE_CARDS)}
    # the dataset names, from the dataset cards: each one's options block, the experiments' datasets, the image
    # datasets that cross-domain tests and the pretraining stage take
    images = [d for d in DATASET_ORDER if d in IMAGE_DATASETS]
    schema["properties"]["datasets"]["properties"] = {d: {"$ref": f"#/$defs/{DATASET_CARDS[d].options}"}
                                                      for d in DATASET_ORDER}
    schema["properties"]["pretrain"]["properties"] = {d: {"$ref": "#/$defs/pretrain"} for d in images}
    exp = schema["$defs"]["experiment"]["properties"]
    exp["dataset"]["enum"] = list(DATASET_ORDER)
    exp["cross_domain"]["items"]["properties"]["dataset"]["enum"] = images
    backbones = schema["$defs"]["experiment"]["properties"]["backbone"]["enum"]
    pre["properties"]["backbones"] = {"type": "object", "additionalProperties": False,
                                      "properties": {b: override for b in backbones}}
    return schema


def _extend_with_default(validator_class):
    """A validator that fills in `default` values while validating (the jsonschema FAQ recipe), also for the
    sub-schemas of patternProperties (method variants such as `pamela@q_shared`)."""
    validate_properties = validator_class.VALIDATORS["properties"]
    validate_pattern_properties = validator_class.VALIDATORS["patternProperties"]

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for prop, sub in properties.items():
                if isinstance(sub, dict):
                    if "$ref" in sub:
                        sub = _SCHEMA_DEFS[sub["$ref"].split("/")[-1]]
                    if "default" in sub and prop not in instance:
                        instance[prop] = copy.deepcopy(sub["default"])
        yield from validate_properties(validator, properties, instance, schema)

    def set_pattern_defaults(validator, patterns, instance, schema):
        # a pattern's sub-schema applies to existing keys only: fill the defaults inside their (dict) values
        if isinstance(instance, dict):
            for pattern, sub in patterns.items():
                if isinstance(sub, dict) and "$ref" in sub:
                    sub = _SCHEMA_DEFS[sub["$ref"].split("/")[-1]]
                for key, value in instance.items():
                    if isinstance(value, dict) and re.search(pattern, key) and isinstance(sub, dict):
                        for prop, psub in sub.get("properties", {}).items():
                            if isinstance(psub, dict) and "default" in psub and prop not in value:
                                value[prop] = copy.deepcopy(psub["default"])
        yield from validate_pattern_properties(validator, patterns, instance, schema)

    return validators.extend(validator_class, {"properties": set_defaults, "patternProperties": set_pattern_defaults})


_DefaultFillingValidator = _extend_with_default(Draft7Validator)
_SCHEMA_DEFS: dict = {}


def _key_path(path: Iterable[Any]) -> str:
    parts = [str(p) for p in path]
    return ".".join(parts) if parts else "<top level>"


def _allowed_keys(schema: dict, root: dict) -> list[str]:
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].split("/")[-1]]
    keys = sorted(schema.get("properties", {}))
    if schema.get("patternProperties"):   # method blocks: variants <method>@<tag> are allowed too
        keys.append(f"<method>{VARIANT_SEP}<tag>")
    return keys


def _explain(error, root: dict) -> str:
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = _allowed_keys(error.schema, root)
        known = set(allowed)
        patterns = list(error.schema.get("patternProperties", {}))
        bad = [k for k in error.instance if k not in known and not any(re.search(p, str(k)) for p in patterns)] \
            if isinstance(error.instance, dict) else []
        msgs = []
        for key in bad:
            hint = difflib.get_close_matches(key, allowed, n=1)
            full = f"{where}.{key}" if error.absolute_path else key
            msgs.append(f"unknown key '{full}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                        + f"; allowed keys: {', '.join(allowed) if allowed else '(none)'}")
        return "; ".join(msgs) or f"{where}: {error.message}"
    if error.validator == "enum":
        hint = difflib.get_close_matches(str(error.instance), [str(v) for v in error.validator_value], n=1)
        return (f"'{where}' = {error.instance!r} is not allowed"
                + (f" (did you mean '{hint[0]}'?)" if hint else "")
                + f"; allowed values: {', '.join(map(str, error.validator_value))}")
    if error.validator in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[error.validator]
        return f"'{where}' = {error.instance!r} is invalid: must be {op} {error.validator_value}"
    if error.validator == "type":
        return f"'{where}' = {error.instance!r} has the wrong type: expected {error.validator_value}"
    if error.validator == "required":
        return f"'{where}': {error.message}"
    return f"'{where}': {error.message}"


def _unshared(x: Any) -> Any:
    """A deep copy of plain YAML data with every dict and list its own object (copy.deepcopy keeps aliases)."""
    if isinstance(x, dict):
        return {k: _unshared(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_unshared(v) for v in x]
    return copy.deepcopy(x)


def validate_config(cfg: dict, source: str = "config") -> dict:
    """Validate `cfg` against the schema, fill defaults, check cross-references; return a new dict.

    Raises ConfigError listing every problem, each naming its key and the allowed values.
    """
    if not isinstance(cfg, dict):
        raise ConfigError(f"{source}: the config must be a mapping, got {type(cfg).__name__}")
    # a copy in which no two places share an object: YAML aliases (`fomaml: *maml_settings`) load as one shared
    # dict, and filling one method's defaults or add-on blocks must not write into its aliases
    cfg = _unshared(cfg)
    root = load_schema()
    _SCHEMA_DEFS.update(root["$defs"])
    validator = _DefaultFillingValidator(root)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (list(map(str, e.absolute_path)), e.validator))
    if errors:
        lines = list(dict.fromkeys(_explain(e, root) for e in errors))
        raise ConfigError(f"invalid {source}:\n  - " + "\n  - ".join(lines))
    # method blocks may be written as `maml:` (null) -> all defaults; an add-on named in the method's name
    # (`maml+cml`) without a block of its own gets one (`addons: {cml: {}}`), filled with its defaults below
    for exp in cfg["experiments"].values():
        for m, hp in list(exp["methods"].items()):
            if hp is None:
                exp["methods"][m] = hp = {}
            names = [a for a in MethodName.parse(m).addons if a in ADDON_KINDS]
            if names:
                blocks = hp.setdefault("addons", {})
                for a in names:
                    if blocks.get(a) is None:
                        blocks[a] = {}
    # a second pass fills the defaults of method blocks that were written as `maml:` (null)
    list(_DefaultFillingValidator(root).iter_errors(cfg))
    _check_cross_references(cfg, source)
    return cfg


def _check_cross_references(cfg: dict, source: str) -> None:
    problems = []
    seen: dict[tuple, str] = {}
    for name, exp in cfg["experiments"].items():
        # the dataset card's kind, not its name, decides: regression (the sinusoid) is 1-way on an MLP
        regression, on_the_fly = exp["dataset"] in REGRESSION_DATASETS, exp["dataset"] in ON_THE_FLY_DATASETS
        if regression and exp["backbone"] != "mlp":
            problems.append(f"'experiments.{name}.backbone' = {exp['backbone']!r}: {exp['dataset']} needs backbone "
                            "'mlp'")
        if not regression and exp["backbone"] == "mlp":
            problems.append(f"'experiments.{name}.backbone' = 'mlp' only fits regression datasets "
                            f"({', '.join(repr(d) for d in sorted(REGRESSION_DATASETS))})")
        graph = exp["dataset"] in GRAPH_DATASETS
        if graph != (exp["backbone"] == "gnn"):
            problems.append(f"'experiments.{name}.backbone' = {exp['backbone']!r}: " + (
                f"node classification ({exp['dataset']}) needs backbone 'gnn'" if graph
                else f"backbone 'gnn' only fits the graph datasets ({', '.join(sorted(GRAPH_DATASETS))})"))
        for m in exp["methods"]:
            mn = MethodName.parse(m)
            if graph and mn.base not in ON_GRAPHS:
                problems.append(f"'experiments.{name}.methods.{m}': {mn.base!r} does not run on node classification "
                                f"({exp['dataset']}); methods that do: {', '.join(sorted(ON_GRAPHS))}")
            if not graph and mn.base in GRAPH_ONLY:
                problems.append(f"'experiments.{name}.methods.{m}': {mn.base!r} is defined for node classification "
                                f"on graphs; dataset {exp['dataset']!r} is not a graph dataset")
            if graph and set(mn.addons) - GRAPH_ADDONS:
                problems.append(f"'experiments.{name}.methods.{m}': add-on(s) "
                                f"{', '.join(sorted(set(mn.addons) - GRAPH_ADDONS))} do not run on node classification; "
                                f"those that do: {', '.join(sorted(GRAPH_ADDONS))}")
        if graph and exp.get("input"):
            problems.append(f"'experiments.{name}.input': dataset {exp['dataset']!r} has no images to crop")
        if regression and exp["ways"] != 1:
            problems.append(f"'experiments.{name}.ways' = {exp['ways']}: {exp['dataset']} regression has ways = 1")
        if not regression and exp["ways"] < 2:
            problems.append(f"'experiments.{name}.ways' = {exp['ways']} is invalid: classification needs >= 2 ways")
        labels_only = sorted(m for m in exp["methods"] if MethodName.parse(m).base in CLASSIFICATION_ONLY)
        if labels_only and regression:
            problems.append(f"'experiments.{name}.methods': {', '.join(labels_only)} classify by the support's "
                            f"classes; dataset {exp['dataset']!r} is regression")
        needs = sorted(m for m in exp["methods"] if MethodName.parse(m).base in PRETRAINED_METHODS)
        if needs and regression:
            problems.append(f"'experiments.{name}.methods': {', '.join(needs)} need(s) a pretrained classifier; "
                            f"dataset {exp['dataset']!r} has no classes to pretrain on")
        for where, block in [("train", exp["train"])] + [(f"train_overrides.{k}", v)
                                                          for k, v in exp["train_overrides"].items()]:
            tw = block.get("ways")
            fixed = sorted(m for m in exp["methods"] if MethodName.parse(m).base not in ANY_TRAIN_WAYS)
            if tw is not None and tw != exp["ways"] and fixed:
                problems.append(f"'experiments.{name}.{where}.ways' = {tw} differs from ways = {exp['ways']}, but "
                                f"{', '.join(fixed)} classify with a {exp['ways']}-way head that cannot train on "
                                f"{tw}-way episodes; only {', '.join(sorted(ANY_TRAIN_WAYS))} can")
        if exp.get("tasks") and not on_the_fly:
            problems.append(f"'experiments.{name}.tasks': only a generated dataset "
                            f"({', '.join(sorted(ON_THE_FLY_DATASETS))}) has a task distribution to set; dataset "
                            f"{exp['dataset']!r} reads its prepared data")
        if exp.get("input"):
            inp, size = exp["input"], dataset_args(cfg, exp["dataset"]).get("image_size")
            if regression:
                problems.append(f"'experiments.{name}.input': dataset {exp['dataset']!r} has no images to crop")
            elif inp["crop"] > inp.get("resize", size or inp["crop"]):
                problems.append(f"'experiments.{name}.input.crop' = {inp['crop']} exceeds the "
                                + (f"resize {inp['resize']}" if "resize" in inp else f"image size {size}"))
        for shot in exp["train_overrides"]:
            if int(shot) not in exp["shots"]:
                problems.append(f"'experiments.{name}.train_overrides.{shot}': {shot} is not one of shots {exp['shots']}")
        for m, hp in exp["methods"].items():
            problems += addon_problems(f"experiments.{name}.methods.{m}", m, hp, exp["dataset"])
            problems += [f"'experiments.{name}.methods.{m}': {msg}" for msg in card(MethodName.parse(m).base).problems(hp)]
        for m in exp["methods"]:
            for k in exp["shots"]:
                key = (exp["dataset"], m, exp["ways"], k)
                if key in seen:
                    problems.append(f"experiments '{seen[key]}' and '{name}' both write results for dataset "
                                    f"{key[0]}, method {m}, {key[2]}-way {k}-shot: rename or remove one")
                seen[key] = name
        problems += _cross_domain_problems(name, exp)
    for rname, rep in cfg.get("reports", {}).items():
        for e in rep["experiments"]:
            if e not in cfg["experiments"]:
                problems.append(f"'reports.{rname}.experiments' names unknown experiment {e!r}; "
                                f"allowed: {', '.join(cfg['experiments'])}")
        if rep.get("cross_domain") and not any(cfg["experiments"][e].get("cross_domain")
                                               for e in rep["experiments"] if e in cfg["experiments"]):
            problems.append(f"'reports.{rname}.cross_domain' is true but none of its experiments has `cross_domain` "
                            "targets")
        configured = {m for e in rep["experiments"] if e in cfg["experiments"] for m in cfg["experiments"][e]["methods"]}
        for m in rep.get("methods") or []:
            if m not in configured:
                problems.append(f"'reports.{rname}.methods' names {m!r}, which none of its experiments configures; "
                                f"allowed: {', '.join(sorted(configured))}")
    if problems:
        raise ConfigError(f"invalid {source}:\n  - " + "\n  - ".join(problems))


def _cross_domain_problems(name: str, exp: dict) -> list[str]:
    """Cross-domain targets that cannot work: the source itself, regression, shots or methods the experiment does
    not run, and a target cut from the source's own image collection whose test classes are source training
    classes (CIFAR-FS <-> FC100; from the shipped split files, evaluation checks the prepared data's names again).
    Other overlaps by concept are evaluated and reported (metarepro.classes)."""
    problems = []
    for i, target in enumerate(exp.get("cross_domain") or []):
        where, dst = f"experiments.{name}.cross_domain.{i}", target["dataset"]
        if exp["dataset"] in REGRESSION_DATASETS:
            problems.append(f"'{where}': {exp['dataset']} regression runs cannot be tested on an image dataset")
            continue
        if dst == exp["dataset"]:
            problems.append(f"'{where}.dataset' = {dst!r} is the experiment's own dataset (its eval.json)")
        for k in target.get("shots") or []:
            if k not in exp["shots"]:
                problems.append(f"'{where}.shots': {k} is not one of the experiment's shots {exp['shots']}")
        for m in target.get("methods") or []:
            if m not in exp["methods"]:
                problems.append(f"'{where}.methods': {m!r} is not one of the experiment's methods "
                                f"({', '.join(exp['methods'])})")
        src_train, dst_test = split_class_names(exp["dataset"], "train"), split_class_names(dst, "test")
        if src_train is not None and dst_test is not None and same_collection(exp["dataset"], dst):
            shared = concept_overlap(exp["dataset"], src_train, dst, dst_test)
            if shared:
                problems.append(f"'{where}': " + overlap_error(exp["dataset"], dst, shared))
    return problems


_YAML_BOOLEANS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}


def command_line_overrides(values: dict) -> dict:
    """`snakemake --config key=value` pairs with YAML's spellings of booleans read as booleans: Snakemake's parser
    takes only Python's True/False, so `strict_numerics=true` (as users write YAML) would arrive as the string
    "true". Only top-level keys whose schema type is boolean are converted; anything else is left to validation."""
    props = load_schema().get("properties", {})
    out = dict(values)
    for key, v in values.items():
        if isinstance(v, str) and (props.get(key) or {}).get("type") == "boolean" and v.lower() in _YAML_BOOLEANS:
            out[key] = _YAML_BOOLEANS[v.lower()]
    return out


def load_config(*paths: str | os.PathLike, overrides: dict | None = None) -> dict:
    """Load YAML file(s) (later ones update earlier ones, top-level keys replaced) and validate."""
    cfg: dict = {}
    for p in paths:
        p = Path(p)
        if not p.exists():
            raise ConfigError(f"config file {p} not found")
        try:
            data = yaml_io.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        cfg.update(data)
    if overrides:
        cfg.update(overrides)
    return validate_config(cfg, source=", ".join(map(str, paths)) or "config")


class SavedConfig:
    """What RunConfig and PretrainConfig share: the JSON that Snakemake passes as a param (sorted, so equal
    configs give equal params) and a strict reader of a saved config (unknown or missing keys are named)."""
    KIND = "config"

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict):
        fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
        unknown = set(d) - set(fields)
        if unknown:
            raise ConfigError(f"unknown {cls.KIND} keys {sorted(unknown)}; allowed: {sorted(fields)}")
        missing = [k for k, f in fields.items()
                   if k not in d and f.default is f.default_factory]  # no default (both are MISSING)
        if missing:
            raise ConfigError(f"{cls.KIND} is missing keys {missing}")
        return cls(**d)


@dataclass(frozen=True)
class RunConfig(SavedConfig):
    """Everything one meta-training + evaluation run needs; saved as config.yaml beside its results."""
    KIND = "run config"
    experiment: str
    dataset: str
    dataset_args: dict
    data_dir: str
    backbone: str
    backbone_args: dict
    method: str
    method_args: dict
    ways: int
    shots: int
    seed: int
    train: dict
    evaluation: dict
    profile: str = "default"
    run_dir: str = ""
    pretrained: str = ""    # backbone.pt of the pretrain stage, for methods in PRETRAINED_METHODS; else ""
    addons: dict = field(default_factory=dict)   # hyperparameters of the add-ons in `method` ({name: {...}})

    def to_dict(self) -> dict:
        d = asdict(self)
        # Left out when empty, so runs that use none of these keep the exact config (and Snakemake params) they
        # had before the fields existed: adding them must not re-run every finished job.
        for k in ("pretrained", "addons"):
            if not d[k]:
                del d[k]
        return d



def run_dir(cfg: dict, dataset: str, method: str, ways: int, shots: int, seed: int) -> str:
    return f"{cfg['results_dir']}/{dataset}/{method}/{ways}way{shots}shot/seed{seed}"


def backbone_label(backbone: str, backbone_args: dict) -> str:
    """The backbone's identity as one path segment: 'conv4-64' (filters), 'mlp-40x40' (hidden),
    'resnet12-64-drop0.1'; other args as '-<key><value>'. Args left at the class default are not
    filled in (Snakemake must not import torch), so `conv4` with no args is labelled 'conv4'."""
    parts = [backbone]
    args = dict(backbone_args)
    if args.get("filters") is not None:
        parts.append(str(args.pop("filters")))
    if args.get("hidden") is not None:
        parts.append("x".join(str(h) for h in args.pop("hidden")))
    if args.get("widths") is not None:
        parts.append("w" + "x".join(str(w) for w in args.pop("widths")))
    if args.get("drop_rate") is not None:
        parts.append(f"drop{args.pop('drop_rate')}")
    parts += [f"{k}{v}" for k, v in sorted(args.items())]
    return "-".join(parts)


def pretrain_label(backbone: str, backbone_args: dict, input_crop: dict | None = None) -> str:
    """The pretrain folder's name: the backbone label, plus '-in92c80' for an `input` transform {resize: 92,
    crop: 80} ('-inc80' for {crop: 80})."""
    label = backbone_label(backbone, backbone_args)
    return label + (f"-in{input_crop.get('resize', '')}c{input_crop['crop']}" if input_crop else "")


def pretrain_dir(cfg: dict, dataset: str, backbone: str, backbone_args: dict, seed: int,
                 input_crop: dict | None = None) -> str:
    """{results_dir}/{dataset}/pretrain/{pretrain label}/seed{seed}: one pretraining per dataset, backbone, input
    transform and seed."""
    return f"{cfg['results_dir']}/{dataset}/pretrain/{pretrain_label(backbone, backbone_args, input_crop)}/seed{seed}"


def run_dataset_args(cfg: dict, dataset: str, input_crop: dict | None, tasks: dict | None = None) -> dict:
    """A dataset's options plus a run's `input` transform when it has one (a run-time transform: it does not change
    the prepared data, so prepare's options leave it out), and its experiment's `tasks` options (generated data)."""
    out = {**dataset_args(cfg, dataset), **copy.deepcopy(tasks or {})}
    if input_crop:
        out["input"] = dict(input_crop)
    return out


def resolve_run(cfg: dict, experiment: str, method: str, shots: int, seed: int) -> RunConfig:
    if experiment not in cfg["experiments"]:
        raise ConfigError(f"unknown experiment {experiment!r}; allowed: {', '.join(cfg['experiments'])}")
    exp = cfg["experiments"][experiment]
    if method not in exp["methods"]:
        raise ConfigError(f"method {method!r} is not configured in experiments.{experiment}.methods; "
                          f"allowed: {', '.join(exp['methods'])}")
    if shots not in exp["shots"]:
        raise ConfigError(f"shots={shots} is not in experiments.{experiment}.shots {exp['shots']}")
    train = dict(exp["train"])
    train.update(exp["train_overrides"].get(shots, exp["train_overrides"].get(str(shots), {})))
    dataset = exp["dataset"]
    pretrained = (f"{pretrain_dir(cfg, dataset, exp['backbone'], exp['backbone_args'], seed, exp.get('input'))}"
                  "/backbone.pt" if MethodName.parse(method).base in PRETRAINED_METHODS else "")
    return RunConfig(
        experiment=experiment, dataset=dataset,
        dataset_args=run_dataset_args(cfg, dataset, exp.get("input"), exp.get("tasks")),
        data_dir=f"{cfg['data']['dir']}/{dataset}",
        backbone=exp["backbone"], backbone_args=dict(exp["backbone_args"]),
        method=method, method_args={k: v for k, v in exp["methods"][method].items() if k != "addons"},
        addons=copy.deepcopy(exp["methods"][method].get("addons") or {}),
        ways=exp["ways"], shots=shots, seed=seed, train=train,
        evaluation={**cfg["evaluation"], **(exp.get("evaluation") or {})}, profile=cfg["profile"],
        run_dir=run_dir(cfg, dataset, method, exp["ways"], shots, seed), pretrained=pretrained,
    )


@dataclass(frozen=True)
class PretrainConfig(SavedConfig):
    """One pretraining run (a classifier over all meta-train classes); saved as config.yaml beside backbone.pt."""
    KIND = "pretrain config"
    dataset: str
    dataset_args: dict
    data_dir: str
    backbone: str
    backbone_args: dict
    seed: int
    pretrain: dict          # the dataset's resolved `pretrain:` block
    val_seed: int           # evaluation.seed: the fixed validation episodes are those meta-training validates on
    profile: str = "default"
    out_dir: str = ""



@dataclass(frozen=True)
class Pretrain:
    dataset: str
    backbone: str
    backbone_args: dict
    label: str
    seed: int
    out_dir: str
    input_crop: dict | None = None      # the experiments' `input` transform


def iter_pretrains(cfg: dict) -> list[Pretrain]:
    """The pretraining runs the config needs: one per (dataset, backbone, seed) of every experiment that has
    a method in PRETRAINED_METHODS, in a stable order without duplicates."""
    out: dict[str, Pretrain] = {}
    for exp in cfg["experiments"].values():
        if not any(MethodName.parse(m).base in PRETRAINED_METHODS for m in exp["methods"]):
            continue
        for seed in cfg["seeds"]:
            crop = dict(exp["input"]) if exp.get("input") else None
            d = pretrain_dir(cfg, exp["dataset"], exp["backbone"], exp["backbone_args"], seed, crop)
            out.setdefault(d, Pretrain(exp["dataset"], exp["backbone"], dict(exp["backbone_args"]),
                                       pretrain_label(exp["backbone"], exp["backbone_args"], crop), seed, d, crop))
    return list(out.values())


def resolve_pretrain(cfg: dict, dataset: str, label: str, seed: int) -> PretrainConfig:
    """The PretrainConfig of {results_dir}/{dataset}/pretrain/{label}/seed{seed}."""
    found = [p for p in iter_pretrains(cfg) if (p.dataset, p.label, p.seed) == (dataset, label, seed)]
    if not found:
        known = sorted({f"{p.dataset}/{p.label}/seed{p.seed}" for p in iter_pretrains(cfg)})
        raise ConfigError(f"no experiment needs pretraining for dataset={dataset} backbone={label} seed={seed} "
                          f"(only experiments listing {', '.join(sorted(PRETRAINED_METHODS))} do); "
                          f"needed: {', '.join(known) or '(none)'}")
    p = found[0]
    return PretrainConfig(
        dataset=dataset, dataset_args=run_dataset_args(cfg, dataset, p.input_crop),
        data_dir=f"{cfg['data']['dir']}/{dataset}", backbone=p.backbone, backbone_args=dict(p.backbone_args),
        seed=seed, pretrain=pretrain_settings(cfg, dataset, p.backbone),
        val_seed=int(cfg["evaluation"]["seed"]), profile=cfg["profile"], out_dir=p.out_dir)


def pretrain_settings(cfg: dict, dataset: str, backbone: str) -> dict:
    """A dataset's pretraining settings for `backbone`: its `pretrain:` block (else the defaults) updated by the
    block's `backbones: {<backbone>: {...}}` entry (e.g. MTL's SGD recipe for ResNet-12 beside the Adam recipe
    that the Conv-4 baselines use)."""
    settings = dict(cfg["pretrain"].get(dataset) or _pretrain_defaults(dataset))
    by_backbone = settings.pop("backbones", None) or {}
    settings.update(by_backbone.get(backbone) or {})
    return settings


def dataset_args(cfg: dict, dataset: str) -> dict:
    """A dataset's resolved options block (the config's, else the schema defaults)."""
    return dict(cfg["datasets"].get(dataset) or _dataset_defaults(dataset))


# The smallest valid config, to read the schema's defaults of one block: the first image dataset and the first method
# of the cards on a Conv-4 (which ones does not matter, only that they validate)
_PLACEHOLDER_EXPERIMENT = {"dataset": next(d for d in DATASET_ORDER if d in IMAGE_DATASETS), "backbone": "conv4",
                           "ways": 5, "shots": [1], "methods": {next(iter(cards())): {}}}


def _pretrain_defaults(dataset: str) -> dict:
    """Defaults of a dataset's `pretrain:` block when the config does not mention the dataset."""
    return copy.deepcopy(_pretrain_defaults_cached(dataset))


@functools.lru_cache(maxsize=None)
def _pretrain_defaults_cached(dataset: str) -> dict:
    cfg = validate_config({"pretrain": {dataset: {}}, "experiments": {"x": _PLACEHOLDER_EXPERIMENT}})
    return cfg["pretrain"][dataset]


def _dataset_defaults(dataset: str) -> dict:
    """Defaults of a dataset's options block when the config does not mention the dataset."""
    return copy.deepcopy(_dataset_defaults_cached(dataset))


@functools.lru_cache(maxsize=None)
def _dataset_defaults_cached(dataset: str) -> dict:
    cfg = validate_config({"datasets": {dataset: {}}, "experiments": {"x": _PLACEHOLDER_EXPERIMENT}})
    return cfg["datasets"][dataset]


@dataclass(frozen=True)
class Run:
    experiment: str
    dataset: str
    method: str
    ways: int
    shots: int
    seed: int
    run_dir: str


def iter_runs(cfg: dict, experiments: Iterable[str] | None = None) -> list[Run]:
    """Every (experiment, method, shots, seed) run the config asks for, in a stable order."""
    out = []
    for name, exp in cfg["experiments"].items():
        if experiments is not None and name not in experiments:
            continue
        for method in exp["methods"]:
            for shots in exp["shots"]:
                for seed in cfg["seeds"]:
                    out.append(Run(name, exp["dataset"], method, exp["ways"], shots, seed,
                                   run_dir(cfg, exp["dataset"], method, exp["ways"], shots, seed)))
    return out


def find_experiment(cfg: dict, dataset: str, method: str, ways: int, shots: int) -> str:
    for name, exp in cfg["experiments"].items():
        if exp["dataset"] == dataset and method in exp["methods"] and exp["ways"] == ways and shots in exp["shots"]:
            return name
    raise ConfigError(f"no experiment in the config runs dataset={dataset} method={method} "
                      f"ways={ways} shots={shots}")


def used_datasets(cfg: dict) -> list[str]:
    """Every dataset the config trains on or tests on (cross-domain targets are downloaded and prepared too)."""
    return sorted({exp["dataset"] for exp in cfg["experiments"].values()}
                  | {t["dataset"] for exp in cfg["experiments"].values() for t in exp.get("cross_domain") or []})


def iter_cross_domain(cfg: dict, experiments: Iterable[str] | None = None) -> list[tuple[Run, str]]:
    """Every (run, target dataset) cross-domain evaluation the config asks for, in a stable order."""
    out = []
    for run in iter_runs(cfg, experiments):
        for target in cfg["experiments"][run.experiment].get("cross_domain") or []:
            if run.shots in (target.get("shots") or [run.shots]) and run.method in (target.get("methods") or [run.method]):
                out.append((run, target["dataset"]))
    return out


def experiment_gpus(cfg: dict, experiment: str) -> int:
    """GPUs a training or evaluation job of `experiment` asks for: its own `gpu`, else the top-level `gpu` for
    image datasets and 0 for regression (the sinusoid: a tiny MLP; data preparation and reports never ask for one)."""
    exp = cfg["experiments"][experiment]
    if exp.get("gpu") is not None:
        return int(exp["gpu"])
    return 0 if exp["dataset"] in REGRESSION_DATASETS else int(cfg.get("gpu", 0))
