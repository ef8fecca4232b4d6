"""What the training, pretraining and evaluation stages share: building a run's learner, resume checkpoints,
writing a finished job's outputs, and loading trained weights (model.pt, a pretrain stage's backbone.pt).

Kept apart from metarepro.train and metarepro.pretrain so that neither imports the other and evaluation imports
neither.
"""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import data as datasets
from . import methods, models
from .config import RunConfig
from .formats import CONFIG_FILE, MODEL_KEYS, TRAIN_LOG
from .methods.base import MetaLearner
from .utils import MetareproError, atomic_path, write_text_atomic, write_yaml_atomic

log = logging.getLogger("metarepro.runtime")


def build_learner(run: RunConfig) -> MetaLearner:
    """Backbone + method for a run; initial weights are a function of the run seed only."""
    spec = datasets.get(run.dataset)
    torch.manual_seed(run.seed)
    out_dim = 1 if spec.task_type == "regression" else run.ways
    model = models.build(run.backbone, datasets.input_shape(run.dataset, run.data_dir, run.dataset_args), out_dim,
                         **run.backbone_args)
    return methods.build(run.method, model, spec.task_type, **run.method_args)


def load_resume_state(ckpt_path: Path, key: str, expected: dict) -> dict | None:
    """The resume checkpoint at `ckpt_path`, or None when there is none or when its `key` entry (the config it
    was written for) differs from `expected`: the config changed since the job was killed, so the checkpoint
    belongs to other hyperparameters and is deleted (with a warning) instead of silently resumed."""
    if not ckpt_path.exists():
        return None
    try:
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        if not isinstance(state, dict) or "iteration" not in state and "step" not in state:
            raise ValueError("not a resume checkpoint (no iteration or step)")
    except Exception as exc:      # truncated, corrupt or foreign: restarting beats crashing on every rerun
        log.warning("discarding %s: it cannot be read as a resume checkpoint (%s: %s); the run restarts from "
                    "scratch", ckpt_path, type(exc).__name__, exc)
        ckpt_path.unlink()
        return None
    if state.get(key) != expected:
        log.warning("discarding %s: it was written for a different %s config", ckpt_path, key)
        ckpt_path.unlink()
        return None
    return state


def write_outputs(artifact: Path, final: dict, log_fields: list[str], rows: list[dict], config: dict, wall: float,
                  ckpt_path: Path, **provenance: Any) -> None:
    """Finish a training job: train_log.csv, config.yaml (the config + provenance) and the artifact (`final`,
    saved with torch), each written atomically with the artifact last, then drop the resume checkpoint."""
    out = artifact.parent
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=log_fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(out / TRAIN_LOG, buf.getvalue())
    write_yaml_atomic(out / CONFIG_FILE, {**config, "provenance": {
        "git_revision": final["git_revision"], "torch_version": str(torch.__version__), "wall_time_s": round(wall, 2),
        "peak_memory_mb": round(final["peak_memory_mb"], 1), "device": final.get("device", "cpu"), **provenance}})
    with atomic_path(artifact) as tmp:
        torch.save(final, tmp)
    ckpt_path.unlink(missing_ok=True)
    if ckpt_path.parent.exists() and not any(ckpt_path.parent.iterdir()):
        ckpt_path.parent.rmdir()


def load_model_file(path: str | Path) -> dict:
    """A trained run's model.pt, checked: a truncated or corrupt file, or one missing fields, raises
    MetareproError naming the file and what is wrong (re-run its training job)."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise MetareproError(f"{path} not found: run `python -m metarepro metatrain` for this run first") from None
    except Exception as exc:
        raise MetareproError(f"{path} cannot be read ({type(exc).__name__}: {exc}); it is truncated or corrupt: "
                             "delete it and re-run its training job") from exc
    if not isinstance(state, dict):
        raise MetareproError(f"{path} is not a metarepro model file (a {type(state).__name__}, not a dict)")
    missing = [k for k in MODEL_KEYS if k not in state]
    if missing:
        raise MetareproError(f"{path} is missing {', '.join(missing)}: not a complete model file; re-run its "
                             "training job")
    return state


def load_learner(model_path: str | Path, device: str = "cpu") -> tuple[MetaLearner, RunConfig, dict]:
    """The trained learner of a model.pt (the base method only: add-ons are not part of inference)."""
    state = load_model_file(model_path)
    try:
        run = RunConfig.from_dict(state["run"])
    except (MetareproError, TypeError) as exc:
        raise MetareproError(f"{model_path}: its run config is invalid ({exc})") from exc
    learner = build_learner(run).to(device)
    try:
        learner.load_state_dict(state["state"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise MetareproError(f"{model_path}: its weights do not fit its own run config ({exc})") from exc
    learner.eval()
    return learner, run, state


def load_backbone(model: nn.Module, path: str | Path, backbone: str, backbone_args: dict) -> dict:
    """Copy the pretrained features in `path` (a pretrain stage's backbone.pt) into `model.features`."""
    path = Path(path)
    if not path.exists():
        raise MetareproError(f"pretrained backbone {path} not found: run `python -m metarepro pretrain` for it "
                             "(or `snakemake`, which schedules it) first")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if (state["backbone"], dict(state["backbone_args"])) != (backbone, dict(backbone_args)):
        raise MetareproError(f"{path} holds backbone {state['backbone']} {state['backbone_args']}, but the run uses "
                             f"{backbone} {backbone_args}")
    model.features.load_state_dict(state["features"])
    return state
