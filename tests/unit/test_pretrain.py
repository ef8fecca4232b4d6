"""The pretraining stage on a tiny synthetic dataset: it writes backbone.pt / train_log.csv / config.yaml, a run
killed mid-way resumes from its checkpoint to the weights of an uninterrupted run, and the pretrained-feature
baselines train (0 iterations) and evaluate from it; a missing backbone.pt is an error naming the file."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from metarepro import pretrain as pretrain_mod
from metarepro.config import PretrainConfig, RunConfig
from metarepro.data.store import write_dataset
from metarepro.evaluate import evaluate
from metarepro.pretrain import pretrain
from metarepro.train import metatrain
from metarepro.utils import MetareproError

SETTINGS = {"epochs": 2, "batch_size": 8, "optimizer": "adam", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0,
            "val_every": 5, "val_episodes": 3, "val_ways": 3, "val_shots": 1, "val_queries": 2,
            "checkpoint_every": 4}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """cifarfs-shaped (16x16x3) random images: 4 train, 3 val, 3 test classes of 10 images each."""
    rng = np.random.default_rng(0)

    def split(n_classes, name):
        labels = np.repeat(np.arange(n_classes), 10)
        images = (rng.random((len(labels), 16, 16, 3)) * 100 + labels[:, None, None, None] * 40).astype(np.uint8)
        return images, labels, [f"{name}{i}" for i in range(n_classes)]
    out = tmp_path_factory.mktemp("data") / "cifarfs"
    return write_dataset(out, "cifarfs", {"train": split(4, "train"), "val": split(3, "val"), "test": split(3, "test")},
                         {}, "synthetic")


def _config(data_dir: Path, out: Path, **settings) -> PretrainConfig:
    return PretrainConfig(dataset="cifarfs", dataset_args={"image_size": 16}, data_dir=str(data_dir),
                          backbone="conv4", backbone_args={"filters": 4}, seed=0, pretrain={**SETTINGS, **settings},
                          val_seed=0, out_dir=str(out))


def test_writes_outputs_and_resumes_after_kill_to_identical_weights(data_dir, tmp_path, monkeypatch, caplog):
    full = pretrain(_config(data_dir, tmp_path / "full"), progress=False)
    state = torch.load(full, weights_only=False)
    assert state["steps"] == 10 and state["n_classes"] == 4 and state["best_step"] in (5, 10)
    assert set(state["features"]) and set(state["head"]) == {"weight", "bias"}
    assert not (tmp_path / "full" / "checkpoints").exists()
    saved = yaml.safe_load((tmp_path / "full" / "config.yaml").read_text())
    assert saved["pretrain"]["batch_size"] == 8 and "provenance" in saved

    cfg = _config(data_dir, tmp_path / "resumed")
    real_batch, calls = pretrain_mod.TrainImages.batch, []

    def dying_batch(self, index):   # the job is killed while computing step 7 (after the step-4 checkpoint)
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return real_batch(self, index)
    monkeypatch.setattr(pretrain_mod.TrainImages, "batch", dying_batch)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, progress=False)
    assert not (tmp_path / "resumed" / "backbone.pt").exists()
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)["step"] == 4
    monkeypatch.setattr(pretrain_mod.TrainImages, "batch", real_batch)
    caplog.set_level("INFO", logger="metarepro.pretrain")
    resumed = torch.load(pretrain(cfg, progress=False), weights_only=False)
    assert "from step 4" in caplog.text
    for part in ("features", "head"):
        for k, v in state[part].items():
            assert torch.equal(v, resumed[part][k]), (part, k)
    assert (state["best_step"], state["val_mean"]) == (resumed["best_step"], resumed["val_mean"])

    def log_rows(name):
        return [line.rsplit(",", 1)[0] for line in (tmp_path / name / "train_log.csv").read_text().splitlines()]
    assert log_rows("full") == log_rows("resumed") and len(log_rows("full")) == 3   # header + steps 5, 10


def test_rotations_make_four_classes_per_class_like_the_episode_sampler(data_dir):
    from metarepro.data import cached_split as _split
    images = pretrain_mod.TrainImages(_split(str(data_dir), "train"), True, None, None)
    assert images.n_classes == 16 and images.size == 160
    x, y = images.batch(np.array([0, 1, 2, 3, 41]))          # image 0 at rotations 0..3; image 10 at rotation 1
    assert y.tolist() == [0, 1, 2, 3, 5]
    raw = torch.from_numpy(_split(str(data_dir), "train").images[0]).float().div(255).permute(2, 0, 1)
    assert torch.equal(x[0], raw) and torch.equal(x[1], torch.rot90(raw, 1, dims=(1, 2)))


def _run(data_dir: Path, tmp_path: Path, method: str, method_args: dict, pretrained: str) -> RunConfig:
    return RunConfig(experiment="x", dataset="cifarfs", dataset_args={"image_size": 16}, data_dir=str(data_dir),
                     backbone="conv4", backbone_args={"filters": 4}, method=method, method_args=method_args,
                     ways=3, shots=1, seed=0,
                     train={"iterations": 7, "meta_batch": 2, "meta_lr": 0.001, "queries": 2, "val_every": 5,
                            "val_episodes": 3, "checkpoint_every": 5, "grad_clip": None},
                     evaluation={"episodes": 4, "queries": 2, "seed": 0}, run_dir=str(tmp_path / method),
                     pretrained=pretrained)


@pytest.mark.parametrize("method,args,steps", [("finetune", {"steps": 2, "lr": 0.1, "head_only": False}, 2),
                                               ("nearest_neighbor", {}, 0)])
def test_pretrained_baselines_skip_meta_training_and_evaluate(data_dir, tmp_path, method, args, steps):
    backbone = pretrain(_config(data_dir, tmp_path / "pre", epochs=0.5), progress=False)
    run = _run(data_dir, tmp_path, method, args, str(backbone))
    model = metatrain(run, progress=False)
    state = torch.load(model, weights_only=False)
    assert state["iterations"] == 0 and state["best_iteration"] == 0
    pre = torch.load(backbone, weights_only=False)["features"]
    for k, v in pre.items():   # the pretrained features are the model's
        assert torch.equal(state["state"][f"model.features.{k}"], v), k
    log = (tmp_path / method / "train_log.csv").read_text().splitlines()
    assert len(log) == 2 and log[1].startswith("0,,,")
    assert yaml.safe_load((tmp_path / method / "config.yaml").read_text())["pretrained"] == str(backbone)
    ev = json.loads(evaluate(tmp_path / method, progress=False).read_text())
    assert ev["inner_steps"] == steps and len(ev["per_episode"]) == 4 and set(ev["by_step"]) == {
        str(j) for j in range(steps + 1)}


def test_missing_pretrained_backbone_is_an_error_naming_the_file(data_dir, tmp_path):
    missing = tmp_path / "nowhere" / "backbone.pt"
    with pytest.raises(MetareproError, match=str(missing)):
        metatrain(_run(data_dir, tmp_path, "finetune", {"steps": 1}, str(missing)), progress=False)
    with pytest.raises(MetareproError, match="'pretrained' path"):
        metatrain(_run(data_dir, tmp_path, "nearest_neighbor", {}, ""), progress=False)


def test_backbone_of_another_width_is_rejected(data_dir, tmp_path):
    backbone = pretrain(_config(data_dir, tmp_path / "pre", epochs=0.25), progress=False)
    run = dataclasses.replace(_run(data_dir, tmp_path, "finetune", {"steps": 1}, str(backbone)),
                              backbone_args={"filters": 8})
    with pytest.raises(MetareproError, match="filters"):
        metatrain(run, progress=False)


def test_protonet_meta_trains_and_evaluates_one_score(data_dir, tmp_path):
    run = _run(data_dir, tmp_path, "protonet", {"distance": "sqeuclidean"}, "")
    state = torch.load(metatrain(run, progress=False), weights_only=False)
    assert state["iterations"] == 7 and "pretrained" not in state["run"]
    ev = json.loads(evaluate(tmp_path / "protonet", progress=False).read_text())
    assert ev["inner_steps"] == 0 and list(ev["by_step"]) == ["0"]
