"""metarepro.config: schema validation (defaults, messages naming the bad key), run resolution, and
the schema's names agreeing with the code's registries."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metarepro.config import (PRETRAINED_METHODS, ConfigError, RunConfig, backbone_label, command_line_overrides,
                              find_experiment,
                              iter_pretrains, iter_runs, load_config, load_schema, resolve_pretrain, resolve_run,
                              run_dir, used_datasets, validate_config)

REPO = Path(__file__).resolve().parents[2]
CONFIGS = {
    "default": ["config/config.yaml"],
    # --configfile semantics of the Snakefile: top-level keys replace config/config.yaml's
    "paper": ["config/config.yaml", "config/paper.yaml"],
    "cpu_methods": ["config/config.yaml", "config/cpu_methods.yaml"],
    "cpu_fidelity": ["config/config.yaml", "config/cpu_fidelity.yaml"],
    "cpu_kernel": ["config/config.yaml", "config/cpu_kernel.yaml"],
    "cpu_cml": ["config/config.yaml", "config/cpu_cml.yaml"],
    "cpu_claims": ["config/config.yaml", "config/cpu_claims.yaml"],
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


@pytest.mark.parametrize("name", ["paper", "cpu_methods", "cpu_fidelity", "cpu_kernel", "cpu_cml", "cpu_claims"])
def test_profiles_and_default_write_to_different_places(name: str) -> None:
    default, other = load_config(REPO / "config/config.yaml"), load_config(*(REPO / r for r in CONFIGS[name]))
    assert default["results_dir"] != other["results_dir"]
    assert default["reports_dir"] != other["reports_dir"]
    assert other["profile"] == name
    # every figure committed to git lies under reports/figures/ (the default's directly, others per profile)
    assert default["figures_dir"] is None and other["figures_dir"] == f"reports/figures/{name}"


@pytest.mark.parametrize("name", [n for n in CONFIGS if n != "tiny"])
def test_shipped_profiles_produce_their_reports_in_strict_numerics(name: str) -> None:
    """The committed reports must be reproducible bit for bit on another CPU: every shipped profile is strict."""
    assert load_config(*(REPO / rel for rel in CONFIGS[name]))["strict_numerics"] is True


def test_claims_profile_trains_three_seeds_on_the_same_test_episodes() -> None:
    cfg = load_config(*(REPO / rel for rel in CONFIGS["cpu_claims"]))
    assert len(cfg["seeds"]) >= 3 and cfg["evaluation"]["seed"] == 0
    assert {r.seed for r in iter_runs(cfg)} == set(cfg["seeds"])


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("yes", True), ("false", False),
                                         ("OFF", False)])
def test_command_line_booleans_take_yaml_spellings(text: str, value: bool) -> None:
    """`snakemake --config strict_numerics=true` arrives as the string "true" (Snakemake parses only True/False)."""
    out = command_line_overrides({"strict_numerics": text, "results_dir": "yes"})
    assert out == {"strict_numerics": value, "results_dir": "yes"}     # only boolean keys are converted
    assert validate_config({**_raw(), **out})["strict_numerics"] is value


def test_command_line_boolean_that_is_no_boolean_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="strict_numerics.*wrong type: expected boolean"):
        validate_config({**_raw(), **command_line_overrides({"strict_numerics": "maybe"})})


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
    "report of unconfigured method": (_edit("reports/test_fewshot/methods", ["maml", "protonett"]),
                                      ["reports.test_fewshot.methods", "protonett", "maml"]),
    "experiment evaluation override of episodes": (_edit("experiments/sinusoid/evaluation", {"episodes": 10}),
                                                   ["experiments.sinusoid.evaluation", "episodes"]),
    "sinusoid with conv4": (_edit("experiments/sinusoid/backbone", "conv4"), ["experiments.sinusoid.backbone"]),
    "unknown pretrain key": (_edit("pretrain", {"omniglot": {"epochs": 1, "learning_rate": 0.1}}),
                             ["pretrain.omniglot.learning_rate", "lr", "batch_size"]),
    "pretrain of unknown dataset": (_edit("pretrain", {"omniglott": {}}), ["pretrain.omniglott", "omniglot"]),
    "pretrain epochs 0": (_edit("pretrain", {"omniglot": {"epochs": 0}}), ["pretrain.omniglot.epochs", "> 0"]),
    "finetune on sinusoid": (_edit("experiments/sinusoid/methods/finetune", {}),
                             ["experiments.sinusoid.methods", "finetune", "sinusoid"]),
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
    # CIFAR-FS only as the tiny profile's cross-domain target: prepared although nothing trains on it
    assert used_datasets(validate_config(_raw())) == ["cifarfs", "omniglot", "sinusoid"]


# --- the schema's names are the registries' keys (adding a method = code + registry + schema) ---

def test_schema_methods_equal_registry() -> None:
    from metarepro.methods import METHODS

    assert set(load_schema()["$defs"]["experiment"]["properties"]["methods"]["properties"]) == set(METHODS)


def test_schema_method_variants_cover_every_registered_method() -> None:
    """Each method may run as variants `<method>@<tag>` and with add-ons `<method>+<addon>`, validated against the
    method's own block."""
    from metarepro.methods import METHODS

    methods = load_schema()["$defs"]["experiment"]["properties"]["methods"]
    patterns = methods["patternProperties"]
    assert {p.split("(")[0].lstrip("^") for p in patterns} == set(METHODS)
    for pattern, sub in patterns.items():
        assert sub == methods["properties"][pattern.split("(")[0].lstrip("^")], pattern


