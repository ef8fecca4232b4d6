"""CIFAR-FS (Bertinetto et al. 2019) and FC100 (Oreshkin et al. 2018): class splits of CIFAR-100, 32x32x3.

Raw layouts (auto-detected):
  official  cifar-100-python.tar.gz (Krizhevsky 2009): pickled `train` / `test` batches (data rows of
            3072 uint8, CHW flattened; fine_labels, coarse_labels) and `meta` (label names)
  mirror    cifar100_all60000_uint8.npz (images NHWC, fine/coarse labels and names) + meta
Both splits use all 600 images of each class (train and test batches merged). Within a class the
images are put in a canonical order (by the SHA-1 of their pixels), so that the official archive
and the mirror, which hold the same 60,000 images in different orders, give identical outputs.
  cifarfs  splits/cifar_fs_torchmeta: [superclass, class] pairs, 64/16/20 classes
  fc100    splits/fc100_torchmeta: superclasses, 12/4/4 (x 5 classes = 60/20/20)
"""
from __future__ import annotations

import hashlib
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import MetareproError
from .download import detect_layout, resolve_options, split_file, verify_raw
from .imageops import RESAMPLE, as_str, key, load_pickle, resize_array
from .store import SPLITS, write_dataset

MIRROR_FILES = ("cifar100_all60000_uint8.npz", "meta")
OFFICIAL_FILES = ("cifar-100-python.tar.gz",)

DEFAULTS: dict[str, Any] = {
    "image_size": 32,        # native CIFAR resolution, as in Bertinetto et al. and Oreshkin et al.
    "resample": "lanczos",   # only used when image_size != 32
}


@dataclass
class Cifar100:
    images: np.ndarray       # uint8 (60000, 32, 32, 3) in canonical order
    fine: np.ndarray         # int64 (60000,)
    coarse: np.ndarray       # int64 (60000,)
    fine_names: list[str]
    coarse_names: list[str]
    provenance: str


def _read_mirror(raw_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    path = raw_dir / MIRROR_FILES[0]
    with np.load(path, allow_pickle=False) as z:
        images, fine, coarse = z["images"], z["fine_labels"], z["coarse_labels"]
        fine_names, coarse_names = [str(s) for s in z["fine_label_names"]], [str(s) for s in z["coarse_label_names"]]
    with open(raw_dir / "meta", "rb") as f:
        meta = load_pickle(f, raw_dir / "meta")
    if [as_str(s) for s in key(meta, "fine_label_names")] != fine_names or \
            [as_str(s) for s in key(meta, "coarse_label_names")] != coarse_names:
        raise MetareproError(f"{path}: label names differ from those of {raw_dir / 'meta'}")
    return images, fine, coarse, fine_names, coarse_names


def _read_official(raw_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str], list[str]]:
    path = raw_dir / OFFICIAL_FILES[0]
    parts: dict[str, Any] = {}
    try:
        with tarfile.open(path, "r:gz") as tf:
            for m in tf:
                if m.isfile() and m.name in ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"):
                    parts[m.name.split("/")[-1]] = load_pickle(tf.extractfile(m), f"{path}:{m.name}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise MetareproError(f"{path}: not a readable tar.gz archive ({e})") from e
    missing = [p for p in ("train", "test", "meta") if p not in parts]
    if missing:
        raise MetareproError(f"{path} lacks cifar-100-python/{', cifar-100-python/'.join(missing)}")
    try:
        data = np.concatenate([np.asarray(key(parts[p], "data"), dtype=np.uint8) for p in ("train", "test")])
        fine = np.concatenate([np.asarray(key(parts[p], "fine_labels"), dtype=np.int64) for p in ("train", "test")])
        coarse = np.concatenate([np.asarray(key(parts[p], "coarse_labels"), dtype=np.int64) for p in ("train", "test")])
        names = [as_str(s) for s in key(parts["meta"], "fine_label_names")], \
            [as_str(s) for s in key(parts["meta"], "coarse_label_names")]
    except (KeyError, ValueError) as e:
        raise MetareproError(f"{path}: unexpected batch contents ({e!r})") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise MetareproError(f"{path}: data rows of {data.shape[1:]} values, expected 3072")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)     # (N, 3072) -> (N, C, H, W) -> (N, H, W, C)
    return np.ascontiguousarray(images), fine, coarse, *names


