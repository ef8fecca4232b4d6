"""miniImageNet (Vinyals et al. 2016) with the Ravi & Larochelle 2017 split -> uint8 (N, 84, 84, 3).

Two raw layouts, either accepted:
- "ravi" (the one the full dataset and the mirror's 60-image subset share): images/<wnid><index>.jpg,
  train.csv / val.csv / test.csv with `filename,label` rows (+ images.sha256 in the mirror). Every csv
  row must be a row of the official Ravi csv of the same split (splits/miniimagenet_ravi) and every
  class of that split must be present, so a subset (the mirror) is accepted but a different split is not.
- "learn2learn" (the download, metarepro.data.download): mini-imagenet-cache-{train,validation,test}.pkl,
  each a dict {"image_data": uint8 (N, 84, 84, 3), "class_dict": {wnid: [row indices]}} holding
  Ravi's train / val / test classes; read by a restricted unpickler (plain containers and numpy arrays
  only), and each file's classes must be exactly those of its Ravi split.
64/16/20 classes; 600 images per class in the full dataset. Classes are numbered in the order of the Ravi
csvs in both layouts. Images not at image_size are resized with PIL LANCZOS, as in the commonly used
miniImageNet creation scripts.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import MetareproError
from .download import detect_layout, resolve_options, split_file, verify_raw
from .imageops import RESAMPLE, allocate, as_str, key, load_image, load_pickle, resize_array, scratch_beside
from .store import SPLITS, write_dataset

log = logging.getLogger(__name__)

CSVS = tuple(f"{s}.csv" for s in SPLITS)
# learn2learn's pickle of each split (its "validation" is Ravi's val split)
PICKLES = {s: f"mini-imagenet-cache-{'validation' if s == 'val' else s}.pkl" for s in SPLITS}
IMAGES_PER_CLASS = 600       # full dataset (Vinyals et al. 2016)

DEFAULTS: dict[str, Any] = {
    "image_size": 84,        # Vinyals et al. 2016; Ravi & Larochelle 2017
    "resample": "lanczos",   # only used for images not already image_size x image_size
}


def read_csv(path: Path) -> list[tuple[str, str]]:
    """(filename, label) rows of a Ravi-format csv."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["filename", "label"]:
        raise MetareproError(f"{path}: expected a `filename,label` header")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if len(row) != 2 or not row[0] or not row[1]:
            raise MetareproError(f"{path}:{n}: expected filename,label; got {row!r}")
        out.append((row[0].strip(), row[1].strip()))
    return out


def _check_ravi(path: Path, split: str, rows: list[tuple[str, str]]) -> list[str]:
    """Check rows against the official Ravi csv of `split`; returns the class order (first appearance)."""
    ravi = read_csv(split_file(f"miniimagenet_ravi/{split}.csv"))
    official = set(ravi)
    unknown = [r for r in rows if r not in official]
    if unknown:
        raise MetareproError(f"{path}: {len(unknown)} rows are not in the Ravi & Larochelle {split} split "
                             f"(e.g. {unknown[0][0]},{unknown[0][1]})")
    classes = list(dict.fromkeys(label for _, label in rows))
    missing = sorted(set(label for _, label in ravi) - set(classes))
    if missing:
        raise MetareproError(f"{path}: {len(missing)} classes of the Ravi & Larochelle {split} split have no images "
                             f"(e.g. {missing[0]})")
    return classes


