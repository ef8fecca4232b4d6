"""Tiny raw datasets in the OFFICIAL formats (and in the mirror's), built in a test's tmp_path.

Each builder writes real files a user would download (zips of 1-bit PNGs, the pickled CIFAR
batches in a .tar.gz, Ren et al.'s pickles in a .tar, CUB's .tgz) but with a handful of images,
and returns what the prepared dataset should contain.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from metarepro.data.download import SPLITS_DIR

SPLITS = ("train", "val", "test")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def md5(path: Path) -> str:
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def write_sums(root: Path, name: str = "SHA256SUMS") -> Path:
    """A `sha256sum`-style listing ("<hex>  ./rel") of every file under root, like the mirror's."""
    lines = [f"{sha256(p)}  ./{p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != name]
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _jpg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


# --- Omniglot ---------------------------------------------------------------------------------

def omniglot_glyphs(alphabets: dict[str, dict[str, int]], size: int = 105, seed: int = 0
                    ) -> dict[str, tuple[str, int, np.ndarray]]:
    """{"alphabet/characterXX": (set, char_id, bool (20, size, size) with True = background)}.

    alphabets: {"images_background": {"Alpha": 2, ...}, "images_evaluation": {...}} characters per
    alphabet; char ids run on across alphabets and sets, as in the official files.
    """
    rng = np.random.default_rng(seed)
    out, char_id = {}, 0
    for set_name, alphas in alphabets.items():
        for alphabet, n in alphas.items():
            for c in range(1, n + 1):
                char_id += 1
                glyphs = np.ones((20, size, size), dtype=bool)
                for d in range(20):                       # a few ink strokes (False) per drawing
                    for _ in range(3):                    # strokes in the middle; the border stays paper
                        y, x = rng.integers(size // 10, size // 2, 2)
                        h, w = rng.integers(size // 16 + 1, size // 4 + 2, 2)
                        t = max(1, size // 25)
                        glyphs[d, y:y + h, x:x + t] = False
                        glyphs[d, y:y + t, x:x + w] = False
                out[f"{alphabet}/character{c:02d}"] = (set_name, char_id, glyphs)
    return out


def omniglot_official(folder: Path, glyphs: dict) -> list[Path]:
    """images_background.zip / images_evaluation.zip with 1-bit PNGs <set>/<alphabet>/<char>/<id>_<drawer>.png."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for set_name in ("images_background", "images_evaluation"):
        path = folder / f"{set_name}.zip"
        with zipfile.ZipFile(path, "w") as zf:
            for name, (s, char_id, g) in glyphs.items():
                if s == set_name:
                    for d in range(20):
                        zf.writestr(f"{s}/{name}/{char_id:04d}_{d + 1:02d}.png", _png(Image.fromarray(g[d])))
        paths.append(path)
    return paths


def omniglot_mirror(root: Path, glyphs: dict) -> Path:
    """root/omniglot/{images_background,images_evaluation}.npz + omniglot_char_index.csv (mirror layout)."""
    folder = root / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    rows = [("char_id", "npz_file", "npz_index", "alphabet", "character")]
    for set_name in ("images_background", "images_evaluation"):
        chars = [(n, cid, g) for n, (s, cid, g) in glyphs.items() if s == set_name]
        np.savez(folder / f"{set_name}.npz", images=np.stack([g for _, _, g in chars]),
                 labels=np.repeat(np.arange(len(chars)), 20).reshape(len(chars), 20))
        rows += [(cid, f"{set_name}.npz", i, *n.split("/")) for i, (n, cid, _) in enumerate(chars)]
    with open(folder / "omniglot_char_index.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return folder


# --- CIFAR-100 --------------------------------------------------------------------------------

def cifar100_names() -> tuple[list[str], list[str], dict[str, str]]:
    """The real fine / coarse names (alphabetical, as in CIFAR-100's meta) and fine -> coarse, from the split files."""
    pairs = [p for s in SPLITS for p in json.loads((SPLITS_DIR / f"cifar_fs_torchmeta/{s}.json").read_text())]
    sup = {fine: coarse for coarse, fine in pairs}
    return sorted(sup), sorted(set(sup.values())), sup


def cifar100_data(per_class: int = 2, seed: int = 0) -> dict:
    fine_names, coarse_names, sup = cifar100_names()
    rng = np.random.default_rng(seed)
    fine = np.repeat(np.arange(100), per_class)
    rng.shuffle(fine)
    coarse = np.array([coarse_names.index(sup[fine_names[f]]) for f in fine])
    images = rng.integers(0, 256, (len(fine), 32, 32, 3), dtype=np.uint8)
    return {"images": images, "fine": fine, "coarse": coarse, "fine_names": fine_names, "coarse_names": coarse_names}


def cifar100_official(path: Path, data: dict, n_test: int = 40) -> Path:
    """cifar-100-python.tar.gz: pickled train / test batches (rows of 3072 = CHW) and meta.

    The train batch has str keys and the test batch bytes keys, so both ways a Python 2 pickle
    can load (encoding latin1 / bytes) are exercised.
    """
    rows = data["images"].transpose(0, 3, 1, 2).reshape(len(data["images"]), 3072)   # (N, H, W, C) -> (N, 3072)
    n = len(rows) - n_test
    train = {"filenames": [f"img{i}.png" for i in range(n)], "data": rows[:n],
             "fine_labels": data["fine"][:n].tolist(), "coarse_labels": data["coarse"][:n].tolist()}
    test = {b"data": rows[n:], b"fine_labels": data["fine"][n:].tolist(), b"coarse_labels": data["coarse"][n:].tolist()}
    meta = {"fine_label_names": data["fine_names"], "coarse_label_names": data["coarse_names"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        for name, obj in (("train", train), ("test", test), ("meta", meta)):
            _add(tf, f"cifar-100-python/{name}", pickle.dumps(obj, protocol=2))
    return path


def cifar100_mirror(root: Path, data: dict, seed: int = 1) -> Path:
    """root/cifar100/cifar100_all60000_uint8.npz (in another order than the official batches) + meta."""
    folder = root / "cifar100"
    folder.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(data["fine"]))
    np.savez(folder / "cifar100_all60000_uint8.npz", images=data["images"][order], fine_labels=data["fine"][order],
             coarse_labels=data["coarse"][order], fine_label_names=np.array(data["fine_names"]),
             coarse_label_names=np.array(data["coarse_names"]))
    meta = {"fine_label_names": data["fine_names"], "coarse_label_names": data["coarse_names"]}
    (folder / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


# --- miniImageNet -----------------------------------------------------------------------------

def miniimagenet_layout(folder: Path, per_class: int = 1, seed: int = 0) -> dict[str, list[tuple[str, str]]]:
    """images/*.jpg + train/val/test.csv using the first rows of each class of the real Ravi csvs.

    Every third image is 100x90 (not 84x84) to exercise resizing. Returns the csv rows per split.
    """
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    out = {}
    for split in SPLITS:
        with open(SPLITS_DIR / f"miniimagenet_ravi/{split}.csv", newline="") as f:
            ravi = list(csv.reader(f))[1:]
        rows, count = [], {}
        for name, label in ravi:
            if count.get(label, 0) < per_class:
                count[label] = count.get(label, 0) + 1
                rows.append((name, label))
        for i, (name, _) in enumerate(rows):
            h, w = (90, 100) if i % 3 == 0 else (84, 84)
            img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            (folder / "images" / name).write_bytes(_jpg(img))
        with open(folder / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("filename", "label"), *rows])
        out[split] = rows
    return out


def miniimagenet_mirror(root: Path, per_class: int = 1) -> Path:
    """root/miniimagenet-subset60/ with its images.sha256 index."""
    folder = root / "miniimagenet-subset60"
    miniimagenet_layout(folder, per_class)
    lines = [f"{sha256(p)}  images/{p.name}" for p in sorted((folder / "images").iterdir())]
    (folder / "images.sha256").write_text("\n".join(lines) + "\n")
    return folder


def miniimagenet_pickles(folder: Path, per_class: int = 2, seed: int = 0, protocol: int = 4
                         ) -> dict[str, list[tuple[str, np.ndarray]]]:
    """learn2learn's mini-imagenet-cache-{train,validation,test}.pkl with every Ravi class of each split and
    `per_class` random 84x84 images each, rows shuffled (class_dict maps each wnid to its rows).

    Returns {split: [(wnid, image), ...]} in class_dict's order per class."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, name in (("train", "train"), ("val", "validation"), ("test", "test")):
        with open(SPLITS_DIR / f"miniimagenet_ravi/{split}.csv", newline="") as f:
            wnids = list(dict.fromkeys(label for _, label in list(csv.reader(f))[1:]))
        n = len(wnids) * per_class
        images = rng.integers(0, 256, (n, 84, 84, 3), dtype=np.uint8)
        rows = rng.permutation(n)
        class_dict = {w: [int(r) for r in rows[k * per_class:(k + 1) * per_class]] for k, w in enumerate(wnids)}
        data = {"image_data": images, "class_dict": class_dict}
        (folder / f"mini-imagenet-cache-{name}.pkl").write_bytes(pickle.dumps(data, protocol=protocol))
        out[split] = [(w, images[r]) for w in wnids for r in class_dict[w]]
    return out


def tar_folder(path: Path, folder: Path, prefix: str) -> Path:
    """A .tar(.gz) of folder's files under `prefix/` (like the mini-imagenet.tar.gz archives around)."""
    mode = "w:gz" if path.name.endswith("gz") else "w"
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                _add(tf, f"{prefix}/{p.relative_to(folder).as_posix()}", p.read_bytes())
    return path


# --- tieredImageNet ---------------------------------------------------------------------------

def tiered_official(folder: Path, classes: tuple[int, int, int] = (3, 2, 2), per_class: int = 2,
                    seed: int = 0) -> dict[str, dict]:
    """Ren et al.'s {split}_images_png.pkl (list of PNG byte arrays) + {split}_labels.pkl, real wnids."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n_cls in zip(SPLITS, classes):
        with open(SPLITS_DIR / f"tieredimagenet_ren/{split}.csv", newline="") as f:
            ren = [row for row in csv.reader(f) if row][:n_cls]
        specific = np.repeat(np.arange(n_cls), per_class)
        general_names = sorted({g for _, g in ren})
        general = np.array([general_names.index(ren[c][1]) for c in specific])
        images = rng.integers(0, 256, (len(specific), 84, 84, 3), dtype=np.uint8)
        encoded = [np.frombuffer(_png(Image.fromarray(img)), dtype=np.uint8) for img in images]
        labels = {"label_specific": specific, "label_general": general,
                  "label_specific_str": [w for w, _ in ren], "label_general_str": general_names}
        (folder / f"{split}_images_png.pkl").write_bytes(pickle.dumps(encoded, protocol=2))
        (folder / f"{split}_labels.pkl").write_bytes(pickle.dumps(labels, protocol=2))
        out[split] = {"images": images, "labels": specific, "names": [w for w, _ in ren]}
    return out


# --- CUB-200-2011 -----------------------------------------------------------------------------

def cub_official(path: Path, classes: dict[str, list[int]], per_class: int = 2, seed: int = 0
                 ) -> tuple[dict[str, list[tuple[str, int]]], list[str]]:
    """CUB_200_2011.tgz with `per_class` jpgs for each class index in `classes` (split -> class ids).

    Uses the real class names (from Chen et al.'s split file); images have assorted sizes and one
    is grayscale. Returns a split in the form of cub.load_split() for these images.
    """
    rng = np.random.default_rng(seed)
    names = json.loads((SPLITS_DIR / "cub_closerlook_chen/base.json").read_text())["label_names"]
    split, images_txt, labels_txt, k = {}, [], [], 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "attributes.txt", b"1 has_bill_shape::curved\n")
        for s, ids in classes.items():
            split[s] = []
            for c in ids:
                for j in range(per_class):
                    k += 1
                    rel = f"{names[c]}/{names[c].split('.', 1)[1]}_{j:04d}_{k}.jpg"
                    h, w = int(rng.integers(60, 200)), int(rng.integers(60, 200))
                    arr = rng.integers(0, 256, (h, w) if k == 2 else (h, w, 3), dtype=np.uint8)  # image 2: grayscale
                    _add(tf, f"CUB_200_2011/images/{rel}", _jpg(Image.fromarray(arr)))
                    images_txt.append(f"{k} {rel}")
                    labels_txt.append(f"{k} {c + 1}")
                    split[s].append((rel, c))
        _add(tf, "CUB_200_2011/images.txt", ("\n".join(images_txt) + "\n").encode())
        _add(tf, "CUB_200_2011/image_class_labels.txt", ("\n".join(labels_txt) + "\n").encode())
        _add(tf, "CUB_200_2011/classes.txt", "".join(f"{i + 1} {n}\n" for i, n in enumerate(names)).encode())
    return split, names
