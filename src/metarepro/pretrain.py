"""Pretraining stage: an ordinary classifier (backbone + linear head over ALL meta-train classes) trained with
mini-batch Adam or SGD on the meta-train images. Its features are the starting point of the baselines of
Ravi & Larochelle 2017 ("Optimization as a Model for Few-Shot Learning": Baseline-finetune and
Baseline-nearest-neighbor) and of MTL's first stage (Sun et al. 2019, "Meta-Transfer Learning for Few-Shot
Learning"). Default optimisation settings follow Chen et al. 2019 ("A Closer Look at Few-shot Classification").

Output: {results_dir}/{dataset}/pretrain/{backbone label}/seed{seed}/ with backbone.pt (features and head
state of the best validation step), train_log.csv and config.yaml. The backbone label (config.backbone_label,
e.g. conv4-64) carries the backbone args, so two widths of one backbone never share a directory.
Classes: with Omniglot's `rotations`, class c*4+r is class c rotated by r*90 degrees, exactly as the episode
sampler defines meta-train classes. Mini-batch i is a pure function of (seed, i) (epoch e = i // steps per epoch
is a seeded permutation, the incomplete last batch is dropped), so a killed run resumed from
checkpoints/last.pt ends with the weights an uninterrupted run ends with.
Validation (also the checkpoint selection): cosine nearest-centroid accuracy of the features on fixed val
episodes (the nearest-neighbour baseline's classifier for 1-shot), drawn with the evaluation seed.
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
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from . import data as datasets
from . import models, numerics
from .config import PretrainConfig
from .formats import PRETRAIN_LOG_FIELDS
from .data.episodes import resize_center_crop
from .data.store import ImageSplit
from .methods.protonet import class_means
from .runtime import load_backbone, load_resume_state, write_outputs
from .stats import mean_ci95
from .utils import (MetareproError, atomic_path, git_revision, peak_memory_mb, resolve_device, rng_state,
                    set_determinism, set_rng_state, set_threads)

log = logging.getLogger("metarepro.pretrain")

__all__ = ["pretrain", "load_backbone", "build_classifier", "fewshot_accuracy", "LOG_FIELDS"]

LOG_FIELDS = list(PRETRAIN_LOG_FIELDS)   # its train_log.csv's columns (metarepro.formats)
LOG_EVERY = 50      # steps per train_log.csv row (loss and accuracy are means over those steps)


class TrainImages:
    """The meta-train split as a flat classification set of len(images) * rotations (image, rotation) pairs."""

    def __init__(self, split: ImageSplit, rotations: bool, mean: tuple[float, ...] | None,
                 std: tuple[float, ...] | None, input_crop: dict | None = None) -> None:
        self.split = split
        self.input_crop = dict(input_crop) if input_crop else None    # the episodes' transform (no augmentation)
        self.n_rot = 4 if rotations else 1
        self.size = len(split.images) * self.n_rot
        self.n_classes = split.n_classes * self.n_rot
        c = split.images.shape[-1]
        self.mean = torch.tensor(mean if mean is not None else [0.0] * c).view(1, c, 1, 1)
        self.std = torch.tensor(std if std is not None else [1.0] * c).view(1, c, 1, 1)

    def batch(self, index: np.ndarray) -> tuple[Tensor, Tensor]:
        """Items `index` (B,) -> images (B, C, H, W) normalised as the episode sampler does, labels (B,)."""
        img, rot = index // self.n_rot, index % self.n_rot
        imgs = self.split.images[img]                               # (B, H, W, C) uint8
        if self.n_rot > 1:   # same direction as ImageEpisodes (axes H, W)
            imgs = np.stack([np.rot90(im, k=int(r), axes=(0, 1)) for im, r in zip(imgs, rot)])
        x = torch.from_numpy(np.ascontiguousarray(imgs)).float().div_(255.0).permute(0, 3, 1, 2)  # (B, C, H, W)
        if self.input_crop is not None:
            x = resize_center_crop(x, **self.input_crop)
        y = torch.from_numpy(self.split.labels[img] * self.n_rot + rot)
        return (x - self.mean) / self.std, y


class BatchSchedule:
    """Mini-batch `step` = slice (step mod steps_per_epoch) of a permutation seeded by (seed, epoch)."""

    def __init__(self, size: int, batch_size: int, seed: int) -> None:
        if batch_size > size:
            raise MetareproError(f"pretrain.batch_size = {batch_size} exceeds the {size} meta-train images")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.steps_per_epoch = size // batch_size                  # the incomplete last batch is dropped
        self._epoch, self._perm = -1, np.empty(0, dtype=np.int64)

    def indices(self, step: int) -> np.ndarray:
        epoch, j = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.size)
        return self._perm[j * self.batch_size:(j + 1) * self.batch_size]


def build_classifier(cfg: PretrainConfig, n_classes: int) -> nn.Module:
    torch.manual_seed(cfg.seed)
    return models.build(cfg.backbone, datasets.input_shape(cfg.dataset, cfg.data_dir, cfg.dataset_args), n_classes,
                        **cfg.backbone_args)


def fewshot_accuracy(features: nn.Module, episodes: Any, n: int, device: str) -> tuple[float, float]:
    """Mean and 95% CI of cosine nearest-centroid accuracy (%) of `features` on the first n episodes."""
    scores = []
    with torch.no_grad():
        for i in range(n):
            task = episodes.episode(i).to(device)
            ways = int(task.y_support.max()) + 1
            protos = F.normalize(class_means(features(task.x_support), task.y_support, ways), dim=1)
            pred = (F.normalize(features(task.x_query), dim=1) @ protos.t()).argmax(1)
            scores.append(float((pred == task.y_query).float().mean()) * 100.0)
    return mean_ci95(scores)


def pretrain(cfg: PretrainConfig, threads: int = 1, progress: bool = True, device: str = "auto") -> Path:
    """Train the classifier of `cfg` into cfg.out_dir: backbone.pt, train_log.csv, config.yaml (atomically)."""
    if datasets.get(cfg.dataset).generated:
        raise MetareproError(f"dataset {cfg.dataset!r} is generated on the fly: it has no classes to pretrain on")
    set_threads(threads)
    if numerics.strict_requested():      # strict numerics: deterministic algorithms here too, as in meta-training
        set_determinism(True)
    device = resolve_device(device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = out / "checkpoints" / "last.pt"
    pt = cfg.pretrain
    spec = datasets.get(cfg.dataset)
    split = datasets.cached_split(str(Path(cfg.data_dir)), "train")
    stats = datasets.train_stats(str(Path(cfg.data_dir))) if spec.normalize else (None, None)
    images = TrainImages(split, bool(cfg.dataset_args.get("rotations", False)), *stats,
                         input_crop=cfg.dataset_args.get("input"))
    schedule = BatchSchedule(images.size, pt["batch_size"], cfg.seed)
    total = max(1, math.ceil(pt["epochs"] * images.size / pt["batch_size"]))
    model = build_classifier(cfg, images.n_classes).to(device)
    if pt["optimizer"] == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=pt["lr"], momentum=pt["momentum"],
                                                           weight_decay=pt["weight_decay"],
                                                           nesterov=bool(pt.get("nesterov", False)))
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=pt["lr"], weight_decay=pt["weight_decay"])
    val_seed = datasets.eval_seed(cfg.val_seed, cfg.dataset, "val", pt["val_ways"], pt["val_shots"])
    val_eps = datasets.episodes(cfg.dataset, cfg.dataset_args, cfg.data_dir, "val", pt["val_ways"], pt["val_shots"],
                                pt["val_queries"], val_seed)

    start, rows, acc, elapsed_before = 0, [], [0.0, 0.0, 0], 0.0
    best: dict[str, Any] = {"step": -1, "val_mean": None, "val_ci95": None, "state": None}
    state = load_resume_state(ckpt_path, "config", cfg.to_dict())
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"] if "rng" in state else {"cpu": state["torch_rng"]}, device)
        start, rows, acc, best, elapsed_before = (state["step"], state["rows"], state["acc"], state["best"],
                                                  state["elapsed_s"])
        log.info("resuming %s from step %d", out, start)

    t0 = time.perf_counter() - elapsed_before
    bar = tqdm(range(start, total), initial=start, total=total, desc=f"pretrain {cfg.backbone} {cfg.dataset}",
               file=sys.stderr, disable=not progress, mininterval=0.5 if sys.stderr.isatty() else 30.0,
               dynamic_ncols=True)
    model.train()
    for step in bar:
        if pt.get("lr_step_epochs"):
            # step decay by epochs (MTL's StepLR(30, 0.2)); a function of the step, so a resumed job agrees
            lr = pt["lr"] * pt.get("lr_gamma", 0.1) ** int(step / schedule.steps_per_epoch // pt["lr_step_epochs"])
            for group in optimizer.param_groups:
                group["lr"] = lr
        x, y = images.batch(schedule.indices(step))
        x, y = x.to(device), y.to(device)
        out_logits = model(x)
        loss = F.cross_entropy(out_logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        acc[0] += float(loss.detach())
        acc[1] += float((out_logits.detach().argmax(1) == y).float().mean()) * 100.0
        acc[2] += 1
        done = step + 1
        validate = done % pt["val_every"] == 0 or done == total
        if done % LOG_EVERY == 0 or validate:
            row = {"step": done, "epoch": round(done / schedule.steps_per_epoch, 4), "loss": acc[0] / acc[2],
                   "accuracy": acc[1] / acc[2], "val_mean": "", "val_ci95": "", "lr": optimizer.param_groups[0]["lr"],
                   "elapsed_s": 0.0}
            acc = [0.0, 0.0, 0]
            if validate:
                model.eval()
                vm, vc = fewshot_accuracy(model.features, val_eps, pt["val_episodes"], device)
                model.train()
                row["val_mean"], row["val_ci95"] = vm, vc
                if best["val_mean"] is None or vm > best["val_mean"]:
                    best = {"step": done, "val_mean": vm, "val_ci95": vc,
                            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
                bar.set_postfix(loss=f"{row['loss']:.3f}", val=f"{vm:.2f}")
                log.info("step %d loss %.4f train acc %.2f val %.2f +- %.2f", done, row["loss"], row["accuracy"],
                         vm, vc)
            row["elapsed_s"] = round(time.perf_counter() - t0, 3)
            rows.append(row)
        if done % pt["checkpoint_every"] == 0 and done < total:
            with atomic_path(ckpt_path) as tmp:
                torch.save({"config": cfg.to_dict(), "step": done, "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(), "rng": rng_state(device), "rows": rows,
                            "acc": acc, "best": best, "elapsed_s": time.perf_counter() - t0}, tmp)
    bar.close()
    wall = time.perf_counter() - t0

    weights = best["state"] if best["state"] is not None else {k: v.detach().cpu() for k, v in
                                                               model.state_dict().items()}
    final = {"pretrain": cfg.to_dict(), "backbone": cfg.backbone, "backbone_args": dict(cfg.backbone_args),
             "n_classes": images.n_classes,
             "features": {k[len("features."):]: v for k, v in weights.items() if k.startswith("features.")},
             "head": {k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")},
             "best_step": best["step"], "val_mean": best["val_mean"], "val_ci95": best["val_ci95"], "steps": total,
             "wall_time_s": wall, "peak_memory_mb": peak_memory_mb(), "git_revision": git_revision(),
             "torch_version": str(torch.__version__), "device": device}
    write_outputs(out / "backbone.pt", final, LOG_FIELDS, rows, cfg.to_dict(), wall, ckpt_path, steps=total,
                  n_classes=images.n_classes, best_step=best["step"], best_val_mean=best["val_mean"])
    log.info("done %s in %.1fs (best val %.2f at step %d of %d)", out, wall, best["val_mean"] or float("nan"),
             best["step"], total)
    return out / "backbone.pt"
