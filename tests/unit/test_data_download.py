"""fetch / resolve_mirror / verify_raw: mirror copies, official downloads (served locally), failures."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import urllib.error
from pathlib import Path

import pytest

from metarepro.data import download
from metarepro.data.download import SOURCES, SPLITS_DIR, fetch, parse_sums, resolve_mirror
from metarepro.utils import MetareproError

try:
    from . import archives
except ImportError:          # tests/unit is not a package
    import archives

REAL_MIRROR = Path(__file__).resolve().parents[3] / "shared" / "datasets"
GLYPHS = {"images_background": {"Alpha": 2}, "images_evaluation": {"Beta": 1}}


@pytest.fixture(autouse=True)
def _no_user_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("METAREPRO_")]:
        monkeypatch.delenv(var)


def unpin(monkeypatch: pytest.MonkeyPatch, dataset: str, **official_md5: str | None) -> None:
    """Let SOURCES[dataset] accept the tiny test files: no mirror pins (trust the mirror's
    SHA256SUMS); official files checked against `official_md5` (default: no checksum)."""
    src = SOURCES[dataset]
    mirror = src.mirror and dataclasses.replace(src.mirror, files={k: None for k in src.mirror.files})
    official = tuple(dataclasses.replace(rf, md5=official_md5.get(rf.name.split(".")[0])) for rf in src.official)
    monkeypatch.setitem(SOURCES, dataset, dataclasses.replace(src, mirror=mirror, official=official))


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    archives.omniglot_mirror(root, archives.omniglot_glyphs(GLYPHS, size=20))
    archives.miniimagenet_mirror(root)
    archives.write_sums(root)
    return root


# --- resolve_mirror ---------------------------------------------------------------------------

def test_resolve_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("METAREPRO_MIRROR", raising=False)
    for off in (None, "", "none", "None", "null"):
        assert resolve_mirror(off) is None
    assert resolve_mirror(str(tmp_path)) == tmp_path.resolve()
    with pytest.raises(MetareproError, match="nowhere"):
        resolve_mirror(str(tmp_path / "nowhere"))
    monkeypatch.setenv("METAREPRO_MIRROR", str(tmp_path))
    assert resolve_mirror("none") == tmp_path.resolve()          # the environment overrides the config
    monkeypatch.setenv("METAREPRO_MIRROR", "none")
    assert resolve_mirror(str(tmp_path)) is None
    monkeypatch.setenv("METAREPRO_MIRROR", str(tmp_path / "gone"))
    with pytest.raises(MetareproError, match="METAREPRO_MIRROR"):
        resolve_mirror(None)


# --- mirror -----------------------------------------------------------------------------------

def test_fetch_mirror_copies_and_writes_manifest(mirror: Path, tmp_path: Path, monkeypatch) -> None:
    unpin(monkeypatch, "omniglot")
    out = fetch("omniglot", tmp_path / "raw" / "omniglot", mirror)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["dataset"] == "omniglot" and manifest["source"] == f"mirror:{mirror.resolve()}"
    assert sorted(manifest["files"]) == sorted(SOURCES["omniglot"].mirror.files)
    for rel, digest in manifest["files"].items():
        assert (out / rel).read_bytes() == (mirror / "omniglot" / rel).read_bytes()
        assert archives.sha256(out / rel) == digest
    assert leftovers(out.parent) == []


def test_fetch_mirror_with_image_index(mirror: Path, tmp_path: Path, monkeypatch) -> None:
    unpin(monkeypatch, "miniimagenet")
    out = fetch("miniimagenet", tmp_path / "raw", mirror)
    files = json.loads((out / "MANIFEST.json").read_text())["files"]
    images = sorted(p.name for p in (mirror / "miniimagenet-subset60" / "images").iterdir())
    assert len(images) == 100 and sorted(f for f in files if f.startswith("images/")) == [f"images/{n}" for n in images]
    assert {"train.csv", "val.csv", "test.csv", "images.sha256"} <= set(files)


def test_fetch_mirror_corrupt_file(mirror: Path, tmp_path: Path, monkeypatch) -> None:
    unpin(monkeypatch, "omniglot")
    bad = mirror / "omniglot" / "images_evaluation.npz"
    expected = parse_sums(mirror / "SHA256SUMS")["omniglot/images_evaluation.npz"]
    bad.write_bytes(bad.read_bytes()[:-1] + b"x")
    with pytest.raises(MetareproError) as err:
        fetch("omniglot", tmp_path / "raw" / "omniglot", mirror)
    assert str(bad) in str(err.value) and expected in str(err.value) and archives.sha256(bad) in str(err.value)
    assert not (tmp_path / "raw" / "omniglot").exists() and leftovers(tmp_path / "raw") == []


def test_fetch_mirror_corrupt_indexed_image(mirror: Path, tmp_path: Path, monkeypatch) -> None:
    unpin(monkeypatch, "miniimagenet")
    bad = sorted((mirror / "miniimagenet-subset60" / "images").iterdir())[7]
    expected = parse_sums(mirror / "miniimagenet-subset60" / "images.sha256")[f"images/{bad.name}"]
    bad.write_bytes(b"not a jpeg")
    with pytest.raises(MetareproError, match=bad.name) as err:
        fetch("miniimagenet", tmp_path / "raw", mirror)
    assert expected in str(err.value) and not (tmp_path / "raw").exists()


def test_fetch_mirror_missing_file_leaves_existing_out_dir_unchanged(mirror: Path, tmp_path: Path,
                                                                     monkeypatch) -> None:
    unpin(monkeypatch, "omniglot")
    (mirror / "omniglot" / "omniglot_char_index.csv").unlink()
    out = tmp_path / "raw" / "omniglot"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("old")
    with pytest.raises(MetareproError, match="omniglot_char_index.csv"):
        fetch("omniglot", out, mirror)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and leftovers(out.parent) == []


def test_fetch_mirror_pins_checked(mirror: Path, tmp_path: Path) -> None:
    # SOURCES pins the real mirror's checksums: the tiny fake mirror is "a different version"
    with pytest.raises(MetareproError, match="different version"):
        fetch("omniglot", tmp_path / "raw", mirror)
    assert not (tmp_path / "raw").exists()


# --- official URLs (served from local files) --------------------------------------------------

@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, list[str]]:
    """A folder whose files download.http_get serves by URL basename; the URLs asked for are logged."""
    folder, asked = tmp_path / "www", []
    folder.mkdir()

    def fake_get(url: str, dest: Path) -> None:
        asked.append(url)
        src = folder / url.rsplit("/", 1)[-1].split("?")[0]
        if not src.exists():
            raise urllib.error.URLError(f"404 {url}")
        shutil.copyfile(src, dest)
    monkeypatch.setattr(download, "http_get", fake_get)
    return folder, asked


def test_fetch_official(served, tmp_path: Path, monkeypatch) -> None:
    folder, asked = served
    zips = archives.omniglot_official(folder, archives.omniglot_glyphs(GLYPHS, size=20))
    unpin(monkeypatch, "omniglot", **{z.stem: archives.md5(z) for z in zips})
    out = fetch("omniglot", tmp_path / "raw", None)
    assert asked == [rf.url for rf in SOURCES["omniglot"].official]
    assert asked[0] == "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip"
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["source"] == "official"
    assert manifest["files"] == {z.name: archives.sha256(z) for z in zips}


def test_fetch_official_bad_md5(served, tmp_path: Path) -> None:
    archives.omniglot_official(served[0], archives.omniglot_glyphs(GLYPHS, size=20))
    with pytest.raises(MetareproError) as err:          # the real published md5s
        fetch("omniglot", tmp_path / "raw", None)
    msg = str(err.value)
    assert "images_background.zip" in msg and "68d2efa1b9178cc56df9314c21c6e718" in msg and "md5" in msg
    assert not (tmp_path / "raw").exists() and leftovers(tmp_path) == []


def test_fetch_official_unreachable(served, tmp_path: Path) -> None:
    with pytest.raises(MetareproError, match="METAREPRO_CUB_DIR"):
        fetch("cub", tmp_path / "raw", tmp_path)        # mirror given, but it does not carry CUB
    assert served[1] == [SOURCES["cub"].official[0].url]


def test_fetch_from_user_dir(tmp_path: Path, monkeypatch) -> None:
    tgz = tmp_path / "dl" / "CUB_200_2011.tgz"
    tgz.parent.mkdir()
    archives.cub_official(tgz, {"train": [0]}, per_class=1)
    monkeypatch.setenv("METAREPRO_CUB_DIR", str(tgz.parent))
    with pytest.raises(MetareproError, match="97eceeb196236b17998738112f37df78"):
        fetch("cub", tmp_path / "raw", None)
    unpin(monkeypatch, "cub", CUB_200_2011=archives.md5(tgz))
    out = fetch("cub", tmp_path / "raw", None)
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["source"] == f"dir:{tgz.parent.resolve()}" and manifest["files"] == {tgz.name: archives.sha256(tgz)}


def test_fetch_url_archive_is_unpacked(served, tmp_path: Path, monkeypatch) -> None:
    layout = tmp_path / "layout"
    rows = archives.miniimagenet_layout(layout)
    archive = archives.tar_folder(served[0] / "mini.tar.gz", layout, "mini-imagenet")
    monkeypatch.setenv("METAREPRO_MINIIMAGENET_URL", "https://example.org/data/mini.tar.gz")
    monkeypatch.setenv("METAREPRO_MINIIMAGENET_SHA256", "0" * 64)
    with pytest.raises(MetareproError, match="0" * 64):
        fetch("miniimagenet", tmp_path / "raw", None)
    monkeypatch.setenv("METAREPRO_MINIIMAGENET_SHA256", archives.sha256(archive))
    out = fetch("miniimagenet", tmp_path / "raw", str(tmp_path))   # an explicit URL beats the mirror
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["source"] == "url:https://example.org/data/mini.tar.gz"
    assert manifest["archives"] == {"mini-imagenet.tar.gz": archives.sha256(archive)}
    assert len(manifest["files"]) == 3 + sum(len(r) for r in rows.values())
    assert (out / "train.csv").read_bytes() == (layout / "train.csv").read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["MANIFEST.json", "images", "test.csv", "train.csv", "val.csv"]


def test_fetch_truncated_archive(served, tmp_path: Path, monkeypatch) -> None:
    archives.tiered_official(tmp_path / "p", per_class=1)
    archive = archives.tar_folder(served[0] / "t.tar.gz", tmp_path / "p", "tiered-imagenet")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    monkeypatch.setenv("METAREPRO_TIEREDIMAGENET_URL", "https://example.org/t.tar.gz")
    with pytest.raises(MetareproError, match="tiered-imagenet.tar from https://example.org/t.tar.gz"):
        fetch("tieredimagenet", tmp_path / "raw", None)
    assert not (tmp_path / "raw").exists()


def test_unpack_ignores_unsafe_members(tmp_path: Path) -> None:
    import io
    import tarfile
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("x/train.csv", "x/images/a.jpg", "x/../evil.jpg", "/abs/images/b.jpg", "x/notes.txt"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tf.addfile(info, io.BytesIO(b"1"))
    out = tmp_path / "out"
    files = download._unpack(archive, download.Unpack("train.csv", ("train.csv", "images/*")), out)
    assert sorted(files) == ["images/a.jpg", "train.csv"]
    assert not (tmp_path / "evil.jpg").exists()


def test_tiered_without_source_says_how_to_get_it(tmp_path: Path, monkeypatch) -> None:
    for var in ("DIR", "URL"):
        monkeypatch.delenv(f"METAREPRO_TIEREDIMAGENET_{var}", raising=False)
    with pytest.raises(MetareproError, match="few-shot-ssl-public"):
        fetch("tieredimagenet", tmp_path / "raw", None)
    assert not (tmp_path / "raw").exists()


def test_tiered_from_extracted_dir(tmp_path: Path, monkeypatch) -> None:
    archives.tiered_official(tmp_path / "dl" / "tiered-imagenet", per_class=1)
    monkeypatch.setenv("METAREPRO_TIEREDIMAGENET_DIR", str(tmp_path / "dl"))
    out = fetch("tieredimagenet", tmp_path / "raw", None)
    files = json.loads((out / "MANIFEST.json").read_text())["files"]
    assert sorted(files) == sorted(f"{s}_{k}.pkl" for s in ("train", "val", "test") for k in ("images_png", "labels"))


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(MetareproError, match=r"known: .*cifarfs"):
        fetch("sinusoid", tmp_path / "raw", None)


# --- package split files and the real mirror ---------------------------------------------------

def test_packaged_split_files_are_byte_identical() -> None:
    sums = parse_sums(SPLITS_DIR / "SHA256SUMS")
    assert len(sums) == 18
    for rel, digest in sums.items():
        assert archives.sha256(SPLITS_DIR / rel) == digest, rel
        download.split_file(rel)
    if (REAL_MIRROR / "SHA256SUMS").exists():
        mirror_sums = parse_sums(REAL_MIRROR / "SHA256SUMS")
        assert all(mirror_sums[f"splits/{rel}"] == digest for rel, digest in sums.items())


@pytest.mark.skipif(not (REAL_MIRROR / "SHA256SUMS").exists(), reason="no dataset mirror beside the checkout")
def test_real_mirror_pins_and_omniglot_fetch(tmp_path: Path) -> None:
    listed = parse_sums(REAL_MIRROR / "SHA256SUMS")
    for name, src in SOURCES.items():
        if src.mirror:
            for rel, pin in src.mirror.files.items():
                assert listed[f"{src.mirror.folder}/{rel}"] == pin, (name, rel)
    out = fetch("omniglot", tmp_path / "raw", resolve_mirror(str(REAL_MIRROR)))
    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert manifest["files"] == dict(SOURCES["omniglot"].mirror.files)
    assert download.verify_raw("omniglot", out, manifest["files"]).startswith("mirror:")
