"""Omniglot (Lake et al. 2015, Science) -> uint8 (N, 28, 28, 1) with ink = 255, one class per character.

Raw layouts (auto-detected):
  official  images_background.zip, images_evaluation.zip  (brendenlake/omniglot, PNGs, white = background)
  mirror    images_background.npz, images_evaluation.npz (bool, True = background), omniglot_char_index.csv
Both give identical output. Pixels are inverted w.r.t. the PNGs (ink 255, background 0), as in
Finn et al.'s data generator (`1 - image / 255`).

Splits (option `split`):
  vinyals   Vinyals et al. 2016 (Ren et al.'s lists): 1028 train / 172 val / 423 test characters.
  finn1200  Finn et al. 2017 (github.com/cbfinn/maml, data_generator.py): the 1623 characters
            shuffled with seed 1, first 1200 for meta-training of which the last 100 are held out
            for validation (as num_val = 100 in their code), the remaining 423 for test.
            Their order came from os.listdir and Python 2's shuffle, which cannot be reproduced
            exactly; we shuffle the sorted "alphabet/characterXX" names with Python 3's
            random.Random(1). So it is 1100 train / 100 val / 423 test characters.
Rotations are not materialized: `rotations` is recorded in meta.json and the sampler applies them.

Resizing (option `resample`): images are converted to 8-bit grayscale and resized with LANCZOS
(anti-aliased grey levels). Note that Finn et al.'s resize_images.py calls
Image.resize((28, 28), resample=Image.LANCZOS) on the 1-bit PNGs, for which PIL silently uses
NEAREST (Image.resize forces NEAREST for mode "1"): their 28x28 images are binary. Set
`resample: nearest` to reproduce that exactly.
"""
from __future__ import annotations

import contextlib
import csv
import random
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..utils import MetareproError
from .download import detect_layout, resolve_options, split_file, verify_raw
from .imageops import RESAMPLE, resize_array, open_image, to_hwc
from .store import SPLITS, write_dataset

MIRROR_FILES = ("images_background.npz", "images_evaluation.npz", "omniglot_char_index.csv")
OFFICIAL_FILES = ("images_background.zip", "images_evaluation.zip")
N_DRAWERS = 20               # every character is drawn by 20 people

DEFAULTS: dict[str, Any] = {
    "image_size": 28,        # Vinyals et al. 2016; Finn et al. 2017 (PIL resize to 28x28)
    "split": "vinyals",
    "rotations": True,       # 90/180/270-degree rotations as new classes (Santoro et al. 2016, Finn et al.)
    "resample": "lanczos",   # what Finn et al.'s script asks for; what PIL did there is NEAREST (see docstring)
}

FINN_TRAIN = 1200            # Finn et al.: num_train = 1200 (incl. num_val)
FINN_VAL = 100               # Finn et al.: num_val = 100
FINN_SEED = 1                # Finn et al.: random.seed(1)

_PNG = re.compile(r"^(?P<alphabet>[^/]+)/(?P<character>[^/]+)/(?P<id>\d+)_(?P<drawer>\d+)\.png$")


def vinyals_split(names: Sequence[str]) -> dict[str, list[str]]:
    """The Vinyals et al. character split; it must cover exactly the characters present."""
    lists = {s: split_file(f"omniglot_vinyals_ren/{s}.txt").read_text().split() for s in SPLITS}
    listed = {n for v in lists.values() for n in v}
    missing, extra = sorted(listed - set(names)), sorted(set(names) - listed)
    if missing or extra:
        raise MetareproError(f"omniglot raw data does not match the Vinyals split: {len(missing)} listed characters "
                             f"missing (e.g. {missing[:3]}), {len(extra)} unlisted (e.g. {extra[:3]})")
    return lists


def finn_split(names: Sequence[str], n_train: int = FINN_TRAIN, n_val: int = FINN_VAL,
               seed: int = FINN_SEED) -> dict[str, list[str]]:
    """Finn et al.'s seeded character shuffle: [:n_train-n_val] train, [n_train-n_val:n_train] val, rest test."""
    if len(names) <= n_train:
        raise MetareproError(f"finn1200 split needs more than {n_train} characters, the raw data has {len(names)}")
    order = sorted(names)
    random.Random(seed).shuffle(order)
    return {"train": order[:n_train - n_val], "val": order[n_train - n_val:n_train], "test": order[n_train:]}


SPLITTERS: dict[str, Callable[[Sequence[str]], dict[str, list[str]]]] = {
    "vinyals": vinyals_split,
    "finn1200": finn_split,
}


