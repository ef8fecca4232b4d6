"""Meta-training (method-agnostic): sample a meta-batch -> the outer step -> log / validate / checkpoint.

Resumable (metarepro.loop): `checkpoints/last.pt` in the run dir holds the full state every `checkpoint_every`
iterations (weights, optimizer, sampler, best-so-far, log, RNG). Because meta-batch i is a pure function of
(seed, i), a killed run restarted from its checkpoint ends with the same weights as an uninterrupted one.
Checkpoint selection: the weights with the best validation score (fixed validation episodes).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import addons, numerics
from . import data as datasets
from .addons.outer import meta_step
from .config import RunConfig
from .formats import MODEL_FILE, TRAIN_LOG_FIELDS
from .loop import Loop, LoopResult, improves, keep_best
from .methods.base import MetaLearner
from .runtime import build_learner, load_backbone, load_learner, write_outputs
from .stats import mean_ci95
from .utils import MetareproError, git_revision, peak_memory_mb, resolve_device, set_determinism, set_threads

log = logging.getLogger("metarepro.train")

__all__ = ["metatrain", "validate", "load_learner", "build_learner", "improves", "keep_best", "LOG_FIELDS"]

LOG_FIELDS = list(TRAIN_LOG_FIELDS)   # train_log.csv's columns (metarepro.formats), before the add-on terms'
VAL_SPLIT = "val"


def higher_is_better(learner: MetaLearner) -> bool:
    return learner.task_type == "classification"


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


def _episodes(run: RunConfig, split: str, ways: int, queries: int, seed: int):
    return datasets.episodes(run.dataset, run.dataset_args, run.data_dir, split, ways, run.shots, queries, seed)


class MetaTraining:
    """One run's meta-training as a job of metarepro.loop: the learner and its add-ons, the meta-optimizer and
    schedule, the task sampler and the validation episodes, all built and checked before the run folder exists."""

    counter, loss_key = "iteration", "meta_loss"

    def __init__(self, run: RunConfig, device: str) -> None:
        self.run, self.device, tr = run, device, run.train
        self.tr = tr
        learner = self.learner = build_learner(run).to(device)
        if "stack_tasks" in tr and getattr(learner.model, "task_batched", False):
            learner.model.stack_tasks = bool(tr["stack_tasks"])   # run a meta-batch as one stacked task, or loop
        if learner.needs_pretrained:
            if not run.pretrained:
                raise MetareproError(f"method {run.method!r} starts from a pretrained backbone, but the run config "
                                     "has no 'pretrained' path (metarepro.config.resolve_run fills it in)")
            load_backbone(learner.model, run.pretrained, run.backbone, run.backbone_args)
        learner.train()
        trainable = [p for p in learner.parameters() if p.requires_grad]
        # add-ons named after the method (`maml+cml+ht`): the sampler, the aggregator, outer-loss terms (own params)
        self.extras = addons.build(run, learner, datasets.input_shape(run.dataset, run.data_dir, run.dataset_args),
                                   1 if learner.task_type == "regression" else run.ways)
        self.extras.terms.to(device)
        # Baselines have nothing to meta-train: 0 iterations, no optimizer (Adam rejects an empty parameter list);
        # model.pt, train_log.csv and config.yaml are still written, with one validation of the initial weights.
        self.total = tr["iterations"] if learner.meta_trainable and trainable else 0
        if self.total == 0 and tr["iterations"] > 0:
            log.info("%s has no meta-parameters to train: skipping the %d configured iterations", run.method,
                     tr["iterations"])
        # one Adam: the method's own groups (MTL: scaling/shifting at its own lr) + one per outer-loss term at its
        # own lr (Adam is per-parameter: the same as an Adam each)
        groups = learner.param_groups(tr["meta_lr"]) + [{"params": list(t.parameters()), "lr": t.lr}
                                                        for t in self.extras.terms]
        self.optimizer = torch.optim.Adam(groups, lr=tr["meta_lr"]) if self.total else None
        self.scheduler = (make_scheduler(learner, self.optimizer, self.total, tr, run.method)
                          if self.optimizer is not None else None)
        # meta-training episodes may have more ways than the test (train.ways, e.g. ProtoNet's 60-way Omniglot)
        self.sampler = self.extras.make_sampler(_episodes(run, "train", tr.get("ways", run.ways), tr["queries"],
                                                          run.seed))
        self.diag_every = int(tr.get("diagnostics_every") or 0)     # gradient diagnostics every N iterations
        terms = self.extras.terms
        self.diag_fields = (["grad_norm_features"] + [f"{t.name}_{k}" for t in terms for k in
                                                      ("grad_norm_features", "cos_features")]
                            if self.diag_every else [])
        self.log_fields = LOG_FIELDS + [f"{t.name}_loss" for t in terms] + self.diag_fields
        ev = run.evaluation
        self.val_eps = _episodes(run, VAL_SPLIT, run.ways, ev["queries"],
                                 datasets.eval_seed(ev["seed"], run.dataset, VAL_SPLIT, run.ways, run.shots))
        if datasets.get(run.dataset).graph:
            # a test graph with too few drawable labels for the ways would fail only at evaluation, after the
            # whole training: refuse now (a small split: cheap to check, unlike an image test split)
            _episodes(run, "test", run.ways, ev["queries"], 0)
        self.n_skipped = 0

    def step(self, it: int, validating: bool) -> dict:
        learner, tr, terms = self.learner, self.tr, list(self.extras.terms)
        learner.set_iteration(it)
        diagnostics = bool(self.diag_every) and (it + 1) % self.diag_every == 0
        tasks = [t.to(self.device) for t in self.sampler.sample(it, tr["meta_batch"])]
        stats = meta_step(learner, tasks, self.optimizer, tr.get("grad_clip"), aggregator=self.extras.aggregator,
                          terms=terms, diagnostics=diagnostics)
        self.sampler.feedback(tasks, stats.tasks)      # every task's own loss, metric and per-class accuracy
        skipped = int(stats.get("skipped", 0))
        if skipped:
            self.n_skipped += 1
            if self.n_skipped == 1 or self.n_skipped % 100 == 0:
                log.warning("iteration %d: non-finite meta-gradient (an inner loop diverged), update skipped "
                            "(%d skipped so far)", it + 1, self.n_skipped)
        row = {"iteration": it + 1, "meta_loss": stats["loss"], "meta_metric": stats["metric"], "val_mean": "",
               "val_ci95": "", "val_inner_loss": "", "val_inner_loss_var": "",
               "lr": self.optimizer.param_groups[0]["lr"], "skipped": skipped, "elapsed_s": 0.0,
               **{f"{t.name}_loss": stats.get(f"{t.name}_loss", "") for t in terms},
               **{k: stats.get(k, "") for k in self.diag_fields}}
        if self.scheduler is not None:
            self.scheduler.step()
        return row

    def validate(self) -> tuple[float, float, dict]:
        vm, vc, il, iv = validate(self.learner, self.val_eps, self.tr["val_episodes"], self.learner.eval_inner_steps,
                                  self.device)
        return vm, vc, {"val_inner_loss": il, "val_inner_loss_var": iv}

    def weights(self) -> dict[str, torch.Tensor]:
        return self.learner.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"learner": self.learner.state_dict(), "addons": self.extras.terms.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "sampler": self.sampler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.learner.load_state_dict(state["learner"])
        self.extras.terms.load_state_dict(state.get("addons", {}))
        assert self.optimizer is not None   # checkpoints are only written inside the loop, i.e. when total > 0
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.n_skipped = sum(int(r.get("skipped") or 0) for r in state["rows"])

    def artifact(self, done: LoopResult) -> dict[str, Any]:
        """model.pt's content: the best weights (else the last), what produced them and how inputs were fed."""
        run, best = self.run, done.best
        last = {k: v.detach().cpu() for k, v in self.learner.state_dict().items()}
        final = {"run": run.to_dict(), "state": best["state"] if best["state"] is not None else last,
                 "best_iteration": best["iteration"], "val_mean": best["val_mean"], "val_ci95": best["val_ci95"],
                 "iterations": self.total, "wall_time_s": done.wall, "peak_memory_mb": peak_memory_mb(),
                 "git_revision": git_revision(), "torch_version": str(torch.__version__), "device": self.device,
                 "numerics": numerics.describe(),
                 # the input normalisation the model was trained with (cross-domain evaluation applies it)
                 "normalization": datasets.normalization(run.dataset, run.data_dir),
                 "input_shape": list(datasets.input_shape(run.dataset, run.data_dir, run.dataset_args))}
        if len(done.top) > 1:
            # MAML++'s test-time ensemble: evaluation averages these members' query logits (`state` is the first)
            final["ensemble"] = [{"iteration": t["iteration"], "val_mean": t["val_mean"], "state": t["state"]}
                                 for t in done.top]
        if self.sampler.state_dict():
            final["sampler"] = self.sampler.state_dict()   # e.g. which meta-iterations the hard-task sampler made hard
        if len(self.extras.terms):
            # the outer-loss terms' last weights (e.g. CML's co-learner), for analyses; evaluation never loads them
            final["addons"] = {k: v.detach().cpu() for k, v in self.extras.terms.state_dict().items()}
        return final