def _with_variants() -> dict:
    raw = _raw()
    raw["experiments"]["omniglot"]["methods"].update({"pamela@q_shared": {"q_mode": "shared", "skip": False},
                                                      "finetune@head": {"head_only": True}})
    return raw


def test_method_variant_gets_its_methods_defaults_and_its_own_runs() -> None:
    cfg = validate_config(_with_variants())
    args = cfg["experiments"]["omniglot"]["methods"]["pamela@q_shared"]
    assert args["q_mode"] == "shared" and args["skip"] is False and args["inner_steps"] == 5   # defaults filled
    run = resolve_run(cfg, "omniglot", "pamela@q_shared", 1, 0)
    assert run.method == "pamela@q_shared" and run.method_args == args
    assert run.run_dir == f"{cfg['results_dir']}/omniglot/pamela@q_shared/5way1shot/seed0"
    # a variant of a pretrained baseline needs the pretrain stage like its method
    assert resolve_run(cfg, "omniglot", "finetune@head", 1, 0).pretrained.endswith("/pretrain/conv4-8/seed0/backbone.pt")
    assert [p.label for p in iter_pretrains(cfg)] == ["conv4-8"]
    # the other runs are untouched by the variants beside them
    plain = validate_config(_raw())
    assert resolve_run(cfg, "omniglot", "maml", 1, 0) == resolve_run(plain, "omniglot", "maml", 1, 0)


@pytest.mark.parametrize("name,block,expected", [
    ("pamela@q_shared", {"q_mod": "shared"}, ["experiments.omniglot.methods.pamela@q_shared.q_mod", "q_mode"]),
    ("pamela@q_shared", {"q_mode": "sometimes"}, ["experiments.omniglot.methods.pamela@q_shared.q_mode", "per_step"]),
    ("pamla@x", {}, ["experiments.omniglot.methods.pamla@x", "<method>@<tag>"]),
    ("pamela@Bad-Tag", {}, ["experiments.omniglot.methods.pamela@Bad-Tag"]),
])
def test_bad_method_variant_is_rejected_naming_the_key(name: str, block: dict, expected: list[str]) -> None:
    raw = _raw()
    raw["experiments"]["omniglot"]["methods"][name] = block
    with pytest.raises(ConfigError) as err:
        validate_config(raw)
    for text in expected:
        assert text in str(err.value), f"{text!r} missing from: {err.value}"


def test_registry_builds_a_variant_as_its_method_with_its_switches() -> None:
    import torch

    from metarepro import methods, models

    model = models.build("mlp", (1,), 1, hidden=[4])
    learner = methods.build("pamela@q_shared", model, "regression", inner_steps=3, q_mode="shared", skip=False)
    assert type(learner) is methods.METHODS["pamela"] and learner.q_mode == "shared" and not learner.skip
    assert len(learner.q) == 1 and len(learner.p_raw) == 0
    for bad in ("pamla@x", "pamela@", "pamela@Bad", "pamela@a@b"):
        with pytest.raises(KeyError, match="known"):
            methods.build(bad, model, "regression")
    assert all(torch.equal(learner.preconditioner(k, 0), torch.full_like(p, 0.01))   # Q starts at inner_lr
               for k, p in model.named_parameters())