def load_cifar100(raw_dir: str | Path) -> Cifar100:
    """All 60,000 CIFAR-100 images from either raw layout, checksum-verified, in canonical order."""
    raw_dir = Path(raw_dir)
    dataset = "cifarfs"      # cifarfs and fc100 share the raw files (and SOURCES entry)
    layout = detect_layout(dataset, raw_dir, {"mirror": MIRROR_FILES, "official": OFFICIAL_FILES})
    files = MIRROR_FILES if layout == "mirror" else OFFICIAL_FILES
    provenance = verify_raw(dataset, raw_dir, files)
    images, fine, coarse, fine_names, coarse_names = (_read_mirror if layout == "mirror" else _read_official)(raw_dir)
    where = raw_dir / files[0]
    if images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8 or not len(images) == len(fine) == len(coarse):
        raise MetareproError(f"{where}: images {images.dtype} {images.shape}, {len(fine)} labels")
    if fine.min() < 0 or fine.max() >= len(fine_names) or coarse.min() < 0 or coarse.max() >= len(coarse_names):
        raise MetareproError(f"{where}: labels out of range of the label names")
    counts = np.bincount(fine, minlength=len(fine_names))
    if counts.min() != counts.max():
        raise MetareproError(f"{where}: classes have {counts.min()}..{counts.max()} images, expected equal counts")
    digests = [hashlib.sha1(img.tobytes()).digest() for img in images]
    order = sorted(range(len(images)), key=lambda i: (int(fine[i]), digests[i]))
    order = np.asarray(order, dtype=np.int64)
    return Cifar100(images[order], fine[order], coarse[order], fine_names, coarse_names, provenance)


def _superclass_of(cifar: Cifar100) -> dict[int, int]:
    pairs = set(zip(cifar.fine.tolist(), cifar.coarse.tolist()))
    sup = dict(pairs)
    if len(sup) != len(pairs):
        raise MetareproError("CIFAR-100 raw data maps a fine class to several superclasses")
    return sup


def _write(name: str, cifar: Cifar100, classes: dict[str, list[int]], out_dir: Path, opts: dict[str, Any]) -> Path:
    size, resample = opts["image_size"], opts["resample"]
    splits = {}
    for split in SPLITS:
        idx = np.concatenate([np.flatnonzero(cifar.fine == c) for c in classes[split]])
        labels = np.concatenate([np.full(int((cifar.fine == c).sum()), k, dtype=np.int64)
                                 for k, c in enumerate(classes[split])])
        images = cifar.images[idx]
        if size != 32:
            images = np.stack([resize_array(img, size, resample) for img in images])
        splits[split] = (images, labels, [cifar.fine_names[c] for c in classes[split]])
    return write_dataset(out_dir, name, splits, opts, cifar.provenance)


def prepare_cifarfs(raw_dir: str | Path, out_dir: str | Path, options: dict[str, Any] | None = None) -> Path:
    """CIFAR-FS: 64/16/20 CIFAR-100 classes (Bertinetto et al. 2019, torchmeta's split files)."""
    opts = resolve_options("cifarfs", options, DEFAULTS, {"resample": RESAMPLE})
    cifar = load_cifar100(raw_dir)
    sup = _superclass_of(cifar)
    classes: dict[str, list[int]] = {}
    for split in SPLITS:
        path = split_file(f"cifar_fs_torchmeta/{split}.json")
        classes[split] = []
        for superclass, fine in json.loads(path.read_text()):
            if fine not in cifar.fine_names:
                raise MetareproError(f"{path}: class {fine!r} is not a CIFAR-100 class")
            c = cifar.fine_names.index(fine)
            if cifar.coarse_names[sup[c]] != superclass:
                raise MetareproError(f"{path}: {fine!r} is in superclass {cifar.coarse_names[sup[c]]!r}, "
                                     f"not {superclass!r}")
            classes[split].append(c)
    return _write("cifarfs", cifar, classes, Path(out_dir), opts)


def prepare_fc100(raw_dir: str | Path, out_dir: str | Path, options: dict[str, Any] | None = None) -> Path:
    """FC100: 12/4/4 CIFAR-100 superclasses, each with its 5 classes (Oreshkin et al. 2018)."""
    opts = resolve_options("fc100", options, DEFAULTS, {"resample": RESAMPLE})
    cifar = load_cifar100(raw_dir)
    sup = _superclass_of(cifar)
    classes: dict[str, list[int]] = {}
    for split in SPLITS:
        path = split_file(f"fc100_torchmeta/{split}.json")
        classes[split] = []
        for superclass in json.loads(path.read_text()):
            if superclass not in cifar.coarse_names:
                raise MetareproError(f"{path}: {superclass!r} is not a CIFAR-100 superclass")
            s = cifar.coarse_names.index(superclass)
            members = sorted(c for c, cs in sup.items() if cs == s)   # fine-label order (alphabetical)
            if len(members) != 5:
                raise MetareproError(f"superclass {superclass!r} has {len(members)} classes in the raw data, expected 5")
            classes[split] += members
    return _write("fc100", cifar, classes, Path(out_dir), opts)
