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
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import data as datasets
from . import models, numerics
from .config import PretrainConfig
from .formats import PRETRAIN_LOG_FIELDS
from .data.sampling import resize_center_crop
from .data.store import ImageSplit
from .methods.protonet import class_means
from .loop import Loop, LoopResult
from .runtime import load_backbone, write_outputs
from .stats import mean_ci95
from .utils import MetareproError, git_revision, peak_memory_mb, resolve_device, set_determinism, set_threads

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


class Pretraining:
    """One pretraining stage as a job of metarepro.loop: the classifier, its optimizer, the mini-batch schedule
    and the validation episodes; loss and accuracy are averaged over the LOG_EVERY steps of each log row."""

    counter, loss_key = "step", "loss"

    def __init__(self, cfg: PretrainConfig, device: str) -> None:
        self.cfg, self.device, pt = cfg, device, cfg.pretrain
        self.pt = pt
        spec = datasets.get(cfg.dataset)
        split = datasets.cached_split(str(Path(cfg.data_dir)), "train")
        stats = datasets.train_stats(str(Path(cfg.data_dir))) if spec.normalize else (None, None)
        self.images = TrainImages(split, bool(cfg.dataset_args.get("rotations", False)), *stats,
                                  input_crop=cfg.dataset_args.get("input"))
        self.schedule = BatchSchedule(self.images.size, pt["batch_size"], cfg.seed)
        self.total = max(1, math.ceil(pt["epochs"] * self.images.size / pt["batch_size"]))
        self.model = build_classifier(cfg, self.images.n_classes).to(device)
        if pt["optimizer"] == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                self.model.parameters(), lr=pt["lr"], momentum=pt["momentum"], weight_decay=pt["weight_decay"],
                nesterov=bool(pt.get("nesterov", False)))
        else:
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=pt["lr"], weight_decay=pt["weight_decay"])
        val_seed = datasets.eval_seed(cfg.val_seed, cfg.dataset, "val", pt["val_ways"], pt["val_shots"])
        self.val_eps = datasets.episodes(cfg.dataset, cfg.dataset_args, cfg.data_dir, "val", pt["val_ways"],
                                         pt["val_shots"], pt["val_queries"], val_seed)
        self.acc = [0.0, 0.0, 0]      # loss sum, accuracy sum, steps since the last log row
        self.model.train()

    def step(self, step: int, validating: bool) -> dict | None:
        pt, model, optimizer, per_epoch = self.pt, self.model, self.optimizer, self.schedule.steps_per_epoch
        if pt.get("lr_step_epochs"):
            # step decay by epochs (MTL's StepLR(30, 0.2)); a function of the step, so a resumed job agrees
            lr = pt["lr"] * pt.get("lr_gamma", 0.1) ** int(step / per_epoch // pt["lr_step_epochs"])
            for group in optimizer.param_groups:
                group["lr"] = lr
        x, y = self.images.batch(self.schedule.indices(step))
        x, y = x.to(self.device), y.to(self.device)
        out_logits = model(x)
        loss = F.cross_entropy(out_logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        acc = self.acc
        acc[0] += float(loss.detach())
        acc[1] += float((out_logits.detach().argmax(1) == y).float().mean()) * 100.0
        acc[2] += 1
        done = step + 1
        if done % LOG_EVERY and not validating:
            return None
        row = {"step": done, "epoch": round(done / per_epoch, 4), "loss": acc[0] / acc[2],
               "accuracy": acc[1] / acc[2], "val_mean": "", "val_ci95": "", "lr": optimizer.param_groups[0]["lr"],
               "elapsed_s": 0.0}
        self.acc = [0.0, 0.0, 0]
        return row

    def validate(self) -> tuple[float, float, dict]:
        self.model.eval()
        vm, vc = fewshot_accuracy(self.model.features, self.val_eps, self.pt["val_episodes"], self.device)
        self.model.train()
        return vm, vc, {}

    def weights(self) -> dict[str, Tensor]:
        return self.model.state_dict()

    def state_dict(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "acc": self.acc}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.acc = state["acc"]

    def artifact(self, done: LoopResult) -> dict[str, Any]:
        """backbone.pt's content: the features and head of the best validation step (else the last)."""
        cfg, best = self.cfg, done.best
        weights = best["state"] if best["state"] is not None else {k: v.detach().cpu() for k, v in
                                                                   self.model.state_dict().items()}
        return {"pretrain": cfg.to_dict(), "backbone": cfg.backbone, "backbone_args": dict(cfg.backbone_args),
                "n_classes": self.images.n_classes,
                "features": {k[len("features."):]: v for k, v in weights.items() if k.startswith("features.")},
                "head": {k[len("head."):]: v for k, v in weights.items() if k.startswith("head.")},
                "best_step": best["step"], "val_mean": best["val_mean"], "val_ci95": best["val_ci95"],
                "steps": self.total, "wall_time_s": done.wall, "peak_memory_mb": peak_memory_mb(),
                "git_revision": git_revision(), "torch_version": str(torch.__version__), "device": self.device}


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
    job = Pretraining(cfg, device)
    pt = cfg.pretrain
    loop = Loop(out, "config", cfg.to_dict(), job.total, pt["val_every"], pt["checkpoint_every"],
                f"pretrain {cfg.backbone} {cfg.dataset}", progress=progress, device=device, logger=log)
    done = loop.run(job)
    write_outputs(out / "backbone.pt", job.artifact(done), LOG_FIELDS, done.rows, cfg.to_dict(), done.wall,
                  loop.checkpoint, steps=job.total, n_classes=job.images.n_classes, best_step=done.best["step"],
                  best_val_mean=done.best["val_mean"])
    log.info("done %s in %.1fs (best val %.2f at step %d of %d)", out, done.wall,
             done.best["val_mean"] or float("nan"), done.best["step"], job.total)
    return out / "backbone.pt"
