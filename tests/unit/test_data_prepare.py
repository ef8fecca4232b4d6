"""prepare() of every image dataset on tiny archives in the official formats (and the mirror's)."""
from __future__ import annotations

import csv
import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from metarepro.data import cifar, cub, miniimagenet, omniglot, tieredimagenet
from metarepro.data import download
from metarepro.data.download import SOURCES, SPLITS_DIR, fetch
from metarepro.data.store import load_split
from metarepro.utils import MetareproError

try:
    from . import archives
except ImportError:          # tests/unit is not a package
    import archives

REAL_MIRROR = Path(__file__).resolve().parents[3] / "shared" / "datasets"
PUBLISHED = dict(SOURCES)
GLYPHS = {"images_background": {"Alpha": 3, "Gamma": 2}, "images_evaluation": {"Beta": 3}}   # 8 characters


@pytest.fixture(autouse=True)
def _no_user_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("METAREPRO_")]:
        monkeypatch.delenv(var)


def unpin(monkeypatch: pytest.MonkeyPatch, *datasets: str) -> None:
    """Accept the tiny files: no official md5s, no mirror pins (fetch then records their sha256)."""
    for name in datasets:
        src = SOURCES[name]
        mirror = src.mirror and dataclasses.replace(src.mirror, files={k: None for k in src.mirror.files})
        official = tuple(dataclasses.replace(rf, md5=None) for rf in src.official)
        monkeypatch.setitem(SOURCES, name, dataclasses.replace(src, mirror=mirror, official=official))


def load(out: Path) -> dict:
    meta = json.loads((out / "meta.json").read_text())
    return {"meta": meta, **{s: load_split(out, s) for s in ("train", "val", "test")}}


def tiny_split(names: list[str]) -> dict[str, list[str]]:
    return {"train": names[:4], "val": names[4:6], "test": names[6:]}


# --- Omniglot ---------------------------------------------------------------------------------