def test_schema_datasets_equal_registry() -> None:
    from metarepro.data import DATASETS

    schema = load_schema()
    assert set(schema["$defs"]["experiment"]["properties"]["dataset"]["enum"]) == set(DATASETS)
    assert set(schema["properties"]["datasets"]["properties"]) == set(DATASETS)


def test_schema_backbones_equal_registry() -> None:
    from metarepro.models import BACKBONES

    assert set(load_schema()["$defs"]["experiment"]["properties"]["backbone"]["enum"]) == set(BACKBONES)


def test_pretrained_methods_table_equals_the_classes() -> None:
    """config.PRETRAINED_METHODS is the torch-free copy (for Snakemake) of the classes' `needs_pretrained`."""
    from metarepro.methods import METHODS

    assert PRETRAINED_METHODS == {name for name, cls in METHODS.items() if cls.needs_pretrained}


def _with_baselines() -> dict:
    raw = _raw()
    raw["experiments"]["omniglot"]["methods"].update(finetune={"steps": 3}, nearest_neighbor=None, protonet=None)
    raw["pretrain"] = {"omniglot": {"epochs": 0.5, "batch_size": 32}}
    return raw


def test_pretrained_methods_resolve_to_one_pretrain_run_per_dataset_backbone_seed() -> None:
    cfg = validate_config(_with_baselines())
    exp = cfg["experiments"]["omniglot"]
    label = backbone_label("conv4", exp["backbone_args"])
    assert label == "conv4-8" and backbone_label("conv4", {"filters": 64}) == "conv4-64"
    assert backbone_label("mlp", {"hidden": [40, 40]}) == "mlp-40x40" and backbone_label("conv4", {}) == "conv4"
    expected = f"{cfg['results_dir']}/omniglot/pretrain/conv4-8/seed0/backbone.pt"
    assert resolve_run(cfg, "omniglot", "finetune", 1, 0).pretrained == expected
    assert resolve_run(cfg, "omniglot", "nearest_neighbor", 1, 0).pretrained == expected
    # methods without pretraining keep the run config (and Snakemake params) they had before the field existed
    assert "pretrained" not in resolve_run(cfg, "omniglot", "maml", 1, 0).to_dict()
    assert [p.out_dir for p in iter_pretrains(cfg)] == [expected.rsplit("/", 1)[0]]
    pc = resolve_pretrain(cfg, "omniglot", "conv4-8", 0)
    assert pc.pretrain["epochs"] == 0.5 and pc.pretrain["lr"] == 0.001 and pc.backbone_args == {"filters": 8}
    with pytest.raises(ConfigError, match="conv4-64"):
        resolve_pretrain(cfg, "omniglot", "conv4-64", 0)


def test_dry_run_schedules_pretraining_as_input_of_the_baselines(tmp_path: Path) -> None:
    raw = _with_baselines()
    raw["results_dir"] = str(tmp_path / "results")
    configfile = tmp_path / "config.yaml"
    configfile.write_text(yaml.safe_dump(raw))
    proc = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "-p", "--forceall", "--configfile",
                           str(configfile)], cwd=REPO, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout + proc.stderr
    backbone = f"{tmp_path}/results/omniglot/pretrain/conv4-8/seed0/backbone.pt"
    assert "rule pretrain:" in text and f"output: {backbone}" in text and "metarepro pretrain --run" in text
    blocks = text.split("rule ")
    users = [b for b in blocks if b.startswith("metatrain:") and backbone in b.split("output:")[0]]
    assert sorted(m for b in users for m in ("finetune", "nearest_neighbor") if f"/omniglot/{m}/" in b) == [
        "finetune", "nearest_neighbor"]
    assert not any(backbone in b.split("output:")[0] for b in blocks
                   if b.startswith("metatrain:") and ("/omniglot/maml/" in b or "/omniglot/protonet/" in b))


@pytest.mark.parametrize("cls", ["RunConfig", "PretrainConfig"])
def test_saved_configs_name_unknown_and_missing_keys(cls: str) -> None:
    import metarepro.config as c
    klass = getattr(c, cls)
    with pytest.raises(ConfigError, match=r"unknown .*config keys \['bogus'\]"):
        klass.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match=r"is missing keys \[.*'dataset'"):
        klass.from_dict({})


