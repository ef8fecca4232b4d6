"""An experiment's `input` transform (MTL's 80x80 miniImageNet: Resize(92) + CenterCrop(80) of the prepared
84x84 images): the crop itself, the episodes and the pretraining batches that use it, the model's input shape, the
config that carries it to runs and to their pretraining, and its validation."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from metarepro import data as datasets
from metarepro import pretrain as pretrain_mod
from metarepro.config import ConfigError, iter_pretrains, load_config, resolve_pretrain, resolve_run, validate_config
from metarepro.data.sampling import ImageEpisodes, resize_center_crop
from metarepro.data.store import write_dataset

REPO = Path(__file__).resolve().parents[2]


def test_centre_crop_takes_torchvisions_window():
    x = torch.arange(2 * 1 * 6 * 8, dtype=torch.float32).view(2, 1, 6, 8) / 100
    out = resize_center_crop(x, crop=3)
    # top = round((6 - 3) / 2) = round(1.5) = 2 (round half to even, as torchvision's int(round(...))), left = 2
    assert out.shape == (2, 1, 3, 3) and torch.equal(out, x[..., 2:5, 2:5])
    assert torch.equal(resize_center_crop(x, crop=4), x[..., 1:5, 2:6])
    with pytest.raises(ValueError, match="input crop 7 exceeds the 6x8 images"):
        resize_center_crop(x, crop=7)


def test_resize_scales_the_shorter_side_then_crops():
    x = torch.rand(3, 3, 84, 84)
    out = resize_center_crop(x, crop=80, resize=92)
    up = torch.nn.functional.interpolate(x, size=(92, 92), mode="bilinear", antialias=True, align_corners=False)
    assert out.shape == (3, 3, 80, 80) and torch.allclose(out, up.clamp(0, 1)[..., 6:86, 6:86], atol=0, rtol=0)
    # a constant image stays constant: the resampling weights sum to one
    assert torch.allclose(resize_center_crop(torch.full((1, 1, 10, 20), 0.25), crop=4, resize=5),
                          torch.full((1, 1, 4, 4), 0.25))
    assert resize_center_crop(torch.rand(1, 1, 10, 20), crop=4, resize=5).shape == (1, 1, 4, 4)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)

    def split(n, name):
        labels = np.repeat(np.arange(n), 6)
        return rng.integers(0, 256, (len(labels), 12, 12, 3), dtype=np.uint8), labels, [f"{name}{i}" for i in range(n)]
    return write_dataset(tmp_path_factory.mktemp("d") / "miniimagenet", "miniimagenet",
                         {"train": split(5, "tr"), "val": split(5, "va"), "test": split(5, "te")}, {}, "synthetic")


def test_episodes_pretraining_and_model_see_the_crop(data_dir):
    args = {"image_size": 12, "input": {"resize": 14, "crop": 10}}
    split = datasets.cached_split(str(data_dir), "train")
    plain = ImageEpisodes(split, 3, 1, 2, seed=0).episode(4)
    cropped = ImageEpisodes(split, 3, 1, 2, seed=0, input_crop=args["input"]).episode(4)
    assert cropped.x_support.shape == (3, 3, 10, 10) and cropped.x_query.shape == (6, 3, 10, 10)
    assert torch.equal(cropped.x_support, resize_center_crop(plain.x_support, crop=10, resize=14))
    assert torch.equal(cropped.y_query, plain.y_query) and cropped.classes == plain.classes
    # through the data API: the run's dataset_args carry the transform; normalisation follows the crop
    eps = datasets.episodes("miniimagenet", args, str(data_dir), "test", 3, 1, 2, 0)
    assert eps.episode(0).x_support.shape[-2:] == (10, 10)
    assert datasets.input_shape("miniimagenet", str(data_dir), args) == (3, 10, 10)
    assert datasets.input_shape("miniimagenet", str(data_dir), {"image_size": 12}) == (3, 12, 12)
    # the pretraining batches get the same transform (no augmentation)
    images = pretrain_mod.TrainImages(split, False, None, None, input_crop=args["input"])
    x, _ = images.batch(np.array([0, 7]))
    raw = torch.from_numpy(split.images[[0, 7]]).float().div(255).permute(0, 3, 1, 2)
    assert torch.equal(x, resize_center_crop(raw, crop=10, resize=14))


def test_mtl_in_paper_yaml_runs_and_pretrains_on_80x80():
    cfg = load_config(REPO / "config" / "config.yaml", REPO / "config" / "paper.yaml")
    run = resolve_run(cfg, "miniimagenet_mtl", "mtl", 1, 0)
    assert run.dataset_args["input"] == {"resize": 92, "crop": 80} and run.dataset_args["image_size"] == 84
    label = "resnet12-w64x128x256x512-in92c80"
    assert run.pretrained == f"results/paper/miniimagenet/pretrain/{label}/seed0/backbone.pt"
    assert resolve_pretrain(cfg, "miniimagenet", label, 0).dataset_args["input"] == {"resize": 92, "crop": 80}
    # the other miniImageNet runs, and their pretraining, keep the prepared 84x84 images
    assert "input" not in resolve_run(cfg, "miniimagenet", "maml", 1, 0).dataset_args
    assert {p.label for p in iter_pretrains(cfg) if p.dataset == "miniimagenet"} == {label, "conv4-32"}
    assert "input" not in resolve_pretrain(cfg, "miniimagenet", "conv4-32", 0).dataset_args


def test_a_crop_larger_than_the_image_is_a_config_error():
    cfg = load_config(REPO / "config" / "config.yaml")
    bad = copy.deepcopy(cfg)
    bad["experiments"]["omniglot"]["input"] = {"crop": 30}          # Omniglot is prepared at 28x28
    with pytest.raises(ConfigError, match=r"'experiments.omniglot.input.crop' = 30 exceeds the image size 28"):
        validate_config(bad)
    bad["experiments"]["omniglot"]["input"] = {"resize": 24, "crop": 26}
    with pytest.raises(ConfigError, match=r"'experiments.omniglot.input.crop' = 26 exceeds the resize 24"):
        validate_config(bad)