@pytest.fixture
def omniglot_raw(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """The same 8 characters as official zips and as mirror npz, each fetched into a raw folder."""
    unpin(monkeypatch, "omniglot")
    glyphs = archives.omniglot_glyphs(GLYPHS)
    archives.omniglot_official(tmp_path / "dl", glyphs)
    archives.omniglot_mirror(tmp_path / "mirror", glyphs)
    archives.write_sums(tmp_path / "mirror")
    official = fetch("omniglot", tmp_path / "raw_official", None, source_dir=tmp_path / "dl")
    mirror = fetch("omniglot", tmp_path / "raw_mirror", tmp_path / "mirror")
    monkeypatch.setitem(omniglot.SPLITTERS, "vinyals", tiny_split)
    monkeypatch.setitem(omniglot.SPLITTERS, "finn1200", functools.partial(omniglot.finn_split, n_train=6, n_val=2))
    return {"official": official, "mirror": mirror, "glyphs": glyphs}


def test_omniglot_official_and_mirror_agree(omniglot_raw, tmp_path: Path) -> None:
    a = load(omniglot.prepare(omniglot_raw["official"], tmp_path / "a", {}))
    b = load(omniglot.prepare(omniglot_raw["mirror"], tmp_path / "b", {}))
    names = list(omniglot_raw["glyphs"])                       # char_id order
    for s, n_cls in (("train", 4), ("val", 2), ("test", 2)):
        x = a[s]
        assert x.images.shape == (n_cls * 20, 28, 28, 1) and x.images.dtype == np.uint8
        assert x.labels.tolist() == np.repeat(np.arange(n_cls), 20).tolist()
        assert list(x.class_names) == tiny_split(names)[s]
        np.testing.assert_array_equal(x.images, b[s].images)
    assert a["meta"]["options"] == {"image_size": 28, "split": "vinyals", "rotations": True, "resample": "lanczos"}
    assert a["meta"]["source"].startswith("dir:") and b["meta"]["source"].startswith("mirror:")


def test_omniglot_ink_is_255(omniglot_raw, tmp_path: Path) -> None:
    x = load(omniglot.prepare(omniglot_raw["mirror"], tmp_path / "o", {"image_size": 105, "rotations": False}))
    glyph = omniglot_raw["glyphs"]["Alpha/character01"][2][2]  # drawer 3; bool, True = paper (as in the PNGs)
    np.testing.assert_array_equal(x["train"].images[2, :, :, 0], np.where(glyph, 0, 255))
    small = load(omniglot.prepare(omniglot_raw["mirror"], tmp_path / "s", {}))["train"].images
    assert small[:, 0, 0, 0].max() == 0 and small.max() == 255 and small.mean() < 60   # paper 0, ink 255
    assert x["meta"]["options"]["rotations"] is False


def test_omniglot_finn_split_and_options(omniglot_raw, tmp_path: Path) -> None:
    x = load(omniglot.prepare(omniglot_raw["official"], tmp_path / "o",
                              {"split": "finn1200", "image_size": 14, "resample": "nearest"}))
    assert [x[s].n_classes for s in ("train", "val", "test")] == [4, 2, 2]
    assert x["train"].images.shape[1:] == (14, 14, 1)
    assert set(np.unique(x["train"].images)) == {0, 255}      # NEAREST keeps Omniglot binary (as Finn et al.'s PIL did)
    for bad, word in (({"splt": "vinyals"}, "splt"), ({"split": "lake"}, "lake"), ({"image_size": 0}, "image_size")):
        with pytest.raises(MetareproError, match=word):
            omniglot.prepare(omniglot_raw["official"], tmp_path / "bad", bad)
    assert not (tmp_path / "bad").exists()


def test_omniglot_split_definitions() -> None:
    names = [n for s in ("train", "val", "test") for n in (SPLITS_DIR / f"omniglot_vinyals_ren/{s}.txt").read_text().split()]
    vin = omniglot.vinyals_split(names[::-1])
    assert [len(vin[s]) for s in ("train", "val", "test")] == [1028, 172, 423]
    with pytest.raises(MetareproError, match="missing"):
        omniglot.vinyals_split(names[:-1])
    finn = omniglot.finn_split(names)
    assert [len(finn[s]) for s in ("train", "val", "test")] == [1100, 100, 423]
    assert set().union(*map(set, finn.values())) == set(names) and finn == omniglot.finn_split(sorted(names))
    digest = hashlib.sha256(json.dumps(finn).encode()).hexdigest()   # pinned: a changed split changes results
    assert digest == "1a848ffaef901bc8e39670da0992d4542c8d391aed7750baa100e9e29b8f26ad"


def test_corrupt_raw_file_fails_before_writing(omniglot_raw, tmp_path: Path) -> None:
    raw = omniglot_raw["mirror"]
    expected = json.loads((raw / "MANIFEST.json").read_text())["files"]["images_evaluation.npz"]
    (raw / "images_evaluation.npz").write_bytes(b"garbage")
    out = tmp_path / "out"
    with pytest.raises(MetareproError) as err:
        omniglot.prepare(raw, out, {})
    assert "images_evaluation.npz" in str(err.value) and expected in str(err.value)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    out.mkdir()
    (out / "old.txt").write_text("old")
    (raw / "images_evaluation.npz").unlink()                   # missing: named, with its checksum
    with pytest.raises(MetareproError, match=f"missing.*{expected}"):
        omniglot.prepare(raw, out, {})
    assert [p.name for p in out.iterdir()] == ["old.txt"]


def test_without_manifest_published_checksums_apply(omniglot_raw, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(SOURCES, "omniglot", PUBLISHED["omniglot"])   # the real md5s, not unpin()'s
    raw = omniglot_raw["official"]
    (raw / "MANIFEST.json").unlink()
    with pytest.raises(MetareproError, match="68d2efa1b9178cc56df9314c21c6e718"):   # the official md5
        omniglot.prepare(raw, tmp_path / "out", {})
    with pytest.raises(MetareproError, match="download --dataset omniglot"):
        omniglot.prepare(tmp_path / "nothing", tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


# --- CIFAR-FS / FC100 -------------------------------------------------------------------------

def test_cifar_official_and_mirror_agree(tmp_path: Path, monkeypatch) -> None:
    unpin(monkeypatch, "cifarfs", "fc100")
    data = archives.cifar100_data(per_class=2)
    archives.cifar100_official(tmp_path / "dl" / "cifar-100-python.tar.gz", data)
    archives.cifar100_mirror(tmp_path / "mirror", data)
    archives.write_sums(tmp_path / "mirror")
    official = fetch("cifarfs", tmp_path / "raw_official", None, source_dir=tmp_path / "dl")
    mirror = fetch("fc100", tmp_path / "raw_mirror", tmp_path / "mirror")
    for prep, counts in ((cifar.prepare_cifarfs, [64, 16, 20]), (cifar.prepare_fc100, [60, 20, 20])):
        a = load(prep(official, tmp_path / f"{prep.__name__}_a", {}))
        b = load(prep(mirror, tmp_path / f"{prep.__name__}_b", {}))
        assert [a[s].n_classes for s in ("train", "val", "test")] == counts
        for s in ("train", "val", "test"):
            np.testing.assert_array_equal(a[s].images, b[s].images)
            np.testing.assert_array_equal(a[s].labels, b[s].labels)
            assert a[s].images.shape[1:] == (32, 32, 3) and len(a[s].images) == 2 * a[s].n_classes
    # every image sits under its own class name
    x = load(tmp_path / "prepare_cifarfs_a")
    otter = data["fine_names"].index("otter")
    want = {img.tobytes() for img in data["images"][data["fine"] == otter]}
    val = x["val"]
    k = list(val.class_names).index("otter")
    assert {img.tobytes() for img in val.images[val.labels == k]} == want
    assert list(load(tmp_path / "prepare_fc100_a")["test"].class_names[:5]) == ["beaver", "dolphin", "otter", "seal", "whale"]
    up = load(cifar.prepare_cifarfs(mirror, tmp_path / "up", {"image_size": 40}))
    assert up["test"].images.shape[1:] == (40, 40, 3)


@pytest.mark.skipif(not (REAL_MIRROR / "cifar100" / "meta").exists(), reason="no dataset mirror")
def test_real_official_meta_pickle_loads() -> None:
    from metarepro.data.imageops import load_pickle
    with open(REAL_MIRROR / "cifar100" / "meta", "rb") as f:
        meta = load_pickle(f, "meta")
    assert meta["fine_label_names"] == archives.cifar100_names()[0]
    assert meta["coarse_label_names"] == archives.cifar100_names()[1]


# --- miniImageNet -----------------------------------------------------------------------------

def test_miniimagenet(tmp_path: Path, monkeypatch) -> None:
    rows = archives.miniimagenet_layout(tmp_path / "dl", per_class=2)
    raw = fetch("miniimagenet", tmp_path / "raw", None, source_dir=tmp_path / "dl")
    x = load(miniimagenet.prepare(raw, tmp_path / "out", {}))
    assert [x[s].n_classes for s in ("train", "val", "test")] == [64, 16, 20]
    assert x["train"].images.shape == (128, 84, 84, 3) and x["train"].images.dtype == np.uint8
    from metarepro.data.imageops import load_image
    name, label = rows["val"][3]
    np.testing.assert_array_equal(x["val"].images[3], load_image(raw / "images" / name, mode="RGB", size=84))
    assert x["val"].class_names[x["val"].labels[3]] == label
    # a different split is refused
    with open(raw / "test.csv", "a", newline="") as f:
        csv.writer(f).writerow((rows["train"][0][0], rows["train"][0][1]))
    (raw / "MANIFEST.json").unlink()
    with pytest.raises(MetareproError, match="no checksum is published"):
        miniimagenet.prepare(raw, tmp_path / "out2", {})
    monkeypatch.setattr(miniimagenet, "verify_raw", lambda *a: "test")
    with pytest.raises(MetareproError, match="not in the Ravi & Larochelle test split"):
        miniimagenet.prepare(raw, tmp_path / "out2", {})
    assert not (tmp_path / "out2").exists()


def test_miniimagenet_corrupt_image(tmp_path: Path, monkeypatch) -> None:
    unpin(monkeypatch, "miniimagenet")
    archives.miniimagenet_mirror(tmp_path / "mirror")
    archives.write_sums(tmp_path / "mirror")
    raw = fetch("miniimagenet", tmp_path / "raw", tmp_path / "mirror")
    bad = sorted((raw / "images").iterdir())[-1]
    expected = json.loads((raw / "MANIFEST.json").read_text())["files"][f"images/{bad.name}"]
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(MetareproError) as err:
        miniimagenet.prepare(raw, tmp_path / "out", {})
    assert bad.name in str(err.value) and expected in str(err.value) and not (tmp_path / "out").exists()


def test_miniimagenet_learn2learn_pickles(tmp_path: Path, monkeypatch) -> None:
    """The download (learn2learn's pickles, served locally) prepares to what the Ravi layout of the same images
    prepares to: same classes in the same order, same pixels."""
    served = tmp_path / "www"
    expected = archives.miniimagenet_pickles(served, per_class=2)
    asked = []

    def fake_get(url: str, dest: Path) -> None:
        asked.append(url)
        dest.write_bytes((served / url.rsplit("/", 1)[-1]).read_bytes())
    monkeypatch.setattr(download, "http_get", fake_get)
    raw = fetch("miniimagenet", tmp_path / "raw", None)
    assert asked == [f"https://zenodo.org/record/7978538/files/mini-imagenet-cache-{s}.pkl"
                     for s in ("train", "validation", "test")]
    assert json.loads((raw / "MANIFEST.json").read_text())["source"] == "official"
    x = load(miniimagenet.prepare(raw, tmp_path / "out", {"image_size": 84}))
    assert [x[s].n_classes for s in ("train", "val", "test")] == [64, 16, 20]
    for split in ("train", "val", "test"):
        assert x[split].images.dtype == np.uint8 and x[split].images.shape == (len(expected[split]), 84, 84, 3)
        np.testing.assert_array_equal(x[split].images, np.stack([img for _, img in expected[split]]))
        assert [x[split].class_names[k] for k in x[split].labels] == [w for w, _ in expected[split]]

    # the same images in the Ravi layout (lossless PNG bytes under the csv's .jpg names) prepare identically
    layout = tmp_path / "ravi"
    (layout / "images").mkdir(parents=True)
    for split in ("train", "val", "test"):
        ravi = miniimagenet.read_csv(SPLITS_DIR / f"miniimagenet_ravi/{split}.csv")
        names = {w: [n for n, label in ravi if label == w] for w in dict.fromkeys(w for _, w in ravi)}
        rows = []
        for wnid, img in expected[split]:              # each class's images under its first Ravi file names
            name = names[wnid][sum(w == wnid for _, w in rows)]
            (layout / "images" / name).write_bytes(archives._png(Image.fromarray(img)))
            rows.append((name, wnid))
        with open(layout / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("filename", "label"), *rows])
    raw2 = fetch("miniimagenet", tmp_path / "raw2", None, source_dir=layout)
    y = load(miniimagenet.prepare(raw2, tmp_path / "out2", {"image_size": 84}))
    for split in ("train", "val", "test"):
        np.testing.assert_array_equal(x[split].images, y[split].images)
        np.testing.assert_array_equal(x[split].labels, y[split].labels)
        assert list(x[split].class_names) == list(y[split].class_names)

    # the pickles from a local folder (METAREPRO_MINIIMAGENET_DIR), resized to the default run's 32x32
    monkeypatch.setenv("METAREPRO_MINIIMAGENET_DIR", str(served))
    raw3 = fetch("miniimagenet", tmp_path / "raw3", None)
    z = load(miniimagenet.prepare(raw3, tmp_path / "out3", {"image_size": 32}))
    assert z["test"].images.shape == (40, 32, 32, 3)


def test_miniimagenet_pickles_refused(tmp_path: Path, monkeypatch) -> None:
    """A pickle that would run code, or holds another split, stops prepare naming the file; nothing written."""
    import pickle
    archives.miniimagenet_pickles(tmp_path / "dl", per_class=1)
    monkeypatch.setattr(miniimagenet, "verify_raw", lambda *a: "test")

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))
    bad = tmp_path / "dl" / "mini-imagenet-cache-test.pkl"
    good = bad.read_bytes()
    bad.write_bytes(pickle.dumps({"image_data": Evil(), "class_dict": {}}))
    with pytest.raises(MetareproError, match="refusing to unpickle"):
        miniimagenet.prepare(tmp_path / "dl", tmp_path / "out", {})
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
    val = tmp_path / "dl" / "mini-imagenet-cache-validation.pkl"
    bad.write_bytes(val.read_bytes())                  # the validation classes where the test ones belong
    with pytest.raises(MetareproError, match="not the Ravi & Larochelle test split"):
        miniimagenet.prepare(tmp_path / "dl", tmp_path / "out", {})
    bad.write_bytes(good)
    miniimagenet.prepare(tmp_path / "dl", tmp_path / "out", {})


