"""The skeleton that pretraining, meta-training and evaluation share, so that each entry point reads as its own
steps only: the progress bar, and for the two training stages the loop itself (resume from `checkpoints/last.pt`,
one update per step, validation on a cadence with the best weights kept, checkpoints, elapsed time per log row).

A training stage hands `Loop.run` a job (`TrainingJob`): what one step does, how it validates and what its
resumable state is. The loop owns everything around it. Outputs are written by metarepro.runtime.write_outputs
(atomically, the artifact last); file formats live in metarepro.formats.

Resume: the checkpoint holds the job's state (`TrainingJob.state_dict`, flat), the RNG state, the log rows so far,
the best (and the `keep` best) validations and the elapsed time. Because each job's step i is a pure function of
(seed, i), a killed run restarted from its checkpoint ends with the weights an uninterrupted one ends with.
"""
from __future__ import annotations

import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Protocol

import torch
from tqdm.auto import tqdm

from .runtime import load_resume_state
from .utils import atomic_path, rng_state, set_rng_state

log = logging.getLogger("metarepro.loop")


def progress_bar(items: Iterable, desc: str, progress: bool = True, **kwargs: Any) -> Any:
    """tqdm on stderr: redrawn every 0.5 s on a terminal, every 30 s into a log file (Snakemake's logs)."""
    return tqdm(items, desc=desc, file=sys.stderr, disable=not progress,
                mininterval=0.5 if sys.stderr.isatty() else 30.0, dynamic_ncols=True, **kwargs)


def improves(new: float, best: float, higher: bool) -> bool:
    """Whether validation score `new` beats `best`. A NaN score (an inner loop that diverges on some validation
    episode) never counts as an improvement, and any finite score beats a NaN best."""
    if math.isnan(new):
        return False
    return math.isnan(best) or (new > best if higher else new < best)


def keep_best(top: list[dict], entry: dict, keep: int, higher: bool) -> list[dict]:
    """The `keep` best validation entries (best first) after adding `entry`; NaN scores never enter; ties keep
    the earlier checkpoint first."""
    if math.isnan(entry["val_mean"]):
        return top
    ranked = sorted(top + [entry], key=lambda e: (-e["val_mean"] if higher else e["val_mean"], e["iteration"]))
    return ranked[:keep]


class TrainingJob(Protocol):
    """What a training stage gives the loop."""

    counter: str        # the log's step column and the checkpoint's position key: "iteration" or "step"
    loss_key: str       # the log row's training loss, shown on the progress bar

    def step(self, i: int, validating: bool) -> dict | None:
        """One update (0-based step i); its log row, or None when this step is not logged (never when
        `validating`: the loop adds the validation to the row)."""

    def validate(self) -> tuple[float, float, dict]:
        """(mean, 95% CI, further row fields) on the fixed validation episodes."""

    def weights(self) -> dict[str, torch.Tensor]:
        """The model's state dict (the loop keeps detached CPU copies of the best)."""

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs besides the loop's own state: weights, optimizer, sampler, ..."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from a checkpoint (the whole checkpoint: the job's keys and the loop's)."""


@dataclass
class LoopResult:
    rows: list[dict]
    best: dict[str, Any]            # {counter, val_mean, val_ci95, state}; state None when never validated better
    top: list[dict]                 # the `keep` best validations, best first (keep > 1 only)
    wall: float                     # seconds, including the time before a resume


@dataclass
class Loop:
    """Run `total` steps of a job in `out` (its run folder), validating every `val_every` steps and after the last,
    checkpointing every `checkpoint_every`. `config_key`/`config`: the config the checkpoint belongs to (a changed
    config discards it). `higher`: whether a larger validation score is better. `keep` > 1: also keep the `keep`
    best validations' weights (a test-time ensemble). With 0 steps, one validation of the initial weights."""
    out: Path
    config_key: str
    config: dict
    total: int
    val_every: int
    checkpoint_every: int
    desc: str
    higher: bool = True
    keep: int = 1
    progress: bool = True
    device: str = "cpu"
    logger: logging.Logger = log       # the stage's own logger (metarepro.train, metarepro.pretrain)

    @property
    def checkpoint(self) -> Path:
        return self.out / "checkpoints" / "last.pt"

    def run(self, job: TrainingJob) -> LoopResult:
        c = job.counter
        start, rows, elapsed_before = 0, [], 0.0
        best: dict[str, Any] = {c: -1, "val_mean": None, "val_ci95": None, "state": None}
        top: list[dict[str, Any]] = []
        saved = load_resume_state(self.checkpoint, self.config_key, self.config)
        if saved is not None:
            job.load_state_dict(saved)
            set_rng_state(saved["rng"] if "rng" in saved else {"cpu": saved["torch_rng"]}, self.device)
            start, rows, best, elapsed_before = saved[c], saved["rows"], saved["best"], saved["elapsed_s"]
            top = saved.get("top", [])
            self.logger.info("resuming %s from %s %d", self.out, c, start)
        t0 = time.perf_counter() - elapsed_before
        bar = progress_bar(range(start, self.total), self.desc, self.progress, initial=start, total=self.total)
        for i in bar:
            done = i + 1
            validating = done % self.val_every == 0 or done == self.total
            row = job.step(i, validating)
            if validating:
                assert row is not None, "a validation step is always logged"
                best, top = self._validate(job, row, done, best, top)
                bar.set_postfix(loss=f"{row[job.loss_key]:.3f}", val=f"{row['val_mean']:.3f}")
            if row is not None:
                row["elapsed_s"] = round(time.perf_counter() - t0, 3)
                rows.append(row)
            if done % self.checkpoint_every == 0 and done < self.total:
                with atomic_path(self.checkpoint) as tmp:
                    torch.save({self.config_key: self.config, c: done, **job.state_dict(),
                                "rng": rng_state(self.device), "rows": rows, "best": best, "top": top,
                                "elapsed_s": time.perf_counter() - t0}, tmp)
        bar.close()
        if self.total == 0:
            vm, vc, extra = job.validate()
            best = {c: 0, "val_mean": vm, "val_ci95": vc, "state": None}
            rows = [{c: 0, "val_mean": vm, "val_ci95": vc, **extra, "elapsed_s": round(time.perf_counter() - t0, 3)}]
            self.logger.info("validation of the initial weights: %.3f +- %.3f", vm, vc)
        return LoopResult(rows, best, top, time.perf_counter() - t0)

    def _validate(self, job: TrainingJob, row: dict, done: int, best: dict, top: list) -> tuple[dict, list]:
        c = job.counter
        vm, vc, extra = job.validate()
        row.update(val_mean=vm, val_ci95=vc, **extra)
        if best["val_mean"] is None or improves(vm, best["val_mean"], self.higher):
            best = {c: done, "val_mean": vm, "val_ci95": vc, "state": _copy(job.weights())}
        if self.keep > 1:
            weights = best["state"] if best[c] == done else _copy(job.weights())
            top = keep_best(top, {"iteration": done, "val_mean": vm, "state": weights}, self.keep, self.higher)
        self.logger.info("%s %d loss %.4f val %.4f +- %.4f", c, done, row[job.loss_key], vm, vc)
        if math.isnan(vm):
            self.logger.warning("validation score is NaN at %s %d: the inner loop diverges on some validation "
                                "episodes (too many eval_inner_steps for the learned step sizes?)", c, done)
        return best, top


def _copy(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}