def test_non_editable_install_validates_configs(tmp_path: Path) -> None:
    """The schema ships as package data: a wheel installed elsewhere (no checkout beside it) validates a config."""
    try:
        import setuptools  # noqa: F401
    except ImportError:
        pytest.skip("building the wheel needs setuptools in this environment")
    import shutil
    project = tmp_path / "project"      # a copy: setuptools builds in the source folder (build/, *.egg-info)
    shutil.copytree(REPO / "src", project / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, project / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(project), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True)
    (wheel,) = (tmp_path / "wheel").glob("metarepro-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True)
    code = ("import metarepro.config as c, sys; assert str(c.__file__).startswith(sys.argv[1]), c.__file__; "
            "c.validate_config({'experiments': {'e': {'dataset': 'omniglot', 'backbone': 'conv4', 'ways': 5, "
            "'shots': [1], 'methods': {'maml+cml': {}}}}}); print('ok')")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path, capture_output=True,
                         text=True, env={"PYTHONPATH": str(tmp_path / "site"), "PATH": os.environ.get("PATH", "")})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_pretraining_settings_may_differ_per_backbone_and_aliases_stay_apart() -> None:
    """`pretrain.<dataset>.backbones.<backbone>` overrides only the keys it names, for that backbone's pretrain run
    (MTL's SGD recipe for ResNet-12 beside the Adam recipe of the Conv-4 baselines); a YAML alias shared by two
    method blocks gets each method's own defaults."""
    paper = load_config(REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml")
    conv = resolve_pretrain(paper, "miniimagenet", "conv4-32", 0).pretrain
    res = resolve_pretrain(paper, "miniimagenet", "resnet12-w64x128x256x512-in92c80", 0).pretrain
    assert "backbones" not in conv and "backbones" not in res
    assert (conv["optimizer"], conv["lr"], conv["momentum"], conv["batch_size"]) == ("sgd", 0.01, 0.0, 32)
    assert (res["optimizer"], res["lr"], res["nesterov"], res["weight_decay"], res["lr_step_epochs"], res["lr_gamma"],
            res["batch_size"], res["epochs"]) == ("sgd", 0.1, True, 0.0005, 30, 0.2, 128, 100)
    assert res["val_episodes"] == conv["val_episodes"] == 100         # the dataset block's value where not overridden
    default = load_config(REPO / "config" / "config.yaml")
    fc = default["experiments"]["fc100_cml_analysis"]["methods"]
    assert "addons" not in default["experiments"]["fc100_cml"]["methods"]["boil"]
    assert fc["maml+cml"]["addons"] == {"cml": {"weight": 1.0, "lr": 0.001}}
    assert "radius" not in default["experiments"]["fc100"]["methods"]["maml"]


@pytest.mark.parametrize("hp, ok", [
    ({"inner_steps": 2, "skip_window": 2}, False),                       # paper indexing: first skip at step w + 1
    ({"inner_steps": 3, "skip_window": 2}, True),
    ({"inner_steps": 2, "skip_window": 1}, True),
    ({"inner_steps": 1, "skip_window": 2, "skip": False}, True),         # the Q_j-only ablation, named as such
    ({"inner_steps": 2, "skip_window": 2, "skip_mode": "window"}, True),  # window indexing: theta_2 mixes theta_0
])
def test_a_pamela_run_whose_skip_cannot_fire_is_refused_before_any_job(hp: dict, ok: bool) -> None:
    """A run labelled PAMELA must apply P^w: settings under which no inner step ends in a skip are refused by the
    validator, naming the run and what to change."""
    cfg = _raw("default")
    name = next(n for n, e in cfg["experiments"].items() if "pamela" in e["methods"])
    cfg["experiments"][name]["methods"]["pamela"] = hp
    if ok:
        validate_config(copy.deepcopy(cfg))
        return
    with pytest.raises(ConfigError, match=rf"experiments\.{name}\.methods\.pamela.*no\s+inner step ends in a skip"):
        validate_config(cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_shipped_experiment_is_in_a_report(name: str) -> None:
    cfg = load_config(*(REPO / rel for rel in CONFIGS[name]))
    assert set(cfg["experiments"]) == {e for r in cfg["reports"].values() for e in r["experiments"]}