# --- tieredImageNet ---------------------------------------------------------------------------

def test_tieredimagenet(tmp_path: Path) -> None:
    made = archives.tiered_official(tmp_path / "pkl")
    archives.tar_folder(tmp_path / "dl" / "tiered-imagenet.tar", tmp_path / "pkl", "tiered-imagenet")
    raw = fetch("tieredimagenet", tmp_path / "raw", None, source_dir=tmp_path / "dl")
    x = load(tieredimagenet.prepare(raw, tmp_path / "out", {}))
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(x[s].images, made[s]["images"])
        np.testing.assert_array_equal(x[s].labels, made[s]["labels"])
        assert list(x[s].class_names) == made[s]["names"]
    assert x["train"].class_names[0] == "n01530575"
    # labels from the wrong split are refused
    (raw / "val_labels.pkl").write_bytes((raw / "train_labels.pkl").read_bytes())
    (raw / "MANIFEST.json").write_text(json.dumps({"dataset": "tieredimagenet", "source": "test", "files": {
        p.name: archives.sha256(p) for p in raw.glob("*.pkl")}}))
    with pytest.raises(MetareproError, match="not in Ren et al.'s val split"):
        tieredimagenet.prepare(raw, tmp_path / "out2", {})
    (raw / "MANIFEST.json").unlink()
    with pytest.raises(MetareproError, match="train_images_png.pkl"):
        tieredimagenet.prepare(raw, tmp_path / "out2", {})
    assert not (tmp_path / "out2").exists()


