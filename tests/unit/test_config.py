"""metarepro.config: schema validation (defaults, messages naming the bad key), run resolution, and
the schema's names agreeing with the code's registries."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from metarepro.config import (ConfigError, RunConfig, find_experiment, iter_runs, load_config, load_schema,
                              resolve_run, run_dir, used_datasets, validate_config)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "default": ["config/config.yaml"],
    # --configfile semantics of the Snakefile: top-level keys replace config/config.yaml's
    "paper": ["config/config.yaml", "config/paper.yaml"],
    "tiny": ["config/config.yaml", "tests/workflow/config.yaml"],
}


def _raw(name: str = "tiny") -> dict:
    cfg: dict = {}
    for rel in CONFIGS[name]:
        cfg.update(yaml.safe_load((REPO / rel).read_text()))
    return cfg


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_validate(name: str) -> None:
    if not all((REPO / rel).exists() for rel in CONFIGS[name]):
        pytest.skip(f"{CONFIGS[name][-1]} not written yet")
    cfg = load_config(*(REPO / rel for rel in CONFIGS[name]))
    runs = iter_runs(cfg)
    assert runs, "a config that runs nothing"
    for run in runs:  # every run resolves, and its run dir lies under results_dir
        rc = resolve_run(cfg, run.experiment, run.method, run.shots, run.seed)
        assert rc.run_dir == run.run_dir and rc.run_dir.startswith(cfg["results_dir"] + "/")
        assert find_experiment(cfg, run.dataset, run.method, run.ways, run.shots) == run.experiment
    for report in cfg["reports"].values():
        assert set(report["experiments"]) <= set(cfg["experiments"])


def test_paper_and_default_write_to_different_places() -> None:
    if not (REPO / "config/paper.yaml").exists():
        pytest.skip("config/paper.yaml not written yet")
    default, paper = load_config(REPO / "config/config.yaml"), load_config(*(REPO / r for r in CONFIGS["paper"]))
    assert default["results_dir"] != paper["results_dir"]
    assert default["reports_dir"] != paper["reports_dir"]


def test_defaults_are_filled_in() -> None:
    raw = {"experiments": {"x": {"dataset": "omniglot", "backbone": "conv4", "ways": 5, "shots": [1],
                                 "methods": {"maml": None}}}}
    cfg = validate_config(raw)
    assert raw["experiments"]["x"]["methods"]["maml"] is None, "the input must not be modified"
    assert cfg["results_dir"] == "results" and cfg["seeds"] == [0] and cfg["threads"] >= 1
    assert cfg["evaluation"]["episodes"] == 600
    exp = cfg["experiments"]["x"]
    assert set(exp["train"]) >= {"iterations", "meta_batch", "meta_lr", "queries"}
    assert set(exp["methods"]["maml"]) >= {"inner_lr", "inner_steps", "eval_inner_steps"}
    assert cfg["data"]["raw_dir"] and cfg["data"]["dir"]


def _edit(path: str, value: object, name: str = "tiny") -> dict:
    """The tiny config with one value replaced; `path` is the keys (list indices) joined by '/'."""
    cfg = copy.deepcopy(_raw(name))
    *parents, last = path.split("/")
    node = cfg
    for key in parents:
        node = node[int(key) if isinstance(node, list) else key]
    node[int(last) if isinstance(node, list) else last] = value
    return cfg


def _rename(path: str, new: str) -> dict:
    """The tiny config with one key renamed (a typo)."""
    cfg = copy.deepcopy(_raw())
    *parents, last = path.split("/")
    node = cfg
    for key in parents:
        node = node[key]
    node[new] = node.pop(last)
    return cfg


BAD = {
    "misspelled key": (_rename("experiments/omniglot/train/meta_batch", "meta_btch"),
                       ["experiments.omniglot.train.meta_btch", "meta_batch"]),
    "misspelled top-level key": (_rename("seeds", "seed"), ["seed", "seeds"]),
    "unknown method": (_rename("experiments/omniglot/methods/maml", "mamll"),
                       ["experiments.omniglot.methods.mamll", "maml"]),
    "unknown dataset": (_edit("experiments/omniglot/dataset", "omniglott"),
                        ["experiments.omniglot.dataset", "omniglot", "cifarfs"]),
    "unknown backbone": (_edit("experiments/omniglot/backbone", "conv5"), ["experiments.omniglot.backbone", "conv4"]),
    "shots 0": (_edit("experiments/omniglot/shots/0", 0), ["experiments.omniglot.shots.0", ">= 1"]),
    "negative meta_lr": (_edit("experiments/omniglot/train/meta_lr", -0.001),
                         ["experiments.omniglot.train.meta_lr", "> 0"]),
    "negative inner_lr": (_edit("experiments/sinusoid/methods/maml/inner_lr", -0.01),
                          ["experiments.sinusoid.methods.maml.inner_lr", "> 0"]),
    "threads 0": (_edit("threads", 0), ["threads", ">= 1"]),
    "wrong type": (_edit("evaluation/episodes", "many"), ["evaluation.episodes", "integer"]),
    "report of unknown experiment": (_edit("reports/test_fewshot/experiments", ["omniglot", "nope"]),
                                     ["reports.test_fewshot.experiments", "nope"]),
    "sinusoid with conv4": (_edit("experiments/sinusoid/backbone", "conv4"), ["experiments.sinusoid.backbone"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_config_is_rejected_naming_the_key(case: str) -> None:
    cfg, expected = BAD[case]
    with pytest.raises(ConfigError) as err:
        validate_config(cfg)
    for text in expected:
        assert text in str(err.value), f"{text!r} missing from: {err.value}"


def test_load_config_names_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("experiments: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


def test_resolve_run_applies_per_shot_overrides_and_round_trips() -> None:
    raw = _raw()
    raw["experiments"]["omniglot"]["shots"] = [1, 5]
    raw["experiments"]["omniglot"]["train_overrides"] = {5: {"queries": 7}}
    cfg = validate_config(raw)
    one = resolve_run(cfg, "omniglot", "maml", 1, 0)
    five = resolve_run(cfg, "omniglot", "maml", 5, 0)
    assert one.train["queries"] == raw["experiments"]["omniglot"]["train"]["queries"]
    assert five.train["queries"] == 7
    assert five.run_dir == run_dir(cfg, "omniglot", "maml", 5, 5, 0) == f"{cfg['results_dir']}/omniglot/maml/5way5shot/seed0"
    assert RunConfig.from_dict(json.loads(five.to_json())) == five
    assert one.to_json() != five.to_json()
    with pytest.raises(ConfigError, match="not configured"):
        resolve_run(cfg, "omniglot", "fomaml", 1, 0)
    with pytest.raises(ConfigError, match="no experiment"):
        find_experiment(cfg, "omniglot", "maml", 20, 1)


def test_editing_one_method_changes_only_its_run_configs() -> None:
    """The Snakemake params trigger relies on this: a method's hparams reach only its own runs."""
    before = validate_config(_raw())
    raw = _raw()
    raw["experiments"]["sinusoid"]["methods"]["fomaml"]["inner_lr"] = 0.02
    after = validate_config(raw)
    changed = {(r.experiment, r.method) for r in iter_runs(before)
               if resolve_run(before, r.experiment, r.method, r.shots, r.seed).to_json()
               != resolve_run(after, r.experiment, r.method, r.shots, r.seed).to_json()}
    assert changed == {("sinusoid", "fomaml")}


def test_used_datasets() -> None:
    assert used_datasets(validate_config(_raw())) == ["omniglot", "sinusoid"]


# --- the schema's names are the registries' keys (adding a method = code + registry + schema) ---

def test_schema_methods_equal_registry() -> None:
    from metarepro.methods import METHODS

    assert set(load_schema()["$defs"]["experiment"]["properties"]["methods"]["properties"]) == set(METHODS)


def test_schema_datasets_equal_registry() -> None:
    from metarepro.data import DATASETS

    schema = load_schema()
    assert set(schema["$defs"]["experiment"]["properties"]["dataset"]["enum"]) == set(DATASETS)
    assert set(schema["properties"]["datasets"]["properties"]) == set(DATASETS)


def test_schema_backbones_equal_registry() -> None:
    from metarepro.models import BACKBONES

    assert set(load_schema()["$defs"]["experiment"]["properties"]["backbone"]["enum"]) == set(BACKBONES)
