"""What the papers' training protocols need beyond a plain meta-training loop: meta-training with more ways than
the test (train.ways), a step-decay meta-lr schedule (train.lr_schedule) and MAML++'s test-time ensemble of the
best validation checkpoints (train.ensemble)."""
from __future__ import annotations

import csv
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from metarepro import data as datasets
from metarepro import methods
from metarepro import train as train_mod
from metarepro.config import ConfigError, RunConfig, resolve_run, validate_config
from metarepro.data.store import write_dataset
from metarepro.evaluate import ensemble_members, ensemble_scores, evaluate
from metarepro.methods import Task
from metarepro.train import keep_best, metatrain
from metarepro.utils import MetareproError

REPO = Path(__file__).resolve().parents[2]
CLASSES = 12


@pytest.fixture(scope="module")
def tiny_omniglot(tmp_path_factory) -> Path:
    """12 classes per split of random 16x16 images, 3 per class (1 shot + 2 queries)."""
    rng = np.random.default_rng(0)

    def split(name: str) -> tuple:
        labels = np.repeat(np.arange(CLASSES), 3)
        return rng.integers(0, 256, (len(labels), 16, 16, 1), dtype=np.uint8), labels, \
            [f"{name}{i}" for i in range(CLASSES)]
    return write_dataset(tmp_path_factory.mktemp("data") / "omniglot", "omniglot",
                         {s: split(s) for s in ("train", "val", "test")}, {}, "synthetic")


def _config(tmp_path: Path, train: dict, methods: dict) -> dict:
    return {"results_dir": str(tmp_path / "results"), "data": {"dir": str(tmp_path)},
            "evaluation": {"episodes": 4, "queries": 1},
            "experiments": {"omni": {"dataset": "omniglot", "backbone": "conv4", "backbone_args": {"filters": 2},
                                     "ways": 5, "shots": [1], "methods": methods,
                                     "train": {"iterations": 6, "meta_batch": 1, "queries": 1, "val_every": 2,
                                               "val_episodes": 2, "checkpoint_every": 100, **train}}}}


def _run(cfg: dict, method: str, data_dir: Path, run_dir: Path) -> RunConfig:
    run = resolve_run(load_config_dict(cfg), "omni", method, 1, 0)
    return dataclasses.replace(run, data_dir=str(data_dir), run_dir=str(run_dir))


def load_config_dict(cfg: dict) -> dict:
    return validate_config(cfg, "test config")


