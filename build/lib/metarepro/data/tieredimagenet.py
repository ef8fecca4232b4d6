"""tieredImageNet (Ren et al. 2018, ICLR) in its official pickle format -> uint8 (N, 84, 84, 3).

Raw layout (the contents of Ren et al.'s tiered-imagenet.tar):
  {train,val,test}_images_png.pkl   list of PNG-encoded images (numpy uint8 byte arrays)
  {train,val,test}_labels.pkl       dict: label_specific (class index per image), label_general
                                    (superclass index), label_specific_str, label_general_str (names)
351/97/160 classes in 20/6/8 superclasses. Class names are label_specific_str; when they are
WordNet ids they must belong to the same split of Ren et al.'s lists (splits/tieredimagenet_ren).
No checksum is published for the archive: `fetch` records sha256s in MANIFEST.json and prepare
checks against those. Large splits are assembled in a memory-mapped scratch file beside out_dir.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import MetareproError
from .download import detect_layout, resolve_options, split_file, verify_raw
from .imageops import RESAMPLE, allocate, as_str, key, load_image, load_pickle, scratch_beside
from .store import SPLITS, write_dataset

log = logging.getLogger(__name__)

FILES = tuple(f"{s}_{kind}.pkl" for s in SPLITS for kind in ("images_png", "labels"))
CLASSES = {"train": 351, "val": 97, "test": 160}     # Ren et al. 2018, Table 1

DEFAULTS: dict[str, Any] = {
    "image_size": 84,        # Ren et al. 2018 (the pickled PNGs are 84x84)
    "resample": "lanczos",   # only used when image_size != 84
}

_WNID = re.compile(r"^n\d{8}$")


def _ren_classes(split: str) -> set[str]:
    with open(split_file(f"tieredimagenet_ren/{split}.csv"), newline="") as f:
        return {row[0] for row in csv.reader(f) if row}


def _labels(raw_dir: Path, split: str) -> tuple[np.ndarray, list[str]]:
    path = raw_dir / f"{split}_labels.pkl"
    with open(path, "rb") as f:
        data = load_pickle(f, path)
    try:
        labels = np.asarray(key(data, "label_specific"), dtype=np.int64)
        names = [as_str(s) for s in key(data, "label_specific_str")]
    except (KeyError, TypeError, ValueError) as e:
        raise MetareproError(f"{path}: expected a dict with label_specific and label_specific_str ({e!r})") from e
    if labels.ndim != 1 or (len(labels) and (labels.min() < 0 or labels.max() >= len(names))):
        raise MetareproError(f"{path}: label_specific does not index label_specific_str")
    if names and all(_WNID.match(n) for n in names):
        foreign = sorted(set(names) - _ren_classes(split))
        if foreign:
            raise MetareproError(f"{path}: {len(foreign)} classes are not in Ren et al.'s {split} split "
                                 f"(e.g. {foreign[0]})")
    if len(names) != CLASSES[split]:
        log.warning("tieredimagenet %s: %d classes (Ren et al.: %d)", split, len(names), CLASSES[split])
    return labels, names


def prepare(raw_dir: str | Path, out_dir: str | Path, options: dict[str, Any] | None = None) -> Path:
    """raw_dir (Ren et al.'s pickles) -> out_dir in the store format; returns out_dir."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    opts = resolve_options("tieredimagenet", options, DEFAULTS, {"resample": RESAMPLE})
    detect_layout("tieredimagenet", raw_dir, {"ren": FILES})
    provenance = verify_raw("tieredimagenet", raw_dir, FILES)
    size = opts["image_size"]
    with scratch_beside(out_dir) as scratch:
        splits = {}
        for split in SPLITS:
            labels, names = _labels(raw_dir, split)
            path = raw_dir / f"{split}_images_png.pkl"
            with open(path, "rb") as f:
                encoded = load_pickle(f, path)                 # list of PNG byte arrays
            if not isinstance(encoded, (list, tuple)) or len(encoded) != len(labels):
                n = len(encoded) if isinstance(encoded, (list, tuple)) else type(encoded).__name__
                raise MetareproError(f"{path}: {n} images for {len(labels)} labels")
            images = allocate(len(encoded), size, 3, scratch, split)       # (N, S, S, 3)
            for i, item in enumerate(encoded):
                data = item.encode("latin1") if isinstance(item, str) else item   # Python 2 str
                images[i] = load_image(data, mode="RGB", size=size, resample=opts["resample"],
                                       name=f"{path}[{i}]")
            del encoded
            splits[split] = (images, labels, names)
        return write_dataset(out_dir, "tieredimagenet", splits, opts, provenance)
