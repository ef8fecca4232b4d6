"""Add-on combinations and cross-domain pairs in the config (refused with named errors), and the cross-domain
evaluation: image conversion, the source's normalisation, the target's fixed episodes, the class-overlap check."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from metarepro import data as datasets
from metarepro.classes import CIFAR100_SUPERCLASSES, split_class_names
from metarepro.config import ConfigError, iter_cross_domain, resolve_run, used_datasets, validate_config
from metarepro.data.sampling import convert_images
from metarepro.data.store import write_dataset
from metarepro.evaluate import evaluate
from metarepro.utils import MetareproError

REPO = Path(__file__).resolve().parents[2]
MIRROR_CIFAR = REPO.parent / "shared" / "datasets" / "cifar100" / "cifar100_all60000_uint8.npz"


def cfg_with(methods: dict, dataset: str = "omniglot", **exp) -> dict:
    return {"experiments": {"e": {"dataset": dataset, "backbone": "mlp" if dataset == "sinusoid" else "conv4",
                                  "ways": 1 if dataset == "sinusoid" else 5, "shots": [1], "methods": methods, **exp}}}


@pytest.mark.parametrize("methods, dataset, needles", [
    ({"finetune+cml": {}}, "omniglot", ["'finetune'", "'cml'", "nothing to meta-train"]),
    ({"nearest_neighbor+oamfs": {}}, "omniglot", ["'nearest_neighbor'", "'oamfs'"]),
    ({"maml+ht": {}}, "sinusoid", ["'ht'", "'maml+ht'", "no classes"]),
    ({"maml+cmll": {}}, "omniglot", ["unknown add-on 'cmll'", "did you mean 'cml'"]),
    ({"maml+oamfs+oamfs": {}}, "omniglot", ["lists an add-on twice"]),
    ({"mamlpp+ht+cml": {}}, "omniglot", ["out of order", "'mamlpp+cml+ht'"]),
    ({"maml@noise+cml+oamfs": {"addons": {"cml": {"control": "noise"}}}}, "omniglot",
     ["'maml@noise+cml+oamfs'", "'oamfs'", "noise control"]),
    ({"maml": {"addons": {"cml": {}}}}, "omniglot", ["'experiments.e.methods.maml.addons.cml'", "maml+cml"]),
    ({"maml+cml": {"addons": {"cml": {"weight": -1}}}}, "omniglot", ["weight", "-1"]),
])
def test_bad_addon_combinations_are_refused_naming_method_and_addon(methods, dataset, needles):
    with pytest.raises(ConfigError) as err:
        validate_config(cfg_with(methods, dataset))
    for n in needles:
        assert n in str(err.value)


def test_addon_blocks_get_defaults_and_reach_the_run_config_only_when_named():
    cfg = validate_config(cfg_with({"maml": {}, "mamlpp+cml+ht": {"inner_lr": 0.4}, "fomaml+oamfs": None}))
    plain = resolve_run(cfg, "e", "maml", 1, 0)
    assert "addons" not in plain.to_dict() and "addons" not in plain.method_args
    run = resolve_run(cfg, "e", "mamlpp+cml+ht", 1, 0)
    assert run.addons == {"cml": {"weight": 1.0, "lr": 0.001}, "ht": {"hard_tasks": None}}
    assert "addons" not in run.method_args and run.method_args["inner_lr"] == 0.4
    assert run.run_dir.endswith("/omniglot/mamlpp+cml+ht/5way1shot/seed0")
    assert resolve_run(cfg, "e", "fomaml+oamfs", 1, 0).addons == {"oamfs": {}}


def test_overlapping_cross_domain_pair_is_refused_naming_the_classes():
    with pytest.raises(ConfigError) as err:
        validate_config(cfg_with({"maml": {}}, "cifarfs", cross_domain=[{"dataset": "fc100"}]))
    msg = str(err.value)
    # one image collection (CIFAR-100): the same images could be trained on and tested; by concept, 13 of 20
    assert "cifarfs -> fc100" in msg and "13 of fc100's test classes" in msg and "CIFAR-100" in msg
    for name in ("bee", "boy", "dolphin", "skunk", "whale"):
        assert name in msg
    with pytest.raises(ConfigError, match="the experiment's own dataset"):
        validate_config(cfg_with({"maml": {}}, "cifarfs", cross_domain=[{"dataset": "cifarfs"}]))
    with pytest.raises(ConfigError, match="not one of the experiment's methods"):
        validate_config(cfg_with({"maml": {}}, "cifarfs", cross_domain=[{"dataset": "miniimagenet",
                                                                        "methods": ["protonet"]}]))


def test_cross_domain_targets_are_prepared_and_enumerated():
    cfg = validate_config(cfg_with({"maml": {}, "protonet": {}}, "cifarfs",
                                   cross_domain=[{"dataset": "miniimagenet", "methods": ["protonet"]}]))
    assert used_datasets(cfg) == ["cifarfs", "miniimagenet"]
    assert [(r.method, t) for r, t in iter_cross_domain(cfg)] == [("protonet", "miniimagenet")]


@pytest.mark.skipif(not MIRROR_CIFAR.exists(), reason="dataset mirror not beside the checkout")
def test_cifar100_superclass_table_matches_the_data():
    with np.load(MIRROR_CIFAR) as z:
        fine, coarse = z["fine_labels"], z["coarse_labels"]
        fine_names, coarse_names = [str(s) for s in z["fine_label_names"]], [str(s) for s in z["coarse_label_names"]]
    table = {coarse_names[c]: sorted(fine_names[f] for f in set(fine[coarse == c].tolist())) for c in range(20)}
    assert table == {k: sorted(v) for k, v in CIFAR100_SUPERCLASSES.items()}
    assert len(split_class_names("fc100", "test")) == 20


def test_image_conversion_channels_and_size():
    grey = torch.rand(2, 1, 28, 28)
    rgb = convert_images(grey, (3, 32, 32))
    assert rgb.shape == (2, 3, 32, 32) and torch.equal(rgb[:, 0], rgb[:, 1])
    colour = torch.rand(2, 3, 8, 8)
    luma = convert_images(colour, (1, 8, 8))
    torch.testing.assert_close(luma[:, 0], 0.299 * colour[:, 0] + 0.587 * colour[:, 1] + 0.114 * colour[:, 2])
    small = convert_images(torch.full((1, 3, 84, 84), 0.25), (3, 32, 32))
    torch.testing.assert_close(small, torch.full((1, 3, 32, 32), 0.25))
    with pytest.raises(ValueError, match="2-channel"):
        convert_images(torch.rand(1, 2, 8, 8), (3, 8, 8))


def _dataset(root: Path, name: str, names: dict[str, list[str]], size: int, channels: int, value: int) -> Path:
    rng = np.random.default_rng(value)
    splits = {}
    for split, cls in names.items():
        n = len(cls) * 20
        imgs = rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)
        splits[split] = (imgs, np.repeat(np.arange(len(cls)), 20), cls)
    return write_dataset(root / name, name, splits, {}, "test")


def test_cross_domain_evaluation_uses_the_targets_episodes_and_the_sources_statistics(tmp_path):
    from metarepro.config import RunConfig
    from metarepro.train import metatrain
    src = _dataset(tmp_path, "cifarfs", {"train": [f"a{i}" for i in range(6)], "val": ["v0", "v1", "v2", "v3", "v4"],
                                         "test": ["t0", "t1", "t2", "t3", "t4"]}, 16, 3, 1)
    dst = _dataset(tmp_path, "miniimagenet", {"train": ["m0", "m1", "m2", "m3", "m4"], "val": ["n0", "n1", "n2", "n3", "n4"],
                                              "test": ["x0", "x1", "x2", "x3", "x4", "a3"]}, 24, 3, 2)
    run = RunConfig(experiment="x", dataset="cifarfs", dataset_args={}, data_dir=str(src), backbone="conv4",
                    backbone_args={"filters": 4}, method="protonet", method_args={}, ways=5, shots=1, seed=0,
                    train={"iterations": 2, "meta_batch": 1, "meta_lr": 0.001, "queries": 2, "val_every": 2,
                           "val_episodes": 2, "checkpoint_every": 10, "grad_clip": None},
                    evaluation={"episodes": 20, "queries": 3, "seed": 0}, run_dir=str(tmp_path / "run"))
    model = metatrain(run, progress=False)
    state = torch.load(model, weights_only=False)
    assert state["input_shape"] == [3, 16, 16]
    assert state["normalization"] == datasets.normalization("cifarfs", str(src))
    # target test class "a3" is a source training class (no concept: by name). Another image collection: the pair
    # is evaluated and the overlap recorded; with drop_overlap the same number of episodes never draws "a3"
    out = evaluate(tmp_path / "run", progress=False, target="miniimagenet", target_dir=str(dst), drop_overlap=True)
    ev = json.loads(out.read_text())
    assert ev["cross_domain"]["overlap"]["classes"] == {"a3": ["a3"]}
    assert ev["cross_domain"]["overlap"]["count"] == 1 and ev["cross_domain"]["overlap"]["of"] == 6
    wo = ev["without_overlap"]
    assert wo["classes"] == 5 and wo["dropped"] == 1 and len(wo["per_episode"]) == 20
    names = datasets.class_names(str(dst), "test")
    eps = datasets.episodes("miniimagenet", {}, str(dst), "test", 5, 1, 3, datasets.eval_seed(0, "miniimagenet",
                            "test", 5, 1), (tuple(state["input_shape"]), state["normalization"]),
                            exclude=[names.index("a3")])
    assert wo["episode_set"] == eps.fingerprint(20)
    assert all(names.index("a3") not in eps.indices(i)[0] for i in range(20))
    # one image collection (CIFAR-100): refused, naming the class, before anything is written
    fc = _dataset(tmp_path, "fc100", {"train": ["f0", "f1", "f2", "f3", "f4"], "val": ["g0", "g1", "g2", "g3", "g4"],
                                      "test": ["x0", "x1", "x2", "x3", "a1"]}, 16, 3, 3)
    with pytest.raises(MetareproError, match=r"cifarfs -> fc100 is refused: 1 of .*same image collection.*: a1"):
        evaluate(tmp_path / "run", progress=False, target="fc100", target_dir=str(fc))
    assert not (tmp_path / "run" / "eval_xdomain_fc100.json").exists()


def test_class_concepts_and_the_hypernym_rule():
    """Overlap by WordNet concept: CIFAR-FS's lion is miniImageNet's lion, its bus a hypernym of the school bus;
    every CUB species is a bird, so miniImageNet's training birds overlap all of CUB's test classes; Omniglot has no
    concepts."""
    from metarepro.classes import concept, concept_overlap, describe_overlap
    assert concept("cifarfs", "lion") == "n02129165" == concept("miniimagenet", "n02129165")
    assert concept("cifarfs", "dolphin") == "n02068974"        # the cetacean, not the fish (hand-chosen sense)
    assert concept("cub", "004.Groove_billed_Ani") == "n01503061" and concept("omniglot", "Latin/character01") is None
    shared = concept_overlap("cifarfs", split_class_names("cifarfs", "train"), "miniimagenet",
                             split_class_names("miniimagenet", "test"))
    assert shared == {"n02129165": ["lion"], "n04146614": ["bus"]}
    assert describe_overlap("miniimagenet", shared, "cifarfs") == "lion (lion), school bus (bus)"
    birds = concept_overlap("miniimagenet", split_class_names("miniimagenet", "train"), "cub",
                            split_class_names("cub", "test"))
    assert len(birds) == 50 and set(birds["004.Groove_billed_Ani"]) == {"n01532829", "n01558993", "n01843383"}
    assert concept_overlap("cub", split_class_names("cub", "train"), "miniimagenet",
                           split_class_names("miniimagenet", "test")) == {}
    # the shipped table maps all 100 CIFAR-100 classes to a synset in the shipped ancestor table
    from metarepro.classes import _cifar_concepts, _wordnet
    assert len(_cifar_concepts()) == 100 and set(_cifar_concepts().values()) <= set(_wordnet())


def test_cross_domain_evaluation_writes_its_own_file_on_fixed_target_episodes(tmp_path):
    from metarepro.config import RunConfig
    from metarepro.train import metatrain
    src = _dataset(tmp_path, "cifarfs", {"train": [f"a{i}" for i in range(6)], "val": [f"v{i}" for i in range(5)],
                                         "test": [f"t{i}" for i in range(5)]}, 16, 3, 1)
    dst = _dataset(tmp_path, "omniglot", {"train": [f"m{i}" for i in range(5)], "val": [f"n{i}" for i in range(5)],
                                          "test": [f"x{i}" for i in range(6)]}, 20, 1, 2)
    runs = {}
    for method in ("protonet", "maml"):
        run = RunConfig(experiment="x", dataset="cifarfs", dataset_args={}, data_dir=str(src), backbone="conv4",
                        backbone_args={"filters": 4}, method=method,
                        method_args={} if method == "protonet" else {"inner_lr": 0.1, "inner_steps": 1,
                                                                     "eval_inner_steps": 1},
                        ways=5, shots=1, seed=0, train={"iterations": 2, "meta_batch": 1, "meta_lr": 0.001,
                                                        "queries": 2, "val_every": 2, "val_episodes": 2,
                                                        "checkpoint_every": 10, "grad_clip": None},
                        evaluation={"episodes": 20, "queries": 3, "seed": 0}, run_dir=str(tmp_path / method))
        metatrain(run, progress=False)
        runs[method] = evaluate(tmp_path / method, progress=False, target="omniglot", target_dir=str(dst),
                                target_options={"rotations": False}, drop_overlap=True)
    a, b = (json.loads(p.read_text()) for p in runs.values())
    # no class in common: nothing to drop, so "without the overlap" is the same episodes' scores, not a second pass
    assert a["cross_domain"]["overlap"]["count"] == 0
    assert a["without_overlap"]["per_episode"] == a["per_episode"] and a["without_overlap"]["dropped"] == 0
    assert a["without_overlap"]["episode_set"] == a["episode_set"]
    assert [p.name for p in runs.values()] == ["eval_xdomain_omniglot.json"] * 2
    assert a["episode_set"] == b["episode_set"] and len(a["per_episode"]) == 20
    assert a["cross_domain"]["input_shape"] == [3, 16, 16] and a["cross_domain"]["target_image_shape"] == [1, 20, 20]
    # the same episodes a run trained on the target is tested on
    eps = datasets.episodes("omniglot", {"rotations": False}, str(dst), "test", 5, 1, 3,
                            datasets.eval_seed(0, "omniglot", "test", 5, 1))
    assert a["episode_set"] == eps.fingerprint(20)
    with pytest.raises(MetareproError, match="--target-data"):
        evaluate(tmp_path / "maml", progress=False, target="omniglot", target_dir=None)
