"""Class names of each dataset's standard splits, read from the split files shipped in data/splits (torch-free,
so config validation can refuse a cross-domain pair whose target test classes overlap the source's training
classes before any job runs). Cross-domain evaluation repeats the check on the prepared data's class names.
"""
from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path

SPLITS_DIR = Path(__file__).resolve().parent / "data" / "splits"

# CIFAR-100's 20 superclasses and their 5 fine classes each (Krizhevsky 2009; the dataset's coarse_labels):
# FC100's split files list superclasses, so comparing it with CIFAR-FS by class name needs this table
# (tests/unit/test_cross_domain.py checks it against the mirror's labels).
CIFAR100_SUPERCLASSES: dict[str, tuple[str, ...]] = {
    "aquatic_mammals": ("beaver", "dolphin", "otter", "seal", "whale"),
    "fish": ("aquarium_fish", "flatfish", "ray", "shark", "trout"),
    "flowers": ("orchid", "poppy", "rose", "sunflower", "tulip"),
    "food_containers": ("bottle", "bowl", "can", "cup", "plate"),
    "fruit_and_vegetables": ("apple", "mushroom", "orange", "pear", "sweet_pepper"),
    "household_electrical_devices": ("clock", "keyboard", "lamp", "telephone", "television"),
    "household_furniture": ("bed", "chair", "couch", "table", "wardrobe"),
    "insects": ("bee", "beetle", "butterfly", "caterpillar", "cockroach"),
    "large_carnivores": ("bear", "leopard", "lion", "tiger", "wolf"),
    "large_man-made_outdoor_things": ("bridge", "castle", "house", "road", "skyscraper"),
    "large_natural_outdoor_scenes": ("cloud", "forest", "mountain", "plain", "sea"),
    "large_omnivores_and_herbivores": ("camel", "cattle", "chimpanzee", "elephant", "kangaroo"),
    "medium_mammals": ("fox", "porcupine", "possum", "raccoon", "skunk"),
    "non-insect_invertebrates": ("crab", "lobster", "snail", "spider", "worm"),
    "people": ("baby", "boy", "girl", "man", "woman"),
    "reptiles": ("crocodile", "dinosaur", "lizard", "snake", "turtle"),
    "small_mammals": ("hamster", "mouse", "rabbit", "shrew", "squirrel"),
    "trees": ("maple_tree", "oak_tree", "palm_tree", "pine_tree", "willow_tree"),
    "vehicles_1": ("bicycle", "bus", "motorcycle", "pickup_truck", "train"),
    "vehicles_2": ("lawn_mower", "rocket", "streetcar", "tank", "tractor"),
}
_CUB_FILES = {"train": "base", "val": "val", "test": "novel"}


@lru_cache(maxsize=None)
def split_class_names(dataset: str, split: str) -> tuple[str, ...] | None:
    """The class names of `split` ('train' | 'val' | 'test') of `dataset`'s standard split; None where the split
    files do not name them (Omniglot's depend on the split option, tieredImageNet's on words.txt)."""
    if dataset == "cifarfs":
        return tuple(c for _, c in json.loads((SPLITS_DIR / "cifar_fs_torchmeta" / f"{split}.json").read_text()))
    if dataset == "fc100":
        supers = json.loads((SPLITS_DIR / "fc100_torchmeta" / f"{split}.json").read_text())
        return tuple(c for s in supers for c in CIFAR100_SUPERCLASSES[s])
    if dataset == "miniimagenet":
        with open(SPLITS_DIR / "miniimagenet_ravi" / f"{split}.csv", newline="") as f:
            return tuple(dict.fromkeys(row["label"] for row in csv.DictReader(f)))
    if dataset == "cub":
        d = json.loads((SPLITS_DIR / "cub_closerlook_chen" / f"{_CUB_FILES[split]}.json").read_text())
        return tuple(d["label_names"][i] for i in sorted(set(d["image_labels"])))
    return None


def overlap(source_train: "tuple[str, ...] | list[str]", target_test: "tuple[str, ...] | list[str]") -> list[str]:
    """The target test classes that are also source training classes, by name, sorted."""
    return sorted(set(map(str, source_train)) & set(map(str, target_test)))


def overlap_error(source: str, target: str, shared: list[str]) -> str:
    return (f"cross-domain pair {source} -> {target} is refused: {len(shared)} of {target}'s test classes are "
            f"training classes of {source}: {', '.join(shared)}")
