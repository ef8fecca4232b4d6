"""Meta-training loop (method-agnostic): sample meta-batch -> method.meta_step -> log / validate / checkpoint.

Resumable: `checkpoints/last.pt` in the run dir holds the full state every `checkpoint_every`
iterations (weights, optimizer, best-so-far, log, RNG). Because meta-batch i is a pure function of
(seed, i), a killed run restarted from its checkpoint ends with the same weights as an uninterrupted one.
Checkpoint selection: the weights with the best validation score (fixed validation episodes).
"""
from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import addons, numerics
from . import data as datasets
from .config import RunConfig
from .formats import TRAIN_LOG_FIELDS
from .methods.base import MetaLearner
from .runtime import build_learner, load_backbone, load_learner, load_resume_state, write_outputs
from .stats import mean_ci95
from .utils import (MetareproError, atomic_path, git_revision, peak_memory_mb, resolve_device, rng_state,
                    set_determinism, set_rng_state, set_threads)

log = logging.getLogger("metarepro.train")

__all__ = ["metatrain", "validate", "load_learner", "build_learner", "LOG_FIELDS"]

LOG_FIELDS = list(TRAIN_LOG_FIELDS)   # train_log.csv's columns (metarepro.formats), before the add-on terms'
VAL_SPLIT = "val"


def higher_is_better(learner: MetaLearner) -> bool:
    return learner.task_type == "classification"


def improves(new: float, best: float, higher: bool) -> bool:
    """Whether validation score `new` beats `best`. A NaN score (an inner loop that diverges on some validation
    episode) never counts as an improvement, and any finite score beats a NaN best."""
    if math.isnan(new):
        return False
    return math.isnan(best) or (new > best if higher else new < best)


def make_scheduler(learner: MetaLearner, optimizer: torch.optim.Optimizer, total: int, tr: dict, method: str):
    """The meta-lr schedule: the method's own (MAML++'s cosine annealing) or `train.lr_schedule`'s step decay,
    never both (refused before any iteration runs)."""
    own = learner.make_scheduler(optimizer, total)
    step = tr.get("lr_schedule")
    if step and own is not None:
        raise MetareproError(f"train.lr_schedule is set, but method {method!r} schedules its meta lr itself "
                             f"({type(own).__name__}); drop one of them")
    if step:
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(step["step"]), gamma=float(step["gamma"]))
    return own


def keep_best(top: list[dict], entry: dict, keep: int, higher: bool) -> list[dict]:
    """The `keep` best validation entries (best first) after adding `entry`; NaN scores never enter; ties keep
    the earlier checkpoint first."""
    if math.isnan(entry["val_mean"]):
        return top
    ranked = sorted(top + [entry], key=lambda e: (-e["val_mean"] if higher else e["val_mean"], e["iteration"]))
    return ranked[:keep]


def validate(learner: MetaLearner, episodes: Any, n: int, steps: int,
             device: str = "cpu") -> tuple[float, float, float, float]:
    """(mean, 95% CI) of the query score after `steps` inner steps over `n` fixed episodes, and the mean and
    variance over those episodes of the support (inner) loss after adaptation."""
    was_training = learner.training
    learner.eval()
    scored = [learner.score_task(episodes.episode(i).to(device), steps) for i in range(n)]
    learner.train(was_training)
    inner = np.array([s[1] for s in scored], dtype=np.float64)
    return (*mean_ci95([s[0] for s in scored]), float(inner.mean()),
            float(inner.var(ddof=1)) if inner.size > 1 else float("nan"))


def _val_episodes(run: RunConfig):
    ev = run.evaluation
    return datasets.episodes(run.dataset, run.dataset_args, run.data_dir, VAL_SPLIT, run.ways, run.shots,
                             ev["queries"], datasets.eval_seed(ev["seed"], run.dataset, VAL_SPLIT, run.ways, run.shots))


