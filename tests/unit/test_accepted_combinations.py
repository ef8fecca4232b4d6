"""What the config validator accepts must run: every (method, add-on set) that validates, on an image dataset, on
the sinusoid and on a node-classification dataset (G-Meta's synthetic graphs), meta-trains two iterations and evaluates at tiny size; every combination it refuses is refused with
a message naming the method."""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from metarepro.cards import cards
from metarepro.config import ADDON_KINDS, ConfigError, resolve_pretrain, resolve_run, validate_config
from metarepro.data.store import write_dataset

IMAGE = 16            # 16x16 grey images: the Conv-4's four poolings leave 1x1
WAYS = 3
ADDON_SETS = [combo for k in range(len(ADDON_KINDS) + 1) for combo in itertools.combinations(sorted(ADDON_KINDS), k)]
TINY_TRAIN = {"iterations": 2, "meta_batch": 2, "queries": 2, "val_every": 2, "val_episodes": 2,
              "checkpoint_every": 2}
TINY_EVAL = {"episodes": 3, "queries": 2, "curve_episodes": 1}


GRAPH = "synthetic_cycle"
BACKBONES = {"omniglot": ("conv4", {"filters": 4}), "sinusoid": ("mlp", {"hidden": [8, 8]}),
             GRAPH: ("gnn", {"hidden": [8, 8]})}


def _config(dataset: str, name: str) -> dict:
    backbone, args = BACKBONES[dataset]
    return {"experiments": {"e": {"dataset": dataset, "backbone": backbone, "backbone_args": args,
                                  "ways": 1 if dataset == "sinusoid" else WAYS,
                                  "shots": [5] if dataset == "sinusoid" else [1], "methods": {name: {}}}}}


def _cases() -> list[tuple[str, str]]:
    out = []
    for dataset in BACKBONES:
        for method in cards():
            for addons in ADDON_SETS:
                out.append((dataset, method + "".join("+" + a for a in addons)))
    return out


CASES = _cases()


def _accepted(dataset: str, name: str) -> dict | None:
    try:
        return validate_config(_config(dataset, name))
    except ConfigError as err:
        assert name.split("+")[0] in str(err), str(err)    # the refusal names the method
        return None


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)

    def split(name: str) -> tuple:
        labels = np.repeat(np.arange(WAYS + 1), 4)
        images = rng.integers(0, 256, (len(labels), IMAGE, IMAGE, 1), dtype=np.uint8)
        return images, labels, [f"{name}{i}" for i in range(WAYS + 1)]
    return write_dataset(tmp_path_factory.mktemp("data") / "omniglot", "omniglot",
                         {s: split(s) for s in ("train", "val", "test")}, {}, "synthetic")


@pytest.fixture(scope="module")
def tiny_graphs(tmp_path_factory) -> Path:
    from metarepro.data.synthetic_graphs import prepare_cycle
    return prepare_cycle(None, tmp_path_factory.mktemp("graphs") / GRAPH, {"graphs": 5, "noise_edges": 5,
                                                                             "max_nodes": 8})


@pytest.fixture(scope="module")
def tiny_pretrained(tmp_path_factory, tiny_data) -> str:
    """The pretrain stage's backbone at tiny size, for the methods that start from it."""
    from metarepro.pretrain import pretrain

    cfg = validate_config(_config("omniglot", "finetune"))
    pc = resolve_pretrain(cfg, "omniglot", "conv4-4", 0)
    tiny = dataclasses.replace(pc, data_dir=str(tiny_data), out_dir=str(tmp_path_factory.mktemp("pretrain")),
                               pretrain={**pc.pretrain, "epochs": 0.5, "batch_size": 8, "val_every": 10**6,
                                         "val_episodes": 1, "val_shots": 1, "val_queries": 1,
                                         "checkpoint_every": 10**6})
    return str(pretrain(tiny, progress=False))


@pytest.mark.parametrize("dataset, name", CASES, ids=[f"{d}-{n}" for d, n in CASES])
def test_every_accepted_combination_trains_and_evaluates(dataset, name, tiny_data, tiny_graphs, tiny_pretrained,
                                                         tmp_path):
    from metarepro.evaluate import evaluate
    from metarepro.train import metatrain

    cfg = _accepted(dataset, name)
    if cfg is None:
        return                                            # refused before any job starts, naming the method
    shots = cfg["experiments"]["e"]["shots"][0]
    run = resolve_run(cfg, "e", name, shots, 0)
    run = dataclasses.replace(run, train={**run.train, **TINY_TRAIN}, evaluation={**run.evaluation, **TINY_EVAL},
                              run_dir=str(tmp_path / "run"),
                              data_dir={"omniglot": str(tiny_data), GRAPH: str(tiny_graphs)}.get(dataset, run.data_dir),
                              pretrained=tiny_pretrained if run.pretrained else "")
    assert metatrain(run, progress=False).exists()
    ev = json.loads(evaluate(tmp_path / "run", progress=False).read_text())
    assert len(ev["per_episode"]) == TINY_EVAL["episodes"] and all(math.isfinite(x) for x in ev["per_episode"])
    if "cml" in name.split("+")[1:]:
        co = ev["colearner"]                              # CML†: the co-learner scored the same episodes
        assert len(co["per_episode"]) == TINY_EVAL["episodes"] and all(math.isfinite(x) for x in co["per_episode"])


def test_the_enumeration_covers_every_method_and_add_on():
    accepted = [(d, n) for d, n in CASES if _accepted(d, n) is not None]
    assert {n.split("+")[0] for _, n in accepted} == set(cards())
    assert {a for _, n in accepted for a in n.split("+")[1:]} == set(ADDON_KINDS)