# --- CUB --------------------------------------------------------------------------------------

def test_cub(tmp_path: Path, monkeypatch) -> None:
    unpin(monkeypatch, "cub")
    split, names = archives.cub_official(tmp_path / "dl" / "CUB_200_2011.tgz",
                                         {"train": [0, 3, 7], "val": [1, 4], "test": [2, 199]})
    monkeypatch.setattr(cub, "load_split", lambda: (split, names))
    raw = fetch("cub", tmp_path / "raw", None, source_dir=tmp_path / "dl")
    x = load(cub.prepare(raw, tmp_path / "out", {}))
    assert [x[s].n_classes for s in ("train", "val", "test")] == [3, 2, 2]
    assert x["train"].images.shape == (6, 84, 84, 3) and x["test"].class_names[1] == "200.Common_Yellowthroat"
    assert x["train"].labels.tolist() == [0, 0, 1, 1, 2, 2]
    # the archive must hold every image of the split, with the split's labels
    monkeypatch.setattr(cub, "load_split", lambda: ({**split, "test": split["test"] + [("002.x/y.jpg", 1)]}, names))
    with pytest.raises(MetareproError, match="002.x/y.jpg"):
        cub.prepare(raw, tmp_path / "out2", {})
    swapped = {**split, "val": [(rel, 3) for rel, _ in split["val"]]}
    monkeypatch.setattr(cub, "load_split", lambda: (swapped, names))
    with pytest.raises(MetareproError, match="in Chen et al.'s split"):
        cub.prepare(raw, tmp_path / "out2", {})
    assert not (tmp_path / "out2").exists()


