"""config/paper.yaml at tiny size: every (experiment, method) it lists meta-trains and evaluates through the Python
API with its paper hyperparameters (method block, inner steps, switches, meta lr, gradient clip, ways, shots),
only the sizes shrunk (iterations, meta-batch, queries, episodes, backbone width, a tiny synthetic dataset)."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from metarepro.config import MethodName, RunConfig, iter_runs, load_config, resolve_pretrain, resolve_run
from metarepro.data.store import write_dataset

REPO = Path(__file__).resolve().parents[2]
CFG = load_config(REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml")
# one run per (experiment, method): its smallest shot count
CASES = sorted({(r.experiment, r.method): min(CFG["experiments"][r.experiment]["shots"])
                for r in iter_runs(CFG)}.items())
IMAGE = 16                         # 16x16 inputs: the Conv-4's four poolings leave 1x1
TINY_TRAIN = {"iterations": 2, "meta_batch": 1, "queries": 1, "val_every": 2, "val_episodes": 1,
              "checkpoint_every": 2}
TINY_EVAL = {"episodes": 2, "queries": 1}


def _tiny_backbone(backbone: str) -> dict:
    return {"mlp": {"hidden": [8, 8]}, "conv4": {"filters": 2}, "resnet12": {"widths": [2, 2, 2, 2]},
            "gnn": {"hidden": [4, 4]}}[backbone]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    """Per image dataset of paper.yaml: random uint8 images, as many classes as its widest experiment needs and
    as many images per class as its largest shot count + 1 query."""
    from metarepro.data import get as dataset_spec
    from metarepro.data.synthetic_graphs import prepare_cycle

    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("paper_data")
    out = {}
    for dataset in sorted({e["dataset"] for e in CFG["experiments"].values()} - {"sinusoid"}):
        if dataset_spec(dataset).graph:
            # node classification (G-Meta's released graphs): a tiny synthetic graph dataset in the same format
            out[dataset] = prepare_cycle(None, root / dataset, {"graphs": 5, "noise_edges": 5, "max_nodes": 8})
            continue
        exps = [e for e in CFG["experiments"].values() if e["dataset"] == dataset]
        # as many classes as the widest episodes, meta-training's (train.ways, e.g. ProtoNet's 60) included
        ways = max(max([e["ways"], e["train"].get("ways", 0)] + [o.get("ways", 0) for o in e["train_overrides"].values()])
                   for e in exps)
        per_class = max(max(e["shots"]) for e in exps) + 1
        channels = 1 if dataset == "omniglot" else 3

        def split(name: str, n_classes: int = ways) -> tuple:
            labels = np.repeat(np.arange(n_classes), per_class)
            images = rng.integers(0, 256, (len(labels), IMAGE, IMAGE, channels), dtype=np.uint8)
            return images, labels, [f"{name}{i}" for i in range(n_classes)]     # disjoint splits, as prepare demands
        out[dataset] = write_dataset(root / dataset, dataset, {s: split(s) for s in ("train", "val", "test")},
                                     {}, "synthetic")
    return out


@pytest.fixture(scope="module")
def tiny_pretrained(tiny_data, tmp_path_factory) -> dict[tuple, str]:
    """The pretrain stage of each (dataset, backbone) that paper.yaml's baselines need, at tiny size."""
    from metarepro.pretrain import pretrain

    out = {}
    for exp in CFG["experiments"].values():
        methods = [m for m in exp["methods"] if resolve_run(CFG, _name(exp), m, exp["shots"][0], 0).pretrained]
        if not methods:
            continue
        label = Path(resolve_run(CFG, _name(exp), methods[0], exp["shots"][0], 0).pretrained).parent.parent.name
        pc = resolve_pretrain(CFG, exp["dataset"], label, 0)
        tiny = dataclasses.replace(
            pc, data_dir=str(tiny_data[exp["dataset"]]), backbone_args=_tiny_backbone(exp["backbone"]),
            out_dir=str(tmp_path_factory.mktemp("pretrain") / label),
            pretrain={**pc.pretrain, "epochs": 0.25, "batch_size": 8, "val_every": 10**6, "val_episodes": 1,
                      "val_shots": 1, "val_queries": 1, "checkpoint_every": 10**6})
        out[(exp["dataset"], label)] = str(pretrain(tiny, progress=False))
    return out


def _name(exp: dict) -> str:
    return next(n for n, e in CFG["experiments"].items() if e is exp)


