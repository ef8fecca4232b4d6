"""CUB-200-2011 (Wah et al. 2011) with Chen et al. 2019's few-shot split -> uint8 (N, 84, 84, 3).

Raw layout: the official CUB_200_2011.tgz, read in place (CUB_200_2011/images/<class>/<img>.jpg,
images.txt, image_class_labels.txt, classes.txt). Split: Chen et al., "A Closer Look at Few-shot
Classification" (ICLR 2019), base/val/novel = train/val/test, 100/50/50 classes, from their file
lists (splits/cub_closerlook_chen; the part of each path after `images/` names the image).
Images are resized to image_size x image_size (aspect ratio not kept) with PIL LANCZOS; the few
grayscale images are converted to RGB.
"""
from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np

from ..utils import MetareproError
from .download import detect_layout, resolve_options, split_file, verify_raw
from .imageops import RESAMPLE, allocate, load_image, scratch_beside
from .store import SPLITS, write_dataset

ARCHIVE = "CUB_200_2011.tgz"
ROOT = "CUB_200_2011/"
CHEN_FILES = {"train": "base.json", "val": "val.json", "test": "novel.json"}

DEFAULTS: dict[str, Any] = {
    "image_size": 84,        # the usual 84x84 of MAML-style CUB benchmarks (as miniImageNet)
    "resample": "lanczos",
}


def load_split() -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """Chen et al.'s split: {split: [("<class>/<image>.jpg", label 0..199)]}, and the 200 class names."""
    out: dict[str, list[tuple[str, int]]] = {}
    names: list[str] = []
    for split, fname in CHEN_FILES.items():
        path = split_file(f"cub_closerlook_chen/{fname}")
        data = json.loads(path.read_text())
        names = data["label_names"]
        rows = []
        for image, label in zip(data["image_names"], data["image_labels"], strict=True):
            if "images/" not in image:
                raise MetareproError(f"{path}: image path {image!r} has no images/ folder")
            rows.append((image.split("images/", 1)[1], int(label)))
        out[split] = rows
    return out, names


def _txt(data: bytes) -> dict[str, str]:
    """'<id> <value>' lines -> {id: value}."""
    return dict(line.split(" ", 1) for line in data.decode().splitlines() if line.strip())


def prepare(raw_dir: str | Path, out_dir: str | Path, options: dict[str, Any] | None = None) -> Path:
    """raw_dir (CUB_200_2011.tgz) -> out_dir in the store format; returns out_dir."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    opts = resolve_options("cub", options, DEFAULTS, {"resample": RESAMPLE})
    detect_layout("cub", raw_dir, {"official": (ARCHIVE,)})
    provenance = verify_raw("cub", raw_dir, (ARCHIVE,))
    split_rows, label_names = load_split()
    where: dict[str, tuple[str, int]] = {}
    for split, rows in split_rows.items():
        for i, (rel, label) in enumerate(rows):
            if rel in where:
                raise MetareproError(f"Chen et al.'s split lists {rel} twice")
            where[rel] = (split, i)
    size, path = opts["image_size"], raw_dir / ARCHIVE
    texts: dict[str, bytes] = {}
    with scratch_beside(out_dir) as scratch:
        images = {s: allocate(len(split_rows[s]), size, 3, scratch, s) for s in SPLITS}   # (N, S, S, 3)
        seen: set[str] = set()
        try:
            with tarfile.open(path, "r:gz") as tf:
                for m in tf:                                   # sequential: fast on a .tgz
                    if not m.isfile() or not m.name.startswith(ROOT):
                        continue
                    name = m.name[len(ROOT):]
                    if name in ("images.txt", "image_class_labels.txt", "classes.txt"):
                        texts[name] = tf.extractfile(m).read()
                    elif name.startswith("images/") and (rel := name[len("images/"):]) in where:
                        split, i = where[rel]
                        images[split][i] = load_image(tf.extractfile(m).read(), mode="RGB", size=size,
                                                      resample=opts["resample"], name=f"{path}:{m.name}")
                        seen.add(rel)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise MetareproError(f"{path}: not a readable tar.gz archive ({e})") from e
        missing = sorted(set(where) - seen)
        if missing:
            raise MetareproError(f"{path} lacks {len(missing)} images of Chen et al.'s split "
                                 f"(e.g. {ROOT}images/{missing[0]})")
        _check_labels(path, texts, split_rows, label_names)
        splits = {}
        for split in SPLITS:
            labels = np.array([label for _, label in split_rows[split]], dtype=np.int64)
            classes = sorted(set(labels.tolist()))
            index = {c: k for k, c in enumerate(classes)}
            splits[split] = (images[split], np.array([index[c] for c in labels], dtype=np.int64),
                             [label_names[c] for c in classes])
        return write_dataset(out_dir, "cub", splits, opts, provenance)


def _check_labels(path: Path, texts: dict[str, bytes], split_rows: dict[str, list[tuple[str, int]]],
                  label_names: list[str]) -> None:
    """Chen et al.'s labels must agree with the archive's own images.txt / image_class_labels.txt / classes.txt."""
    missing = [t for t in ("images.txt", "image_class_labels.txt", "classes.txt") if t not in texts]
    if missing:
        raise MetareproError(f"{path} lacks {ROOT}{f', {ROOT}'.join(missing)}")
    image_ids = {v.strip(): k for k, v in _txt(texts["images.txt"]).items()}
    class_of = _txt(texts["image_class_labels.txt"])
    class_names = {k: v.strip() for k, v in _txt(texts["classes.txt"]).items()}
    for rows in split_rows.values():
        for rel, label in rows:
            cid = class_of.get(image_ids.get(rel, ""), "").strip()
            if class_names.get(cid) != label_names[label] or rel.split("/")[0] != label_names[label]:
                raise MetareproError(f"{path}: {rel} is class {class_names.get(cid)!r} in the archive but "
                                     f"{label_names[label]!r} in Chen et al.'s split")
