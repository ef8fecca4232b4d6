"""The one compact on-disk format shared by every prepared image dataset.

data/<dataset>/
  train.npz, val.npz, test.npz   images: uint8 (N, H, W, C); labels: int64 (N,) in [0, n_classes);
                                 class_names: str (n_classes,)
  meta.json                      dataset, image_size, channels, per-split counts, options, sha256 of
                                 every npz, source; written last, so its presence means "complete".
The whole directory is written under a temporary name and renamed into place, so a failed or
killed `prepare` never leaves a half-written data/<dataset>/.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..utils import MetareproError, atomic_path, sha256_file

SPLITS = ("train", "val", "test")


def write_split(out_dir: Path, split: str, images: np.ndarray, labels: np.ndarray,
                class_names: Sequence[str]) -> None:
    """Write one split. `labels` may be any ints; they are re-indexed to 0..n-1 in class_names order."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    images = np.ascontiguousarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"images must be uint8 (N, H, W, C), got {images.dtype} {images.shape}")
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels shape {labels.shape} does not match {images.shape[0]} images")
    if len(class_names) and (labels.min() < 0 or labels.max() >= len(class_names)):
        raise ValueError("labels must index class_names")
    np.savez(out_dir / f"{split}.npz", images=images, labels=labels,
             class_names=np.asarray(list(class_names), dtype=str))


def write_dataset(out_dir: str | Path, dataset: str, splits: dict[str, tuple[np.ndarray, np.ndarray, Sequence[str]]],
                  options: dict[str, Any], source: str) -> Path:
    """Atomically write a complete prepared dataset (all splits + meta.json) to out_dir."""
    out_dir = Path(out_dir)
    check_disjoint(dataset, {split: names for split, (_, _, names) in splits.items()})
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        meta: dict[str, Any] = {"dataset": dataset, "format": "metarepro-npz-v1", "source": source,
                                "options": options, "splits": {}}
        for split, (images, labels, names) in splits.items():
            write_split(tmp, split, images, labels, names)
            meta["splits"][split] = {"images": int(images.shape[0]), "classes": len(names),
                                     "sha256": sha256_file(tmp / f"{split}.npz")}
            meta["image_shape"] = list(images.shape[1:])
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


def check_disjoint(dataset: str, names: dict[str, Sequence[str]]) -> None:
    """Few-shot splits must not share a class: stop, naming the shared classes, before anything is written."""
    problems = []
    splits = list(names)
    for i, a in enumerate(splits):
        for b in splits[i + 1:]:
            shared = sorted(set(map(str, names[a])) & set(map(str, names[b])))
            if shared:
                problems.append(f"{a} and {b} share {len(shared)} class(es): {', '.join(shared[:20])}"
                                + (" ..." if len(shared) > 20 else ""))
    if problems:
        raise MetareproError(f"{dataset}: the splits' classes are not disjoint: " + "; ".join(problems))


@dataclass
class ImageSplit:
    """A loaded split, with images grouped by class for fast episode sampling."""
    images: np.ndarray          # uint8 (N, H, W, C)
    labels: np.ndarray          # int64 (N,)
    class_names: np.ndarray
    by_class: list[np.ndarray]  # indices into images, one array per class

    @property
    def n_classes(self) -> int:
        return len(self.by_class)


def load_split(data_dir: str | Path, split: str) -> ImageSplit:
    data_dir = Path(data_dir)
    meta_path = data_dir / "meta.json"
    if not meta_path.exists():
        raise MetareproError(f"{meta_path} not found: run `python -m metarepro prepare` (or `snakemake`) first")
    path = data_dir / f"{split}.npz"
    if not path.exists():
        raise MetareproError(f"{path} not found (split {split!r} of {data_dir})")
    with np.load(path, allow_pickle=False) as z:
        images, labels, names = z["images"], z["labels"], z["class_names"]
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=len(names))
    by_class = np.split(order, np.cumsum(counts)[:-1])
    return ImageSplit(images=images, labels=labels, class_names=names, by_class=by_class)