def _tiny_run(paper: RunConfig, tiny_data: dict, tiny_pretrained: dict, run_dir: Path) -> RunConfig:
    pretrained = ""
    if paper.pretrained:
        pretrained = tiny_pretrained[(paper.dataset, Path(paper.pretrained).parent.parent.name)]
    return dataclasses.replace(
        paper, train={**paper.train, **TINY_TRAIN}, evaluation={**paper.evaluation, **TINY_EVAL},
        backbone_args=_tiny_backbone(paper.backbone), run_dir=str(run_dir), pretrained=pretrained,
        data_dir=str(tiny_data.get(paper.dataset, paper.data_dir)))


@pytest.mark.parametrize("case", CASES, ids=[f"{e}-{m}" for (e, m), _ in CASES])
def test_paper_protocol_runs_at_tiny_size(case, tiny_data, tiny_pretrained, tmp_path) -> None:
    from metarepro.evaluate import evaluate
    from metarepro.methods import METHODS
    from metarepro.train import build_learner, metatrain

    (experiment, method), shots = case
    paper = resolve_run(CFG, experiment, method, shots, 0)
    run = _tiny_run(paper, tiny_data, tiny_pretrained, tmp_path / "run")
    # only sizes differ from the paper run: the method block, ways, shots, meta lr and clip are the paper's
    assert (run.method, run.method_args, run.ways, run.shots) == (paper.method, paper.method_args, paper.ways, shots)
    assert {k: v for k, v in run.train.items() if k not in TINY_TRAIN} == \
        {k: v for k, v in paper.train.items() if k not in TINY_TRAIN}
    assert type(build_learner(run)) is METHODS[MethodName.parse(method).base]

    assert metatrain(run, progress=False).exists()
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["method_args"] == paper.method_args
    rows = list(csv.DictReader((tmp_path / "run" / "train_log.csv").open()))
    assert rows and all(math.isfinite(float(r["val_mean"])) for r in rows if r["val_mean"])
    assert all(math.isfinite(float(r["meta_loss"])) for r in rows if r["meta_loss"])

    ev = json.loads(evaluate(tmp_path / "run", progress=False).read_text())
    assert math.isfinite(ev["mean"]) and len(ev["per_episode"]) == TINY_EVAL["episodes"]
    assert all(math.isfinite(x) for x in ev["per_episode"])
    args = paper.method_args   # evaluation takes the paper's number of inner steps
    expected = args.get("eval_inner_steps") or args.get("inner_steps") or args.get("steps", 0)
    assert ev["inner_steps"] == expected and set(ev["by_step"]) == {str(j) for j in range(expected + 1)}
    # Meta-LSTM records its gate values (its Fig. 2) on the curve episodes; no other method adds entries
    assert ("gates" in ev) == (MethodName.parse(method).base == "metalstm")
    if "gates" in ev:
        assert len(ev["gates"]["forget"]["mean"]) == expected and ev["gates"]["episodes"] == ev["curve_episodes"]


MAMLPP_FIXES = ("per_step_bn", "lslr", "cosine_annealing", "multi_step_loss", "derivative_order_annealing")
# What each labelled variant's label claims, as switches (metarepro.report.tables.VARIANT_LABELS)
VARIANT_SWITCHES = {
    "pamela@maml": {"q_mode": "none", "skip": False},
    "pamela@q_shared": {"q_mode": "shared", "skip": False},
    "pamela@q_per_step": {"q_mode": "per_step", "skip": False},
    "pamela@skip": {"q_mode": "none", "skip": True},
    "pamela@window": {"q_mode": "per_step", "skip": True, "skip_mode": "window"},
    "mamlpp@maml": dict.fromkeys(MAMLPP_FIXES, False),
    **{f"mamlpp@{tag}": {fix: fix == on for fix in MAMLPP_FIXES}
       for tag, on in (("bn", "per_step_bn"), ("lslr", "lslr"), ("ca", "cosine_annealing"), ("msl", "multi_step_loss"),
                                ("da", "derivative_order_annealing"))},
    "matchingnet@fce": {"fce": True},
    "sharp_maml@up": {"sam_outer": True, "sam_inner": False},
    "sharp_maml@low": {"sam_outer": False, "sam_inner": True},
    "sharp_maml@both": {"sam_outer": True, "sam_inner": True},
    "mtl@ft": {"mode": "ft"},
    "mtl@theta": {"mode": "theta"},
    # CML's parameter-matched controls differ from MAML in the backbone (backbone_args), not in switches
    "maml@more": {},
    "maml@branch": {},
    "sharp_maml@cmlp": {"sam_outer": True, "sam_inner": False},
    "pamela@cmlp": {"q_mode": "per_step", "skip": False},       # one inner step: P^w cannot act, labelled Q_j only
    "amfs@fo": {"first_order": True},
    "amfs@mu": {"info_weight": 0.0},            # cpu_kernel's regulariser rows (not in paper.yaml)
    "amfs@gamma": {"grad_norm_weight": 0.0},
}
# methods whose full version is itself a labelled variant (the paper names every row by its switches)
FULL_VARIANT = {"sharp_maml": "sharp_maml@both"}


