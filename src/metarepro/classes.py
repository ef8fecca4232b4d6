"""Class names of each dataset's standard splits, read from the split files shipped in data/splits, and the
WordNet concept of every class, for cross-domain overlap by concept rather than by name (torch-free, so config
validation can refuse a pair before any job runs). Cross-domain evaluation repeats the check on the prepared data's
class names and records the overlap it finds.

Concepts (data/concepts, built by data/concepts/build.py from WordNet 3.0's noun database, Princeton University
2006): miniImageNet's and tieredImageNet's classes are WordNet ids already; CIFAR-100's (CIFAR-FS, FC100) map to one
through the shipped table cifar100_wordnet.csv; every CUB-200-2011 species is a bird (n01503061); Omniglot's
characters have none. A target test class overlaps a source training class when both have the same concept or one
concept is a hypernym of the other ("bus" covers "school bus", "bird" every bird species); classes without a
concept overlap only by equal name.
"""
from __future__ import annotations

import csv
import json
from functools import lru_cache
from pathlib import Path

from .dataset_cards import DATASET_CARDS

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
CONCEPTS_DIR = Path(__file__).resolve().parent / "data" / "concepts"
BIRD = "n01503061"
# Datasets cut from the same image collection (their cards' `collection`): a shared class there can be the very
# same images, which is the whole point of separating their splits, so such a pair is refused; other pairs are
# evaluated, and the overlap reported (and optionally dropped from the target's episodes).
IMAGE_COLLECTION = {name: c.collection for name, c in DATASET_CARDS.items() if c.collection}


def _card_concepts(dataset: str) -> str:
    card = DATASET_CARDS.get(dataset)
    return card.concepts if card is not None else ""


@lru_cache(maxsize=1)
def _cifar_concepts() -> dict[str, str]:
    with open(CONCEPTS_DIR / "cifar100_wordnet.csv", newline="") as f:
        return {r["class"]: r["wnid"] for r in csv.DictReader(f)}


@lru_cache(maxsize=1)
def _wordnet() -> dict[str, dict]:
    return json.loads((CONCEPTS_DIR / "ancestors.json").read_text())


def concept(dataset: str, name: str) -> str | None:
    """The WordNet id of class `name` of `dataset` (None: no concept, e.g. an Omniglot character)."""
    kind = _card_concepts(dataset)
    if kind == "cifar100":
        return _cifar_concepts().get(name)
    if kind == "wnid":
        return name if name in _wordnet() else None
    if kind == "bird":
        return BIRD
    return None


def concept_name(wnid: str) -> str:
    return _wordnet().get(wnid, {}).get("name", wnid)


def _related(a: str, b: str) -> bool:
    wn = _wordnet()
    return a == b or a in wn.get(b, {}).get("ancestors", ()) or b in wn.get(a, {}).get("ancestors", ())


def concept_overlap(source: str, source_train: "tuple[str, ...] | list[str]", target: str,
                    target_test: "tuple[str, ...] | list[str]") -> dict[str, list[str]]:
    """target test class -> the source training classes it overlaps (same or hypernym-related concept; equal name
    where either has no concept), for every overlapping target class, in the target's order."""
    src = [(str(n), concept(source, str(n))) for n in source_train]
    out: dict[str, list[str]] = {}
    for t in map(str, target_test):
        ct = concept(target, t)
        hits = [n for n, cs in src if (n == t if ct is None or cs is None else _related(cs, ct))]
        if hits:
            out[t] = hits
    return out


def same_collection(source: str, target: str) -> bool:
    return IMAGE_COLLECTION.get(source) is not None and IMAGE_COLLECTION.get(source) == IMAGE_COLLECTION.get(target)


def describe_overlap(target: str, shared: dict[str, list[str]], source: str | None = None) -> str:
    """ "lion (lion), school bus (bus)": each target class (its concept's name) with the source classes it
    overlaps."""
    def name(ds: str | None, n: str) -> str:       # a wnid class by its synset's first lemma
        return concept_name(n).replace("_", " ") if ds is not None and _card_concepts(ds) == "wnid" else n
    items = [f"{name(target, t)} ({', '.join(name(source, s) for s in srcs[:3])}"
             + (f" +{len(srcs) - 3}" if len(srcs) > 3 else "") + ")" for t, srcs in shared.items()]
    return ", ".join(items)


@lru_cache(maxsize=None)
def split_class_names(dataset: str, split: str) -> tuple[str, ...] | None:
    """The class names of `split` ('train' | 'val' | 'test') of `dataset`'s standard split; None where the split
    files do not name them (Omniglot's depend on the split option, tieredImageNet's on words.txt)."""
    card = DATASET_CARDS.get(dataset)
    folder, fmt = card.split_files if card is not None else ("", "")
    if not folder:
        return None
    d = SPLITS_DIR / folder
    if fmt == "class_pairs":                    # torchmeta's CIFAR-FS: [superclass, class] pairs
        return tuple(c for _, c in json.loads((d / f"{split}.json").read_text()))
    if fmt == "cifar100_superclasses":          # torchmeta's FC100: superclasses, each of 5 classes
        return tuple(c for s in json.loads((d / f"{split}.json").read_text()) for c in CIFAR100_SUPERCLASSES[s])
    if fmt == "ravi_csv":                       # Ravi & Larochelle's csv files: filename,label
        # the label column read as text (plain `filename,label` lines): csv.DictReader over miniImageNet's 60,000
        # rows took 70 ms of every Snakemake start whose config has a cross-domain experiment
        header, *rows = (d / f"{split}.csv").read_text().splitlines()
        if header.strip() != "filename,label":
            raise ValueError(f"{d / f'{split}.csv'}: expected the header 'filename,label', got {header!r}")
        return tuple(dict.fromkeys(row.rpartition(",")[2] for row in rows if row))
    if fmt == "closerlook_json":                # Chen et al.'s base / val / novel json files
        js = json.loads((d / f"{_CUB_FILES[split]}.json").read_text())
        return tuple(js["label_names"][i] for i in sorted(set(js["image_labels"])))
    raise ValueError(f"dataset card {dataset!r}: unknown split file format {fmt!r}")


def overlap_error(source: str, target: str, shared: "list[str] | dict[str, list[str]]") -> str:
    names = list(shared)
    return (f"cross-domain pair {source} -> {target} is refused: {len(names)} of {target}'s test classes are "
            f"training classes of {source}, cut from the same image collection "
            f"({IMAGE_COLLECTION.get(source, 'the same data')}): {', '.join(names)}")
