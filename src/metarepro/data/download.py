"""Fetch raw dataset files (official URLs, a local mirror, or a user's folder), checksum-verified.

`fetch(dataset, out_dir, mirror)` fills resources/raw/<dataset>/ and writes MANIFEST.json
({dataset, source, files: {relpath: sha256}}) last; `prepare` re-checks every raw file it reads
against that manifest (`verify_raw`) before writing anything. Sources, in order of precedence:

1. a folder the user names with METAREPRO_<DATASET>_DIR (or `source_dir=`), holding the official
   archive(s) -- or, for miniImageNet / tieredImageNet / G-Meta's release, their extracted layout;
2. an archive URL the user names with METAREPRO_<DATASET>_URL (or `url=`), optionally with
   METAREPRO_<DATASET>_SHA256 -- the only download route for tieredImageNet and G-Meta's
   release (arxiv, tissue_ppi, fold_ppi), which have no stable official URL;
3. the mirror (../shared/datasets layout), for the datasets it carries;
4. the official URLs, verified against their published md5 (miniImageNet: learn2learn's pickles on
   Zenodo, which publishes no checksum that metarepro could pin).
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any, Iterable, Mapping, Sequence

from ..utils import MetareproError, atomic_path, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
MIRROR_SUMS = "SHA256SUMS"
SPLITS_DIR = Path(__file__).resolve().parent / "splits"   # package copies of the standard split files


@dataclass(frozen=True)
class RemoteFile:
    """One official raw file: its name in the raw folder, canonical URL and published checksum."""
    name: str
    url: str | None                  # None: no stable official URL (user supplies one)
    md5: str | None = None           # as published by the dataset authors
    sha256: str | None = None


@dataclass(frozen=True)
class MirrorLayout:
    """A dataset's files in the mirror: `folder/<relpath>`, pinned to the mirror's SHA256SUMS."""
    folder: str
    files: Mapping[str, str | None]  # relpath in folder -> pinned sha256 (None: trust the mirror's SHA256SUMS)
    index: str | None = None         # a sha256 list in folder naming further files (each one verified)


@dataclass(frozen=True)
class Unpack:
    """How an archive with no fixed top-level folder is unpacked into the raw layout."""
    marker: str                      # the file whose folder is the layout's root
    keep: tuple[str, ...]            # fnmatch patterns, relative to the root, of the files to keep
    # the root's folder name, where an archive holds several datasets side by side (G-Meta_Data.zip: arxiv/,
    # tissue_PPI/, ... each with the same file names); None: the shallowest marker
    within: str | None = None


@dataclass(frozen=True)
class Source:
    official: tuple[RemoteFile, ...]
    mirror: MirrorLayout | None = None
    unpack: Unpack | None = None     # the archive is unpacked at fetch time (else kept as is)
    how_to: str = ""                 # what to tell a user who has no source for it
    # The one archive a user may name instead (by METAREPRO_<DATASET>_URL or a file in METAREPRO_<DATASET>_DIR),
    # unpacked with `unpack`, where the official files are something else (miniImageNet: the official files are
    # learn2learn's three pickles, a user's archive holds the Ravi layout). None: the one official file, if one.
    archive: RemoteFile | None = None

    @property
    def user_archive(self) -> RemoteFile | None:
        return self.archive or (self.official[0] if len(self.official) == 1 else None)

    @property
    def unpacks_official(self) -> bool:
        """Whether the official download is the archive that `unpack` describes."""
        return self.unpack is not None and self.archive is None


_OMNIGLOT_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
_CIFAR100 = Source(
    official=(RemoteFile("cifar-100-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                         md5="eb9058c3a382ffc7106e4002c42a8d85"),),
    mirror=MirrorLayout("cifar100", {
        "cifar100_all60000_uint8.npz": "7117d81b181e9ae23e20b8b1845e7905eb0f353146ccf23ef381dd64b54181f5",
        "meta": "a5d4786345c961390f865e93b434dbd5c6904ce880667e0cb888c97d449f28b9",
    }),
    how_to="download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html and set "
           "METAREPRO_{NAME}_DIR to the folder holding it",
)


def _gmeta(folder: str, tasks: bool = False) -> Source:
    """A dataset of G-Meta's processed release (Huang & Zitnik 2020): the folder G-Meta_Data/<folder> of
    G-Meta_Data.zip (metarepro.data.gmeta_release reads it). Tissue-PPI keeps its ten binary tasks in task1..10/."""
    sub = "task*/" if tasks else ""
    return Source(
        official=(RemoteFile("G-Meta_Data.zip", None),),      # Google Drive only; no checksum is published
        unpack=Unpack("features.npy", ("graph*.pkl", "graph*.npz", "features.npy",   # graphs.npz: converted graphs
                                       *(f"{sub}{f}" for f in ("label.pkl", "train.csv", "val.csv", "test.csv"))),
                      within=folder),
        how_to="G-Meta's processed data has no stable direct URL and no published checksum: download G-Meta_Data.zip "
               "through the Google Drive link in G-Meta's README (https://github.com/mims-harvard/G-Meta: "
               "https://drive.google.com/file/d/1TC06A02wmIQteKzqGSbl_i3VIQzsHVop/view), unzip it and set "
               f"METAREPRO_{{NAME}}_DIR=<the folder G-Meta_Data/{folder}> (or a folder holding G-Meta_Data.zip); or "
               "METAREPRO_{NAME}_URL=<a direct URL of G-Meta_Data.zip> (optionally METAREPRO_{NAME}_SHA256=<its "
               "sha256>)",
    )


# Mirror pins are the entries of the mirror's SHA256SUMS (../shared/datasets); official checksums
# are the ones the dataset authors (or torchvision, for the same files) publish.
SOURCES: dict[str, Source] = {
    "omniglot": Source(
        official=(RemoteFile("images_background.zip", _OMNIGLOT_URL + "images_background.zip",
                             md5="68d2efa1b9178cc56df9314c21c6e718"),
                  RemoteFile("images_evaluation.zip", _OMNIGLOT_URL + "images_evaluation.zip",
                             md5="6b91aef0f799c5bb55b94e3f2daec811")),
        mirror=MirrorLayout("omniglot", {
            "images_background.npz": "8bf84167413cd00beacdce3fe582f780ab538d8dbef043a6d688f2527bbce199",
            "images_evaluation.npz": "0b84c7ffd94c4841c0040e529c86a82eaaccb986d8eadad5673f7991b7475276",
            "omniglot_char_index.csv": "9774f151f100733eb06952ea98bb36401f5efd38068288dbcb3e527e03560342",
        }),
        how_to="download images_background.zip and images_evaluation.zip from "
               "https://github.com/brendenlake/omniglot/tree/master/python and set METAREPRO_OMNIGLOT_DIR "
               "to the folder holding them",
    ),
    "cifarfs": _CIFAR100,
    "fc100": _CIFAR100,
    "miniimagenet": Source(
        # learn2learn's pickles of the full dataset (Ravi & Larochelle's 64/16/20 classes, 600 images per class,
        # 84x84), on the Zenodo record that learn2learn.vision.datasets.MiniImagenet downloads from: each a dict
        # {"image_data": uint8 (N, 84, 84, 3), "class_dict": {wnid: [row indices]}}, read by a restricted
        # unpickler (metarepro.data.miniimagenet). Neither learn2learn nor its README publishes a checksum, and
        # Zenodo's could not be read from here: none is pinned; MANIFEST.json records the sha256 of what came.
        official=tuple(RemoteFile(f"mini-imagenet-cache-{split}.pkl",
                                  f"https://zenodo.org/record/7978538/files/mini-imagenet-cache-{split}.pkl")
                       for split in ("train", "validation", "test")),
        mirror=MirrorLayout("miniimagenet-subset60", {
            "images.sha256": "45f7f3ee4126b4d3e9e306f2a977f3a26b9a0032890553ddb21b610041fe51ee",
            "train.csv": "8f98ded42d8e9ce75a2fe07ede0ad0b7682086f9caa5a4e5cf5ac7a4af60f6f2",
            "val.csv": "bf9072765b54b81db6c849b431e219777b89ccb0c99293de8ea4a90bfbc2963c",
            "test.csv": "2c043cf1cd5c1b5ac41da8d31e7c8daaab53bded340c3b2c417dc7e816b47e86",
        }, index="images.sha256"),
        archive=RemoteFile("mini-imagenet.tar.gz", None),
        unpack=Unpack("train.csv", ("train.csv", "val.csv", "test.csv", "images/*")),
        how_to="miniImageNet downloads from Zenodo (learn2learn's mini-imagenet-cache-{train,validation,test}.pkl, "
               "1.3 GB: https://zenodo.org/record/7978538) when the mirror is off (METAREPRO_MIRROR=none); "
               "without internet, provide it by one of: METAREPRO_MINIIMAGENET_DIR=<a folder holding those three "
               "pickles, or the Ravi & Larochelle layout (images/*.jpg + train.csv, val.csv, test.csv with "
               "filename,label rows), or mini-imagenet.tar.gz of that layout>; METAREPRO_MINIIMAGENET_URL=<URL of "
               "a .tar/.tar.gz/.zip with that layout> (optionally METAREPRO_MINIIMAGENET_SHA256=<its sha256>); or "
               "a mirror holding miniimagenet-subset60/ (data.mirror in the config, or METAREPRO_MIRROR)",
    ),
    "tieredimagenet": Source(
        official=(RemoteFile("tiered-imagenet.tar", None),),
        unpack=Unpack("train_labels.pkl", tuple(f"{s}_{k}.pkl" for s in ("train", "val", "test")
                                                for k in ("images_png", "labels"))),
        how_to="tieredImageNet (Ren et al. 2018) has no stable official URL: download tiered-imagenet.tar "
               "through the link in https://github.com/renmengye/few-shot-ssl-public#tieredimagenet, then "
               "set METAREPRO_TIEREDIMAGENET_DIR=<folder holding tiered-imagenet.tar or its extracted "
               "{train,val,test}_images_png.pkl and {train,val,test}_labels.pkl>, or "
               "METAREPRO_TIEREDIMAGENET_URL=<URL of tiered-imagenet.tar> (optionally with "
               "METAREPRO_TIEREDIMAGENET_SHA256)",
    ),
    "cub": Source(
        # CaltechDATA record 65de6-vp158 (the record id used by public loaders; ?download=1 serves the file)
        official=(RemoteFile("CUB_200_2011.tgz",
                             "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
                             md5="97eceeb196236b17998738112f37df78"),),
        how_to="download CUB_200_2011.tgz from https://www.vision.caltech.edu/datasets/cub_200_2011/ and set "
               "METAREPRO_CUB_DIR to the folder holding it",
    ),
    # G-Meta's real-world node-classification datasets, from its processed release (folder names as in the zip)
    "arxiv": _gmeta("arxiv"),
    "tissue_ppi": _gmeta("tissue_PPI", tasks=True),
    "fold_ppi": _gmeta("fold_PPI"),
}


def source(dataset: str) -> Source:
    if dataset not in SOURCES:
        raise MetareproError(f"no download source for dataset {dataset!r}; known: {', '.join(sorted(SOURCES))}")
    return SOURCES[dataset]


def _how_to(dataset: str) -> str:
    return source(dataset).how_to.replace("{NAME}", dataset.upper())


# --------------------------------------------------------------------------------------------
# Mirror resolution


def resolve_mirror(configured: str | os.PathLike | None) -> Path | None:
    """The mirror to use: env METAREPRO_MIRROR (when set, even to "") overrides `configured`.

    "" / "none" / "null" / None mean "no mirror" (official URLs). A mirror that is named but does
    not exist is an error rather than a silent fallback to the network.
    """
    origin = "config data.mirror"
    value: Any = configured
    if "METAREPRO_MIRROR" in os.environ:
        value, origin = os.environ["METAREPRO_MIRROR"], "environment variable METAREPRO_MIRROR"
    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    path = Path(str(value).strip()).expanduser()
    if not path.is_dir():
        raise MetareproError(f"mirror directory {path} (from {origin}) does not exist; fix it, or set it to "
                             f"'none' to download from the official URLs")
    return path.resolve()


# --------------------------------------------------------------------------------------------
# Hashing and copying


def _hashers(algos: Iterable[str]) -> dict[str, Any]:
    return {a: hashlib.new(a, usedforsecurity=False) if a == "md5" else hashlib.new(a) for a in algos}


def _copy_stream(src: IO[bytes], dst: Path, algos: Iterable[str] = ("sha256",)) -> dict[str, str]:
    """Copy a byte stream to `dst`, hashing on the way (one pass); returns {algo: hexdigest}."""
    hs = _hashers(algos)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        while block := src.read(1 << 20):
            out.write(block)
            for h in hs.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hs.items()}


def _hash_file(path: Path, algos: Iterable[str]) -> dict[str, str]:
    hs = _hashers(algos)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            for h in hs.values():
                h.update(block)
    return {a: h.hexdigest() for a, h in hs.items()}


def _expected(rf: RemoteFile, sha256: str | None = None) -> dict[str, str]:
    exp = {}
    if rf.md5:
        exp["md5"] = rf.md5.lower()
    if sha256 or rf.sha256:
        exp["sha256"] = (sha256 or rf.sha256 or "").lower()
    return exp


def _check(label: str | Path, expected: Mapping[str, str], actual: Mapping[str, str]) -> None:
    for algo, exp in expected.items():
        if actual[algo] != exp:
            raise MetareproError(f"{label}: {algo} checksum mismatch: expected {exp}, got {actual[algo]} "
                                 f"(corrupt or different file; delete it and fetch again)")


def _copy_verified(src: Path, dst: Path, expected: Mapping[str, str], what: str) -> str:
    """Copy src -> dst, checking the copy against `expected` {algo: hex}; returns its sha256."""
    if not src.is_file():
        exp = ", ".join(f"{a} {h}" for a, h in expected.items()) or "no published checksum"
        raise MetareproError(f"{src} not found ({what}; expected {exp})")
    with open(src, "rb") as f:
        actual = _copy_stream(f, dst, {"sha256", *expected})
    _check(src, expected, actual)
    return actual["sha256"]


def parse_sums(path: Path) -> dict[str, str]:
    """Parse a `sha256sum` listing ("<hex>  ./rel/path" or "<hex> *rel/path") into {relpath: hex}."""
    sums: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2 or len(parts[0]) != 64:
            raise MetareproError(f"{path}:{n}: not a sha256sum line: {line!r}")
        rel = parts[1].lstrip("*")
        while rel.startswith("./"):
            rel = rel[2:]
        sums[rel] = parts[0].lower()
    return sums


# --------------------------------------------------------------------------------------------
# The three ways of obtaining raw files; each fills `tmp` and returns {relpath: sha256}


def _from_mirror(dataset: str, layout: MirrorLayout, mirror: Path, tmp: Path) -> dict[str, str]:
    root = mirror / layout.folder
    sums_path = mirror / MIRROR_SUMS
    listed = parse_sums(sums_path) if sums_path.is_file() else {}
    files: dict[str, str] = {}
    for rel, pin in layout.files.items():
        key = f"{layout.folder}/{rel}"
        if pin and key in listed and listed[key] != pin:
            raise MetareproError(f"{sums_path} lists sha256 {listed[key]} for {key}, but metarepro pins {pin}: "
                                 f"the mirror holds a different version of {dataset}")
        expected = pin or listed.get(key)
        if expected is None:
            raise MetareproError(f"no checksum for {root / rel}: it is not listed in {sums_path}")
        files[rel] = _copy_verified(root / rel, tmp / rel, {"sha256": expected}, f"{dataset} mirror file")
    if layout.index:
        index = parse_sums(tmp / layout.index)
        for rel, expected in index.items():
            files[rel] = _copy_verified(root / rel, tmp / rel, {"sha256": expected},
                                        f"listed in {root / layout.index}")
    return files


def http_get(url: str, dest: Path) -> None:
    """Download `url` to `dest` (tests replace this function to serve local files)."""
    req = urllib.request.Request(url, headers={"User-Agent": "metarepro"})
    with urllib.request.urlopen(req, timeout=60) as resp, open(dest, "wb") as out:
        shutil.copyfileobj(resp, out, 1 << 20)


def _download(dataset: str, rf: RemoteFile, url: str, dest: Path, sha256: str | None) -> dict[str, str]:
    log.info("downloading %s", url)
    try:
        http_get(url, dest)
    except (urllib.error.URLError, OSError, ValueError) as e:
        mirror = ", or use a mirror (METAREPRO_MIRROR)" if source(dataset).mirror else ""
        raise MetareproError(f"could not download {url} ({e}). Without internet access: {_how_to(dataset)}"
                             f"{mirror}") from e
    expected = _expected(rf, sha256)
    actual = _hash_file(dest, {"sha256", *expected})
    _check(f"{rf.name} downloaded from {url}", expected, actual)
    if not expected:
        log.warning("%s has no published checksum; recorded its sha256 %s in %s", rf.name, actual["sha256"], MANIFEST)
    return actual


def _safe_rel(name: str) -> PurePosixPath | None:
    p = PurePosixPath(name.replace("\\", "/"))
    if p.is_absolute() or ".." in p.parts:
        return None
    return PurePosixPath(*[q for q in p.parts if q not in ("", ".")])


def _unpack(archive: Path, spec: Unpack, tmp: Path, label: str | None = None) -> dict[str, str]:
    """Extract the files `spec.keep` (relative to the folder holding `spec.marker`) into tmp."""
    try:
        return _unpack_unchecked(archive, spec, tmp, label or str(archive))
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        raise MetareproError(f"{label or archive}: unreadable archive ({e})") from e


def _unpack_unchecked(archive: Path, spec: Unpack, tmp: Path, label: str) -> dict[str, str]:
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:       # pass 1: names only
            names = [m.name for m in tf if m.isfile()]
    elif zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    else:
        raise MetareproError(f"{label} is neither a tar nor a zip archive")
    roots = sorted((p.parent for n in names if (p := _safe_rel(n)) is not None and p.name == spec.marker
                    and (spec.within is None or p.parent.name.lower() == spec.within.lower())),
                   key=lambda p: len(p.parts))
    if not roots:
        where = f" in a folder {spec.within}/" if spec.within else ""
        raise MetareproError(f"{label} holds no {spec.marker}{where}: not the expected layout")
    root = roots[0]

    def target(name: str) -> str | None:
        p = _safe_rel(name)
        if p is None or p.parts[:len(root.parts)] != root.parts:
            return None
        rel = PurePosixPath(*p.parts[len(root.parts):]).as_posix()
        return rel if any(fnmatch.fnmatchcase(rel, k) for k in spec.keep) else None

    files: dict[str, str] = {}
    if tarfile.is_tarfile(archive):
        with tarfile.open(archive, "r:*") as tf:       # pass 2: sequential, fine for .tar.gz
            for m in tf:
                if m.isfile() and (rel := target(m.name)):
                    src = tf.extractfile(m)
                    assert src is not None
                    files[rel] = _copy_stream(src, tmp / rel)["sha256"]
    else:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if not info.is_dir() and (rel := target(info.filename)):
                    with zf.open(info) as src:
                        files[rel] = _copy_stream(src, tmp / rel)["sha256"]
    missing = [k for k in spec.keep if "*" not in k and k not in files]
    if missing:
        raise MetareproError(f"{label} lacks {', '.join(missing)} beside {spec.marker}")
    return files


def _from_official(dataset: str, src: Source, tmp: Path, url: str | None, sha256: str | None
                   ) -> tuple[dict[str, str], dict[str, str]]:
    """Download the official file(s) (or the user's archive at `url`); returns (raw files, archives) as
    {name: sha256}."""
    if url:
        rf = src.user_archive
        if rf is None:
            raise MetareproError(f"{dataset} needs {len(src.official)} files; a single URL cannot replace them")
        files = {rf.name: _download(dataset, rf, url, tmp / rf.name, sha256)["sha256"]}
        return _maybe_unpack(src, rf, tmp, files, url)
    files: dict[str, str] = {}
    for rf in src.official:
        if not rf.url:
            raise MetareproError(f"no source for {dataset}: {_how_to(dataset)}")
        files[rf.name] = _download(dataset, rf, rf.url, tmp / rf.name, None)["sha256"]
    if not src.unpacks_official:
        return files, {}
    return _maybe_unpack(src, src.official[0], tmp, files, "the official URL")


def _maybe_unpack(src: Source, rf: RemoteFile, tmp: Path, files: dict[str, str], origin: str
                  ) -> tuple[dict[str, str], dict[str, str]]:
    """Unpack the archive `rf` (in tmp) into the raw layout, where the source unpacks; else keep `files`."""
    if src.unpack is None:
        return files, {}
    archive = tmp.parent / f"archive-{rf.name}"           # outside tmp: not part of the raw layout
    os.replace(tmp / rf.name, archive)
    try:
        return _unpack(archive, src.unpack, tmp, f"{rf.name} from {origin}"), files
    finally:
        archive.unlink(missing_ok=True)


def _from_dir(dataset: str, src: Source, folder: Path, tmp: Path, sha256: str | None
              ) -> tuple[dict[str, str], dict[str, str]]:
    """Take the official file(s), the user's archive, or (for unpacked sources) the extracted layout, from a
    local folder."""
    if not folder.is_dir():
        raise MetareproError(f"{folder} (METAREPRO_{dataset.upper()}_DIR) is not a directory")
    if all((folder / rf.name).is_file() for rf in src.official):
        files = {rf.name: _copy_verified(folder / rf.name, tmp / rf.name, _expected(rf, sha256),
                                         f"official {dataset} file") for rf in src.official}
        if not src.unpacks_official:
            return files, {}
        return _maybe_unpack(src, src.official[0], tmp, files, str(folder))
    if src.archive is not None and (folder / src.archive.name).is_file():
        rf = src.archive
        files = {rf.name: _copy_verified(folder / rf.name, tmp / rf.name, _expected(rf, sha256),
                                         f"{dataset} archive")}
        return _maybe_unpack(src, rf, tmp, files, str(folder))
    if src.unpack is not None:
        markers = sorted(folder.glob(src.unpack.marker)) + sorted(
            p for p in folder.glob(f"*/{src.unpack.marker}")     # a sub-folder: only the named one, if any
            if src.unpack.within is None or p.parent.name.lower() == src.unpack.within.lower())
        if markers:
            root = markers[0].parent
            files = {}
            for path in sorted(p for p in root.rglob("*") if p.is_file()):
                rel = path.relative_to(root).as_posix()
                if any(fnmatch.fnmatchcase(rel, k) for k in src.unpack.keep):
                    with open(path, "rb") as f:
                        files[rel] = _copy_stream(f, tmp / rel)["sha256"]
            missing = [k for k in src.unpack.keep if "*" not in k and k not in files]
            if missing:
                raise MetareproError(f"{root} lacks {', '.join(missing)}")
            return files, {}
    names = " + ".join(rf.name for rf in src.official)
    alt = f", nor {src.archive.name}" if src.archive else ""
    alt += f", nor an extracted layout with {src.unpack.marker}" if src.unpack else ""
    raise MetareproError(f"{folder} holds neither {names}{alt}")


# --------------------------------------------------------------------------------------------
# Public entry point


def fetch(dataset: str, out_dir: str | Path, mirror: str | Path | None, *, source_dir: str | Path | None = None,
          url: str | None = None, sha256: str | None = None) -> Path:
    """Fetch the raw files of `dataset` into out_dir, checksum-verified; returns out_dir.

    Everything is staged in a temporary folder and renamed into place only when complete, with
    MANIFEST.json ({dataset, source, files: {relpath: sha256}}) written last: a failure leaves
    out_dir as it was. `source_dir`, `url` and `sha256` default to METAREPRO_<DATASET>_{DIR,URL,SHA256}.
    """
    src = source(dataset)
    env = f"METAREPRO_{dataset.upper()}_"
    source_dir = source_dir or os.environ.get(env + "DIR") or None
    url = url or os.environ.get(env + "URL") or None
    sha256 = sha256 or os.environ.get(env + "SHA256") or None
    out_dir = Path(out_dir)
    archives: dict[str, str] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        if source_dir:
            folder = Path(source_dir).expanduser().resolve()
            files, archives = _from_dir(dataset, src, folder, tmp, sha256)
            origin = f"dir:{folder}"
        elif url:
            files, archives = _from_official(dataset, src, tmp, url, sha256)
            origin = f"url:{url}"
        elif mirror is not None and src.mirror is not None:
            files = _from_mirror(dataset, src.mirror, Path(mirror), tmp)
            origin = f"mirror:{Path(mirror).resolve()}"
        elif all(rf.url for rf in src.official):
            if mirror is not None:
                log.info("the mirror does not carry %s; using the official URLs", dataset)
            files, archives = _from_official(dataset, src, tmp, None, None)
            origin = "official"
        else:
            raise MetareproError(f"no source for {dataset}: {_how_to(dataset)}")
        manifest: dict[str, Any] = {"dataset": dataset, "source": origin, "files": dict(sorted(files.items()))}
        if archives:
            manifest["archives"] = archives
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    log.info("fetched %s (%d files) from %s into %s", dataset, len(files), origin, out_dir)
    return out_dir


# --------------------------------------------------------------------------------------------
# Helpers shared by the prepare modules


def read_manifest(raw_dir: Path) -> dict[str, Any] | None:
    path = raw_dir / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
        assert isinstance(manifest.get("files"), dict)
    except (ValueError, AssertionError) as e:
        raise MetareproError(f"{path} is not a valid manifest ({e}); fetch {raw_dir} again") from e
    return manifest


def _published(dataset: str, raw_dir: Path) -> dict[str, dict[str, str]]:
    """Checksums known without a manifest: official md5s, mirror pins, and a pinned mirror index."""
    src = source(dataset)
    known = {rf.name: _expected(rf) for rf in (*src.official, *filter(None, [src.archive])) if _expected(rf)}
    idx = src.mirror.index if src.mirror else None
    if src.mirror and (idx is None or (raw_dir / idx).is_file()):   # an index marks the mirror layout
        known.update({rel: {"sha256": pin} for rel, pin in src.mirror.files.items() if pin})
        if idx and idx in known and sha256_file(raw_dir / idx) == known[idx]["sha256"]:
            known.update({rel: {"sha256": h} for rel, h in parse_sums(raw_dir / idx).items()})
    return known


def detect_layout(dataset: str, raw_dir: Path, layouts: Mapping[str, Sequence[str]]) -> str:
    """Which raw layout raw_dir holds: the first whose files the manifest lists (or that exist)."""
    if not raw_dir.is_dir():
        raise MetareproError(f"raw folder {raw_dir} not found: run `python -m metarepro download --dataset "
                             f"{dataset} --out {raw_dir}` first")
    manifest = read_manifest(raw_dir)
    for name, files in layouts.items():
        if any((f in manifest["files"]) if manifest else (raw_dir / f).exists() for f in files):
            return name
    wanted = "; or ".join(" + ".join(fs) for fs in layouts.values())
    raise MetareproError(f"{raw_dir} holds no raw {dataset} files (expected {wanted}); run `python -m metarepro "
                         f"download --dataset {dataset}` into it")


def verify_raw(dataset: str, raw_dir: Path, relpaths: Iterable[str]) -> str:
    """Check each raw file against MANIFEST.json (else the published checksums); return the provenance.

    Called by every prepare before it writes anything, so a corrupt or missing raw file is reported
    (by name, with the expected checksum) while out_dir is still untouched.
    """
    manifest = read_manifest(raw_dir)
    known = ({rel: {"sha256": h} for rel, h in manifest["files"].items()} if manifest
             else _published(dataset, raw_dir))
    for rel in relpaths:
        path = raw_dir / rel
        if rel not in known:
            why = f"it is not listed in {raw_dir / MANIFEST}" if manifest else \
                f"{raw_dir} has no {MANIFEST} and no checksum is published for it"
            raise MetareproError(f"cannot verify {path}: {why}; fetch {dataset} again with `python -m metarepro "
                                 f"download --dataset {dataset}`")
        expected = known[rel]
        if not path.is_file():
            exp = ", ".join(f"{a} {h}" for a, h in expected.items())
            raise MetareproError(f"raw file {path} is missing (expected {exp}); fetch {dataset} again")
        _check(f"raw file {path}", expected, _hash_file(path, expected))
    return manifest["source"] if manifest else f"{raw_dir.resolve()} (verified against published checksums)"


def split_file(relpath: str) -> Path:
    """A packaged standard split file, checked against splits/SHA256SUMS (byte-identical to the source)."""
    path = SPLITS_DIR / relpath
    sums = parse_sums(SPLITS_DIR / MIRROR_SUMS)
    if relpath not in sums or not path.is_file():
        raise MetareproError(f"split file {path} is missing from the metarepro package")
    actual = sha256_file(path)
    if actual != sums[relpath]:
        raise MetareproError(f"split file {path} was modified: expected sha256 {sums[relpath]}, got {actual}")
    return path


def resolve_options(dataset: str, options: Mapping[str, Any] | None, defaults: Mapping[str, Any],
                    choices: Mapping[str, Iterable[Any]] | None = None) -> dict[str, Any]:
    """Defaults filled in; an unknown key or a bad value is a MetareproError that names it."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise MetareproError(f"unknown {dataset} option(s) {', '.join(unknown)}; known: {', '.join(defaults)}")
    out = {**defaults, **options}
    for key, allowed in (choices or {}).items():
        allowed = list(allowed)
        if out[key] not in allowed:
            raise MetareproError(f"{dataset} option {key}={out[key]!r}; allowed: {', '.join(map(str, allowed))}")
    if "image_size" in out and (not isinstance(out["image_size"], int) or isinstance(out["image_size"], bool)
                                or out["image_size"] < 1):
        raise MetareproError(f"{dataset} option image_size must be a positive integer, got {out['image_size']!r}")
    return out


__all__ = ["SOURCES", "RemoteFile", "MirrorLayout", "Source", "Unpack", "fetch", "resolve_mirror", "http_get",
           "verify_raw", "detect_layout", "read_manifest", "split_file", "resolve_options", "parse_sums"]