def prepare(raw_dir: str | Path, out_dir: str | Path, options: dict[str, Any] | None = None) -> Path:
    """raw_dir (Ravi layout or learn2learn's pickles) -> out_dir in the store format; returns out_dir."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    opts = resolve_options("miniimagenet", options, DEFAULTS, {"resample": RESAMPLE})
    layout = detect_layout("miniimagenet", raw_dir, {"ravi": CSVS, "learn2learn": tuple(PICKLES.values())})
    if layout == "learn2learn":
        return _prepare_pickles(raw_dir, out_dir, opts)
    provenance = verify_raw("miniimagenet", raw_dir, CSVS)
    rows = {s: read_csv(raw_dir / f"{s}.csv") for s in SPLITS}
    classes = {s: _check_ravi(raw_dir / f"{s}.csv", s, rows[s]) for s in SPLITS}
    files = [f"images/{name}" for s in SPLITS for name, _ in rows[s]]
    if len(set(files)) != len(files):
        raise MetareproError(f"{raw_dir}: an image is listed twice in the csvs")
    verify_raw("miniimagenet", raw_dir, files)   # every image against MANIFEST.json, before writing anything

    size = opts["image_size"]
    with scratch_beside(out_dir) as scratch:
        splits = {}
        for split in SPLITS:
            index = {c: k for k, c in enumerate(classes[split])}
            images = allocate(len(rows[split]), size, 3, scratch, split)         # (N, S, S, 3)
            for i, (name, _) in enumerate(rows[split]):
                images[i] = load_image(raw_dir / "images" / name, mode="RGB", size=size,
                                       resample=opts["resample"], name=raw_dir / "images" / name)
            labels = np.array([index[label] for _, label in rows[split]], dtype=np.int64)
            per_class = np.bincount(labels)
            if per_class.min() != IMAGES_PER_CLASS or per_class.max() != IMAGES_PER_CLASS:
                log.info("miniimagenet %s: %d..%d images per class (full dataset: %d); results on a subset are "
                         "not comparable with published numbers", split, per_class.min(), per_class.max(),
                         IMAGES_PER_CLASS)
            splits[split] = (images, labels, classes[split])
        return write_dataset(out_dir, "miniimagenet", splits, opts, provenance)


def _ravi_classes(split: str) -> list[str]:
    """The classes of Ravi's `split`, in the order of its csv (the order the Ravi layout numbers them in)."""
    return list(dict.fromkeys(label for _, label in read_csv(split_file(f"miniimagenet_ravi/{split}.csv"))))


def _read_pickle(path: Path, split: str) -> tuple[np.ndarray, dict[str, list[int]]]:
    """(image_data uint8 (N, H, W, 3), {wnid: row indices}) of one learn2learn pickle, checked."""
    with open(path, "rb") as f:
        data = load_pickle(f, path)                  # restricted: containers and numpy arrays, nothing else
    try:
        images = key(data, "image_data")
        class_dict = {as_str(k): [int(i) for i in v] for k, v in key(data, "class_dict").items()}
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise MetareproError(f"{path}: expected a dict with image_data and class_dict ({e!r})") from e
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        what = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise MetareproError(f"{path}: image_data must be uint8 (N, H, W, 3); got {what}")
    ravi = set(_ravi_classes(split))
    foreign, missing = sorted(set(class_dict) - ravi), sorted(ravi - set(class_dict))
    if foreign or missing:
        raise MetareproError(f"{path}: its classes are not the Ravi & Larochelle {split} split ("
                             + "; ".join(f"{n} {what}, e.g. {xs[0]}" for n, what, xs in
                                         ((len(foreign), "not in it", foreign), (len(missing), "missing", missing))
                                         if xs) + ")")
    rows = [i for v in class_dict.values() for i in v]
    if len(set(rows)) != len(rows) or (rows and (min(rows) < 0 or max(rows) >= len(images))):
        raise MetareproError(f"{path}: class_dict's indices must be distinct rows of image_data "
                             f"(0..{len(images) - 1})")
    return images, class_dict


def _prepare_pickles(raw_dir: Path, out_dir: Path, opts: dict[str, Any]) -> Path:
    """learn2learn's three pickles -> out_dir; classes in Ravi's csv order, images in class_dict's order."""
    provenance = verify_raw("miniimagenet", raw_dir, PICKLES.values())   # before reading or writing anything
    size = opts["image_size"]
    with scratch_beside(out_dir) as scratch:
        splits = {}
        for split in SPLITS:
            images, class_dict = _read_pickle(raw_dir / PICKLES[split], split)
            classes = _ravi_classes(split)
            order = [i for c in classes for i in class_dict[c]]
            labels = np.array([k for k, c in enumerate(classes) for _ in class_dict[c]], dtype=np.int64)
            out = allocate(len(order), size, 3, scratch, split)             # (N, S, S, 3)
            for j, i in enumerate(order):
                out[j] = resize_array(images[i], size, opts["resample"])
            del images                                                       # the next split's pickle replaces it
            per_class = np.bincount(labels, minlength=len(classes))
            if per_class.min() != IMAGES_PER_CLASS or per_class.max() != IMAGES_PER_CLASS:
                log.info("miniimagenet %s: %d..%d images per class (full dataset: %d)", split, per_class.min(),
                         per_class.max(), IMAGES_PER_CLASS)
            splits[split] = (out, labels, classes)
        return write_dataset(out_dir, "miniimagenet", splits, opts, provenance)