# ---- train.ways -----------------------------------------------------------------------------------------------
def test_train_ways_is_refused_for_methods_with_a_ways_sized_head(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config_dict(_config(tmp_path, {"ways": 10}, {"maml": {}, "protonet": {}}))
    msg = str(e.value)
    assert "'experiments.omni.train.ways' = 10" in msg and "but maml classify with a 5-way head" in msg
    assert "only amfs, matchingnet, protonet can" in msg
    load_config_dict(_config(tmp_path, {"ways": 10}, {"protonet": {}, "matchingnet": {}}))   # accepted


def test_protonet_meta_trains_on_train_ways_episodes_and_validates_on_test_ways(tmp_path, tiny_omniglot,
                                                                              monkeypatch):
    seen = []
    real = datasets.episodes

    def spy(dataset, args, data_dir, split, ways, shots, queries, seed, *rest):
        seen.append((split, ways))
        return real(dataset, args, data_dir, split, ways, shots, queries, seed, *rest)
    monkeypatch.setattr(train_mod.datasets, "episodes", spy)
    run = _run(_config(tmp_path, {"ways": 10}, {"protonet": {}}), "protonet", tiny_omniglot, tmp_path / "run")
    sampled = []
    real_meta_step = train_mod.meta_step

    def record(learner, tasks, *a, **k):
        sampled.extend(int(t.y_support.max()) + 1 for t in tasks)
        return real_meta_step(learner, tasks, *a, **k)
    monkeypatch.setattr(train_mod, "meta_step", record)
    metatrain(run, progress=False)
    assert ("train", 10) in seen and ("val", 5) in seen
    assert sampled == [10] * 6


# ---- train.lr_schedule ----------------------------------------------------------------------------------------
def test_step_schedule_multiplies_the_meta_lr_by_gamma_every_step_iterations(tmp_path, tiny_omniglot):
    run = _run(_config(tmp_path, {"lr_schedule": {"step": 2, "gamma": 0.5}, "meta_lr": 0.004},
                       {"protonet": {}}), "protonet", tiny_omniglot, tmp_path / "run")
    metatrain(run, progress=False)
    with open(tmp_path / "run" / "train_log.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    # the lr each iteration ran with: 0.004 for iterations 1-2, 0.002 for 3-4, 0.001 for 5-6
    assert lrs == pytest.approx([0.004, 0.004, 0.002, 0.002, 0.001, 0.001], abs=1e-12)


def test_step_schedule_is_refused_beside_a_methods_own_schedule(tmp_path, tiny_omniglot):
    run = _run(_config(tmp_path, {"lr_schedule": {"step": 2, "gamma": 0.5}}, {"mamlpp": {"inner_steps": 1}}),
               "mamlpp", tiny_omniglot, tmp_path / "run")
    with pytest.raises(MetareproError, match=r"train\.lr_schedule.*mamlpp.*CosineAnnealingLR"):
        metatrain(run, progress=False)
    assert not (tmp_path / "run" / "model.pt").exists()


# ---- train.ensemble -------------------------------------------------------------------------------------------
def test_keep_best_ranks_by_validation_drops_nan_and_keeps_the_earlier_of_ties():
    top = []
    for it, v in [(1, 50.0), (2, 70.0), (3, float("nan")), (4, 70.0), (5, 60.0), (6, 40.0)]:
        top = keep_best(top, {"iteration": it, "val_mean": v}, 3, higher=True)
    assert [t["iteration"] for t in top] == [2, 4, 5]
    low = []
    for it, v in [(1, 0.5), (2, 0.2), (3, 0.9)]:
        low = keep_best(low, {"iteration": it, "val_mean": v}, 2, higher=False)
    assert [t["iteration"] for t in low] == [2, 1]


class OneHotLogits(nn.Module):
    """Logits = W x for one-hot inputs: row i of W^T is the logit vector of input i."""

    def __init__(self, logits: list[list[float]]) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor(logits, dtype=torch.float32).T)

    def forward(self, x):
        return self.lin(x)


def test_ensemble_averages_the_members_logits():
    # member A is right on query 0 only, B on query 1 only; their mean logits are right on both:
    # query 0: (3 + 0, 0 + 1) / 2 = (1.5, 0.5) -> class 0; query 1: (1 + 0, 0 + 3) / 2 = (0.5, 1.5) -> class 1
    x = torch.eye(2)
    task = Task(x, torch.tensor([0, 1]), x, torch.tensor([0, 1]))
    a = methods.build("maml", OneHotLogits([[3, 0], [1, 0]]), "classification", inner_steps=1).eval()
    b = methods.build("maml", OneHotLogits([[0, 1], [0, 3]]), "classification", inner_steps=1).eval()
    assert a.evaluate_task(task, 0) == [50.0] and b.evaluate_task(task, 0) == [50.0]
    assert ensemble_scores([a, b], task, 0) == [100.0]
    assert ensemble_members(a, {"ensemble": [{"state": a.state_dict()}]}) == []   # one member: no ensemble


def test_training_keeps_the_best_checkpoints_and_evaluation_ensembles_them(tmp_path, tiny_omniglot):
    run = _run(_config(tmp_path, {"ensemble": 2}, {"maml": {"inner_lr": 0.1}}), "maml", tiny_omniglot,
               tmp_path / "run")
    metatrain(run, progress=False)
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=False)
    with open(tmp_path / "run" / "train_log.csv") as f:
        vals = [(float(r["val_mean"]), int(r["iteration"])) for r in csv.DictReader(f) if r["val_mean"]]
    expected = [it for _, it in sorted(vals, key=lambda p: (-p[0], p[1]))[:2]]
    assert [e["iteration"] for e in state["ensemble"]] == expected
    assert state["best_iteration"] == expected[0]
    assert all(torch.equal(state["state"][k], v) for k, v in state["ensemble"][0]["state"].items())
    out = evaluate(tmp_path / "run", progress=False)
    result = json.loads(out.read_text())
    assert [e["iteration"] for e in result["ensemble"]] == expected
    assert len(result["per_episode"]) == 4 and all(math.isfinite(v) for v in result["per_episode"])


# ---- train.stack_tasks ----------------------------------------------------------------------------------------
def test_stack_tasks_runs_conv4_meta_batches_stacked_with_the_same_training(tmp_path, tiny_omniglot, monkeypatch):
    stacked = []
    real = train_mod.MetaLearner.can_stack

    def spy(self, tasks):
        stacked.append(real(self, tasks))
        return stacked[-1]
    monkeypatch.setattr(train_mod.MetaLearner, "can_stack", spy)
    weights: dict[bool, list[float]] = {}
    for flag in (True, False):
        run = _run(_config(tmp_path, {"stack_tasks": flag, "meta_batch": 3}, {"maml": {"inner_lr": 0.1}}), "maml",
                   tiny_omniglot, tmp_path / f"run{flag}")
        stacked.clear()
        metatrain(run, progress=False)
        assert stacked and all(s == flag for s in stacked)
        with open(tmp_path / f"run{flag}" / "train_log.csv") as f:
            weights[flag] = [float(r["meta_loss"]) for r in csv.DictReader(f)]
    # the same meta-losses, iteration by iteration, up to float32 rounding (summation order)
    assert weights[True] == pytest.approx(weights[False], rel=1e-4)