def _mirror_reader(raw_dir: Path, stack: contextlib.ExitStack) -> dict[str, Callable[[], np.ndarray]]:
    """{"alphabet/characterXX": () -> uint8 (20, 105, 105), 255 = background} in char_id order."""
    index = raw_dir / "omniglot_char_index.csv"
    with open(index, newline="") as f:
        rows = list(csv.DictReader(f))
    need = {"char_id", "npz_file", "npz_index", "alphabet", "character"}
    if not rows or not need <= set(rows[0]):
        raise MetareproError(f"{index}: expected columns {sorted(need)}")
    arrays = {}
    for name in sorted({r["npz_file"] for r in rows}):
        if name not in MIRROR_FILES:
            raise MetareproError(f"{index} refers to unknown file {name}")
        with np.load(raw_dir / name, allow_pickle=False) as z:
            arrays[name] = z["images"]                     # bool (chars, 20, 105, 105), True = background
        if arrays[name].ndim != 4 or arrays[name].shape[1] != N_DRAWERS:
            raise MetareproError(f"{raw_dir / name}: images shape {arrays[name].shape}, expected (n, 20, H, W)")
    chars: dict[str, Callable[[], np.ndarray]] = {}
    for r in sorted(rows, key=lambda r: int(r["char_id"])):
        a, i = arrays[r["npz_file"]], int(r["npz_index"])
        if not 0 <= i < len(a):
            raise MetareproError(f"{index}: char_id {r['char_id']} points past the end of {r['npz_file']}")
        chars[f"{r['alphabet']}/{r['character']}"] = lambda a=a, i=i: a[i].astype(np.uint8) * np.uint8(255)
    return chars


def _official_reader(raw_dir: Path, stack: contextlib.ExitStack) -> dict[str, Callable[[], np.ndarray]]:
    """Same as _mirror_reader, reading the PNGs straight from the official zips."""
    found: dict[str, tuple[int, zipfile.ZipFile, dict[int, str]]] = {}
    for zname in OFFICIAL_FILES:
        try:
            zf = stack.enter_context(zipfile.ZipFile(raw_dir / zname))
        except zipfile.BadZipFile as e:
            raise MetareproError(f"{raw_dir / zname}: not a zip archive ({e})") from e
        top = zname[:-len(".zip")] + "/"
        for member in zf.namelist():
            m = _PNG.match(member[len(top):]) if member.startswith(top) else None
            if not m:
                continue
            name = f"{m['alphabet']}/{m['character']}"
            char_id, _, drawers = found.setdefault(name, (int(m["id"]), zf, {}))
            if found[name][1] is not zf or int(m["id"]) != char_id:
                raise MetareproError(f"{raw_dir / zname}: character {name} appears twice ({member})")
            drawers[int(m["drawer"])] = member
    chars: dict[str, Callable[[], np.ndarray]] = {}
    for name, (_, zf, drawers) in sorted(found.items(), key=lambda kv: kv[1][0]):
        if sorted(drawers) != list(range(1, N_DRAWERS + 1)):
            raise MetareproError(f"{zf.filename}: character {name} has drawers {sorted(drawers)}, expected 1..20")

        def load(zf: zipfile.ZipFile = zf, members: list[str] = [drawers[d] for d in sorted(drawers)]) -> np.ndarray:
            return np.stack([to_hwc(open_image(zf.read(m), "L", f"{zf.filename}:{m}"))[..., 0] for m in members])
        chars[name] = load
    if not chars:
        raise MetareproError(f"{raw_dir}: no character PNGs found in {' / '.join(OFFICIAL_FILES)}")
    return chars


def prepare(raw_dir: str | Path, out_dir: str | Path, options: dict[str, Any] | None = None) -> Path:
    """raw_dir (official zips or mirror npz) -> out_dir in the store format; returns out_dir."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    opts = resolve_options("omniglot", options, DEFAULTS, {"split": SPLITTERS, "resample": RESAMPLE,
                                                             "rotations": (True, False)})
    layout = detect_layout("omniglot", raw_dir, {"mirror": MIRROR_FILES, "official": OFFICIAL_FILES})
    provenance = verify_raw("omniglot", raw_dir, MIRROR_FILES if layout == "mirror" else OFFICIAL_FILES)
    size, resample = opts["image_size"], opts["resample"]
    splits = {}
    with contextlib.ExitStack() as stack:
        chars = (_mirror_reader if layout == "mirror" else _official_reader)(raw_dir, stack)
        split_names = SPLITTERS[opts["split"]](list(chars))
        for split in SPLITS:
            names = split_names[split]
            images = np.empty((len(names) * N_DRAWERS, size, size, 1), dtype=np.uint8)  # (classes*20, S, S, 1)
            for c, name in enumerate(names):
                drawn = chars[name]()                                                  # (20, H, W), 255 = paper
                for d in range(N_DRAWERS):
                    images[c * N_DRAWERS + d, :, :, 0] = 255 - resize_array(drawn[d], size, resample)
            labels = np.repeat(np.arange(len(names), dtype=np.int64), N_DRAWERS)
            splits[split] = (images, labels, names)
    return write_dataset(out_dir, "omniglot", splits, opts, provenance)