def metatrain(run: RunConfig, threads: int = 1, progress: bool | None = None, device: str = "auto") -> Path:
    """Meta-train one run into run.run_dir: model.pt, train_log.csv, config.yaml (all written atomically)."""
    set_threads(threads)
    device = resolve_device(device)
    set_determinism(bool(run.train.get("deterministic", False)) or numerics.strict_requested())
    out = Path(run.run_dir)
    ckpt_path = out / "checkpoints" / "last.pt"
    tr = run.train
    learner = build_learner(run).to(device)
    if "stack_tasks" in tr and getattr(learner.model, "task_batched", False):
        learner.model.stack_tasks = bool(tr["stack_tasks"])   # run a meta-batch as one stacked task, or loop
    if learner.needs_pretrained:
        if not run.pretrained:
            raise MetareproError(f"method {run.method!r} starts from a pretrained backbone, but the run config has no "
                                 "'pretrained' path (metarepro.config.resolve_run fills it in)")
        load_backbone(learner.model, run.pretrained, run.backbone, run.backbone_args)
    learner.train()
    trainable = [p for p in learner.parameters() if p.requires_grad]
    # add-ons named after the method (`maml+cml+ht`): the sampler, the aggregator, outer-loss terms (own parameters)
    extras = addons.build(run, learner, datasets.input_shape(run.dataset, run.data_dir, run.dataset_args),
                          1 if learner.task_type == "regression" else run.ways)
    extras.terms.to(device)
    # Baselines have nothing to meta-train: 0 iterations, no optimizer (Adam rejects an empty parameter list);
    # model.pt, train_log.csv and config.yaml are still written, with one validation of the initial weights.
    total = tr["iterations"] if learner.meta_trainable and trainable else 0
    if total == 0 and tr["iterations"] > 0:
        log.info("%s has no meta-parameters to train: skipping the %d configured iterations", run.method,
                 tr["iterations"])
    # one Adam: the method's own groups (MTL: scaling/shifting at its own lr) + one per outer-loss term at its own
    # lr (Adam is per-parameter: the same as an Adam each)
    groups = learner.param_groups(tr["meta_lr"]) + [{"params": list(t.parameters()), "lr": t.lr} for t in extras.terms]
    optimizer = torch.optim.Adam(groups, lr=tr["meta_lr"]) if total else None
    scheduler = make_scheduler(learner, optimizer, total, tr, run.method) if optimizer is not None else None
    # meta-training episodes may have more ways than the test (train.ways, e.g. ProtoNet's 60-way Omniglot episodes)
    sampler = extras.make_sampler(datasets.episodes(run.dataset, run.dataset_args, run.data_dir, "train",
                                                    tr.get("ways", run.ways), run.shots, tr["queries"], run.seed))
    keep = int(tr.get("ensemble", 1))          # checkpoints kept for a test-time ensemble (the best `keep`)
    log_fields = LOG_FIELDS + [f"{t.name}_loss" for t in extras.terms]
    diag_every = int(tr.get("diagnostics_every") or 0)     # gradient diagnostics every N iterations (0: never)
    diag_fields = (["grad_norm_features"] + [f"{t.name}_{k}" for t in extras.terms
                                            for k in ("grad_norm_features", "cos_features")]) if diag_every else []
    log_fields += diag_fields
    val_eps = _val_episodes(run)
    if datasets.get(run.dataset).graph:
        # a test graph with too few drawable labels for the ways would fail only at evaluation, after the whole
        # training: refuse now (a small split: cheap to check, unlike an image test split)
        datasets.episodes(run.dataset, run.dataset_args, run.data_dir, "test", run.ways, run.shots,
                          run.evaluation["queries"], 0)
    out.mkdir(parents=True, exist_ok=True)       # only now: bad data or settings above leave no run folder behind
    better = lambda a, b: improves(a, b, higher_is_better(learner))  # noqa: E731

    start, rows = 0, []
    best: dict[str, Any] = {"iteration": -1, "val_mean": None, "val_ci95": None, "state": None}
    top: list[dict[str, Any]] = []             # the `keep` best validations, best first (ensemble members)
    elapsed_before = 0.0
    state = load_resume_state(ckpt_path, "run", run.to_dict())
    if state is not None:
        learner.load_state_dict(state["learner"])
        extras.terms.load_state_dict(state.get("addons", {}))
        assert optimizer is not None   # checkpoints are only written inside the loop, i.e. when total > 0
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"] if "rng" in state else {"cpu": state["torch_rng"]}, device)
        start, rows, best, elapsed_before = state["iteration"], state["rows"], state["best"], state["elapsed_s"]
        top = state.get("top", [])
        log.info("resuming %s from iteration %d", out, start)

    t0 = time.perf_counter() - elapsed_before
    if progress is None:
        progress = True
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"{run.method} {run.dataset} "
               f"{run.ways}w{run.shots}s", file=sys.stderr, disable=not progress,
               mininterval=0.5 if sys.stderr.isatty() else 30.0, dynamic_ncols=True)
    for it in bar:
        learner.set_iteration(it)
        learner.grad_diagnostics = bool(diag_every) and (it + 1) % diag_every == 0
        tasks = [t.to(device) for t in sampler.sample(it, tr["meta_batch"])]
        stats = learner.meta_step(tasks, optimizer, tr.get("grad_clip"), aggregator=extras.aggregator,
                                  terms=list(extras.terms))
        sampler.feedback(tasks, stats.tasks)      # every task's own loss, metric and per-class accuracy
        skipped = int(stats.get("skipped", 0))
        if skipped:
            n_skipped = sum(int(r.get("skipped") or 0) for r in rows) + 1
            if n_skipped == 1 or n_skipped % 100 == 0:
                log.warning("iteration %d: non-finite meta-gradient (an inner loop diverged), update skipped "
                            "(%d skipped so far)", it + 1, n_skipped)
        row = {"iteration": it + 1, "meta_loss": stats["loss"], "meta_metric": stats["metric"], "val_mean": "",
               "val_ci95": "", "val_inner_loss": "", "val_inner_loss_var": "", "lr": optimizer.param_groups[0]["lr"],
               "skipped": skipped, "elapsed_s": 0.0, **{f"{t.name}_loss": stats.get(f"{t.name}_loss", "")
                                                         for t in extras.terms},
               **{k: stats.get(k, "") for k in diag_fields}}
        if scheduler is not None:
            scheduler.step()
        if (it + 1) % tr["val_every"] == 0 or it + 1 == total:
            vm, vc, il, iv = validate(learner, val_eps, tr["val_episodes"], learner.eval_inner_steps, device)
            row.update(val_mean=vm, val_ci95=vc, val_inner_loss=il, val_inner_loss_var=iv)
            if best["val_mean"] is None or better(vm, best["val_mean"]):
                best = {"iteration": it + 1, "val_mean": vm, "val_ci95": vc,
                        "state": {k: v.detach().cpu().clone() for k, v in learner.state_dict().items()}}
            if keep > 1:
                top = keep_best(top, {"iteration": it + 1, "val_mean": vm, "state": best["state"]
                                      if best["iteration"] == it + 1 else
                                      {k: v.detach().cpu().clone() for k, v in learner.state_dict().items()}},
                                keep, higher_is_better(learner))
            bar.set_postfix(loss=f"{stats['loss']:.3f}", val=f"{vm:.3f}")
            log.info("iter %d loss %.4f train %.3f val %.3f +- %.3f", it + 1, stats["loss"], stats["metric"], vm, vc)
            if math.isnan(vm):
                log.warning("validation score is NaN at iteration %d: the inner loop diverges on some validation "
                            "episodes (too many eval_inner_steps for the learned step sizes?)", it + 1)
        row["elapsed_s"] = round(time.perf_counter() - t0, 3)
        rows.append(row)
        if (it + 1) % tr["checkpoint_every"] == 0 and it + 1 < total:
            with atomic_path(ckpt_path) as tmp:
                torch.save({"run": run.to_dict(), "iteration": it + 1, "learner": learner.state_dict(),
                            "addons": extras.terms.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict() if scheduler is not None else None, "sampler": sampler.state_dict(),
                            "rng": rng_state(device), "rows": rows, "best": best, "top": top,
                            "elapsed_s": time.perf_counter() - t0}, tmp)
    bar.close()
    if total == 0:
        vm, vc, il, iv = validate(learner, val_eps, tr["val_episodes"], learner.eval_inner_steps, device)
        best = {"iteration": 0, "val_mean": vm, "val_ci95": vc, "state": None}
        rows = [{"iteration": 0, "meta_loss": "", "meta_metric": "", "val_mean": vm, "val_ci95": vc,
                 "val_inner_loss": il, "val_inner_loss_var": iv, "lr": "",
                 "elapsed_s": round(time.perf_counter() - t0, 3)}]
        log.info("validation of the initial weights: %.3f +- %.3f", vm, vc)
    wall = time.perf_counter() - t0

    last_state = {k: v.detach().cpu() for k, v in learner.state_dict().items()}
    final = {"run": run.to_dict(), "state": best["state"] if best["state"] is not None else last_state,
             "best_iteration": best["iteration"], "val_mean": best["val_mean"], "val_ci95": best["val_ci95"],
             "iterations": total, "wall_time_s": wall, "peak_memory_mb": peak_memory_mb(),
             "git_revision": git_revision(), "torch_version": str(torch.__version__), "device": device,
             "numerics": numerics.describe(),
             # the input normalisation the model was trained with (cross-domain evaluation applies it to the target)
             "normalization": datasets.normalization(run.dataset, run.data_dir),
             "input_shape": list(datasets.input_shape(run.dataset, run.data_dir, run.dataset_args))}
    if len(top) > 1:
        # MAML++'s test-time ensemble: evaluation averages these members' query logits (`state` is the first)
        final["ensemble"] = [{"iteration": t["iteration"], "val_mean": t["val_mean"], "state": t["state"]}
                             for t in top]
    if sampler.state_dict():
        final["sampler"] = sampler.state_dict()      # e.g. which meta-iterations the hard-task sampler made hard
    if len(extras.terms):
        # the outer-loss terms' last weights (e.g. CML's co-learner), for analyses; evaluation never loads them
        final["addons"] = {k: v.detach().cpu() for k, v in extras.terms.state_dict().items()}
    write_outputs(out / "model.pt", final, log_fields, rows, run.to_dict(), wall, ckpt_path,
                  best_iteration=best["iteration"], best_val_mean=best["val_mean"],
                  skipped_steps=sum(int(r.get("skipped") or 0) for r in rows))
    log.info("done %s in %.1fs (best val %.4f at iteration %d)", out, wall, best["val_mean"] or float("nan"),
             best["iteration"])
    return out / "model.pt"