def metatrain(run: RunConfig, threads: int = 1, progress: bool | None = None, device: str = "auto") -> Path:
    """Meta-train one run into run.run_dir: model.pt, train_log.csv, config.yaml (all written atomically)."""
    set_threads(threads)
    device = resolve_device(device)
    set_determinism(bool(run.train.get("deterministic", False)) or numerics.strict_requested())
    job = MetaTraining(run, device)
    out = Path(run.run_dir)
    out.mkdir(parents=True, exist_ok=True)       # only now: bad data or settings above leave no run folder behind
    loop = Loop(out, "run", run.to_dict(), job.total, run.train["val_every"], run.train["checkpoint_every"],
                f"{run.method} {run.dataset} {run.ways}w{run.shots}s", higher=higher_is_better(job.learner),
                keep=int(run.train.get("ensemble", 1)), progress=progress is not False, device=device, logger=log)
    done = loop.run(job)
    write_outputs(out / MODEL_FILE, job.artifact(done), job.log_fields, done.rows, run.to_dict(), done.wall,
                  loop.checkpoint, best_iteration=done.best["iteration"], best_val_mean=done.best["val_mean"],
                  skipped_steps=sum(int(r.get("skipped") or 0) for r in done.rows))
    log.info("done %s in %.1fs (best val %.4f at iteration %d)", out, done.wall,
             done.best["val_mean"] or float("nan"), done.best["iteration"])
    return out / MODEL_FILE