def test_cub_real_split_definition() -> None:
    split, names = cub.load_split()
    assert [len({label for _, label in split[s]}) for s in ("train", "val", "test")] == [100, 50, 50]
    assert sum(len(v) for v in split.values()) == 11788 and len(names) == 200
    assert split["train"][0][0] == "001.Black_footed_Albatross/Black_Footed_Albatross_0053_796109.jpg"


# --- the real mirror --------------------------------------------------------------------------

@pytest.mark.skipif(not (REAL_MIRROR / "omniglot").exists(), reason="no dataset mirror beside the checkout")
def test_real_mirror_omniglot(tmp_path: Path) -> None:
    raw = fetch("omniglot", tmp_path / "raw", REAL_MIRROR)
    x = load(omniglot.prepare(raw, tmp_path / "out", {}))
    assert [x[s].n_classes for s in ("train", "val", "test")] == [1028, 172, 423]
    assert x["train"].images.shape == (20560, 28, 28, 1)
    assert x["train"].class_names[0] == "Angelic/character01" and x["test"].class_names[0] == "Gurmukhi/character42"
    corners = x["test"].images[:, [0, 0, -1, -1], [0, -1, 0, -1], 0]
    assert (corners == 0).mean() > 0.99 and 5 < x["test"].images.mean() < 60   # paper 0, ink 255


def test_prepare_refuses_splits_that_share_classes(tmp_path: Path) -> None:
    import numpy as np

    from metarepro.data.store import write_dataset
    from metarepro.utils import MetareproError
    img = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    splits = {"train": (img, np.array([0, 1]), ["cat", "dog"]), "val": (img, np.array([0, 1]), ["owl", "eel"]),
              "test": (img, np.array([0, 1]), ["dog", "cat"])}
    with pytest.raises(MetareproError, match=r"train and test share 2 class\(es\): cat, dog"):
        write_dataset(tmp_path / "d", "toy", splits, {}, "test")
    assert not (tmp_path / "d").exists()