def test_paper_variants_have_the_switches_their_report_labels_name() -> None:
    """An ablation row labelled "MAML + per-step Q_j" must run Q_j without skips, and differ from the full
    method of its report only in the switches (so the rows compare one change at a time)."""
    from metarepro.report.tables import PROTOCOL_TAGS, VARIANT_LABELS

    assert set(VARIANT_SWITCHES) == set(VARIANT_LABELS)
    seen = set()
    for name, exp in CFG["experiments"].items():
        for method, args in exp["methods"].items():
            if "@" not in method:
                continue
            method = method.split("+")[0]       # add-ons (`+cml`) do not change the variant's switches
            protocol = method.split("@")[1] in PROTOCOL_TAGS     # a protocol, not an ablation: test_cml_protocol
            if protocol and method not in VARIANT_SWITCHES:
                continue
            assert method in VARIANT_SWITCHES, f"{name}.{method}: a paper.yaml variant without a report label"
            switches = VARIANT_SWITCHES[method]
            assert {k: args[k] for k in switches} == switches, (name, method)
            if protocol:
                continue
            base = FULL_VARIANT.get(MethodName.parse(method).base, MethodName.parse(method).base)
            full = [e["methods"][base] for e in CFG["experiments"].values()
                    if e["dataset"] == exp["dataset"] and base in e["methods"]
                    and e["backbone_args"] == exp["backbone_args"]]
            assert full, f"{name}.{method}: no full {MethodName.parse(method).base} run to compare with"
            if MethodName.parse(method).base != "matchingnet":
                assert {k: v for k, v in args.items() if k not in switches and k != "addons"} == \
                    {k: v for k, v in full[0].items() if k not in switches}, (name, method)
            seen.add(method)
    assert seen, "paper.yaml runs no ablation variants"


def test_cml_protocol() -> None:
    """Every run tagged @cmlp, and BOIL (whose own protocol it is), runs CML's official protocol: Conv-4-64, one
    inner step at 0.5, meta-batch 4, meta lr 1e-3, 15 queries, 30k iterations, each with and without the
    co-learner in the same experiment (paired on the same episodes); MAML++ + CML beside MAML++ at MAML++'s own
    protocol, where CML's one published row comes from."""
    from metarepro.report.tables import method_label

    exps = {n: e for n, e in CFG["experiments"].items() if any("@cmlp" in m for m in e["methods"])}
    assert {e["dataset"] for e in exps.values()} == {"miniimagenet", "tieredimagenet", "cifarfs", "fc100", "cub"}
    for name, exp in exps.items():
        assert exp["backbone"] == "conv4" and exp["backbone_args"] == {"filters": 64}, name
        tr = exp["train"]
        assert (tr["iterations"], tr["meta_batch"], tr["meta_lr"], tr["queries"]) == (30000, 4, 0.001, 15), name
        assert not exp["train_overrides"], name
        methods = exp["methods"]
        bases = {m for m in methods if not m.endswith("+cml")}
        assert {MethodName.parse(m).base for m in bases} == {"maml", "fomaml", "mamlpp", "boil", "sharp_maml", "pamela",
                                                   "metasgd"}, name
        for m in bases:
            cml = dict(methods[m + "+cml"])
            assert cml.pop("addons") == {"cml": {"weight": 1.0, "lr": 0.001}}, (name, m)   # gamma 1, Adam 1e-3
            assert cml == methods[m], (name, m)
            assert methods[m]["inner_steps"] == 1, (name, m)
            if MethodName.parse(m).base != "metasgd":
                assert methods[m]["inner_lr"] == 0.5, (name, m)
            assert m == "boil" or m.endswith("@cmlp"), (name, m)
    assert method_label("maml@cmlp+cml") == "MAML (CML protocol) + CML"
    mamlpp = CFG["experiments"]["miniimagenet_mamlpp"]["methods"]
    assert {k: v for k, v in mamlpp["mamlpp+cml"].items() if k != "addons"} == mamlpp["mamlpp"]