# ---- CML†: the co-learner predicting at test time -------------------------------------------------------------
def test_cml_run_is_also_scored_by_its_colearner_and_tabled_as_cml_dagger(tmp_path, tiny_omniglot):
    from metarepro.evaluate import hook_score, test_time_term
    from metarepro.methods.base import tap_outputs
    from metarepro.report import tables
    from metarepro.runtime import load_learner

    run = _run(_config(tmp_path, {}, {"maml+cml": {"inner_lr": 0.1}}), "maml+cml", tiny_omniglot, tmp_path / "run")
    metatrain(run, progress=False)
    ev = json.loads(evaluate(tmp_path / "run", progress=False).read_text())
    co = ev["colearner"]
    assert len(co["per_episode"]) == 4
    # by hand: the trained co-learner's head on the adapted learner's tapped query features, episode 0
    learner, run_cfg, state = load_learner(tmp_path / "run" / "model.pt")
    term = test_time_term(learner, run_cfg, state, "cpu")
    assert torch.equal(term.head[0].weight, state["addons"]["0.head.0.weight"])
    # inference counts the learner's parameters; what was meta-trained adds the co-learner's
    n_learner = sum(p.numel() for p in learner.parameters())
    assert ev["parameters"] == n_learner
    assert ev["meta_trained_parameters"] == n_learner + sum(p.numel() for p in term.parameters()) > n_learner
    eps = datasets.episodes("omniglot", run_cfg.dataset_args, run_cfg.data_dir, "test", 5, 1, 1,
                            datasets.eval_seed(0, "omniglot", "test", 5, 1))
    task = eps.episode(0)
    adapted = learner.adapt(task, learner.eval_inner_steps, create_graph=False)
    with torch.no_grad(), tap_outputs(learner.model, [term.tap]) as found:
        adapted(task.x_query)
        pred = term.head(found[term.tap]).argmax(1)
    assert co["per_episode"][0] == pytest.approx(float((pred == task.y_query).float().mean()) * 100.0)
    assert hook_score(learner, term, task, learner.eval_inner_steps) == pytest.approx(co["per_episode"][0])
    # evaluation reads the co-learner's input from the scored query pass instead of adapting again: the same
    # numbers, bit for bit, as a separate adaptation per episode
    assert co["per_episode"] == [hook_score(learner, term, eps.episode(i), learner.eval_inner_steps)
                                 for i in range(4)]
    # the table: a "MAML + CML†" row beside "MAML + CML", paired on the same episodes
    rows = tables.build_rows(tables.with_colearner_rows([ev]), [])[0]
    assert [r["method_label"] for r in rows] == ["MAML + CML", "MAML + CML†"]
    assert rows[1]["ours_mean"] == pytest.approx(co["mean"])


def test_sinusoid_frequency_li_et_al_and_a_fixed_frequency_leaves_the_task_stream_unchanged():
    """`frequency: [0.8, 1.2]` (Li et al. 2017) draws w per task and y = A sin(w x - phi); a fixed frequency draws
    nothing, so MAML's tasks are bit for bit those of the generator without the option."""
    from metarepro.data.sinusoid import SinusoidTasks
    plain, li = SinusoidTasks(), SinusoidTasks(frequency=(0.8, 1.2))
    a, b = np.random.default_rng(7), np.random.default_rng(7)
    t = plain.task(a, 5, 10)
    amp, phase = b.uniform(0.1, 5.0), b.uniform(0.0, math.pi)           # the old stream, written out
    x = b.uniform(-5.0, 5.0, size=(15, 1))
    assert torch.equal(t.x_support, torch.as_tensor(x[:5], dtype=torch.float32))
    assert torch.equal(t.y_query, torch.as_tensor(amp * np.sin(x[5:] - phase), dtype=torch.float32))
    assert t.info["frequency"] == 1.0
    freqs = []
    for _ in range(200):
        task = li.task(a, 5, 10)
        w, A, p = task.info["frequency"], task.info["amplitude"], task.info["phase"]
        freqs.append(w)
        want = A * np.sin(w * task.x_query.double().numpy() - p)
        np.testing.assert_allclose(task.y_query.numpy(), want, atol=1e-5, rtol=0)
    assert 0.8 <= min(freqs) < 0.85 and 1.15 < max(freqs) <= 1.2


def test_experiment_tasks_block_sets_a_generated_datasets_distribution_and_is_refused_elsewhere():
    from metarepro.config import ConfigError, load_config, resolve_run
    repo = Path(__file__).resolve().parents[2]
    cfg = load_config(repo / "config/cpu_fidelity.yaml")
    run = resolve_run(cfg, "sinusoid_li", "maml", 5, 0)
    assert run.dataset_args["frequency"] == [0.8, 1.2] and run.evaluation["queries"] == 100
    assert "frequency" not in resolve_run(load_config(repo / "config/config.yaml"), "sinusoid", "maml", 5, 0).dataset_args
    import yaml
    raw = yaml.safe_load((repo / "config/cpu_fidelity.yaml").read_text())
    raw["experiments"]["omniglot_maml"]["tasks"] = {"frequency": [0.8, 1.2]}
    from metarepro.config import validate_config
    with pytest.raises(ConfigError, match=r"experiments\.omniglot_maml\.tasks.*generated dataset"):
        validate_config(raw)
