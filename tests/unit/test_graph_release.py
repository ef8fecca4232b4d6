"""G-Meta's released datasets (arxiv, Tissue-PPI, Fold-PPI) from tiny folders in its format: the DGL 0.4.3 pickle
read without DGL, each task setup's class grouping, the errors that name bad input before anything is written,
the download sources, and one tiny meta-training + evaluation on a prepared fixture."""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
import pickle
import sys
import types
import zipfile
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from metarepro import data
from metarepro.data import gmeta_release
from metarepro.data.download import fetch
from metarepro.utils import MetareproError

FOLDERS = {"arxiv": "arxiv", "tissue_ppi": "tissue_PPI", "fold_ppi": "fold_PPI"}
PREPARE = {"arxiv": gmeta_release.prepare_arxiv, "tissue_ppi": gmeta_release.prepare_tissue_ppi,
           "fold_ppi": gmeta_release.prepare_fold_ppi}


def fake_dgl() -> dict[str, types.ModuleType]:
    """Modules standing in for DGL 0.4.3 while a fixture is pickled: classes at DGL's import paths that pickle
    as DGL's do (dmlc/dgl 0.4.3.post2: graph.py, graph_index.py, utils.py, frame.py, init.py, _ffi/object.py)."""
    mods = {n: types.ModuleType(n) for n in ("dgl", "dgl.graph", "dgl.graph_index", "dgl.utils", "dgl.frame",
                                             "dgl.init", "dgl._ffi", "dgl._ffi.object")}

    def place(obj, module: str, name: str):
        obj.__module__, obj.__qualname__, obj.__name__ = module, name, name
        setattr(mods[module], name, obj)
        return obj

    def _new_object(cls):
        return cls.__new__(cls)

    def zero_initializer(shape, dtype, ctx, id_range):
        raise AssertionError("never called")

    class Index:
        def __init__(self, data):
            self.data = data

        def __getstate__(self):                       # its slice, else tousertensor()
            return self.data

    class GraphIndex:
        def __init__(self, n, src, dst):
            self.n, self.src, self.dst = n, src, dst

        def __reduce__(self):                         # ObjectBase.__reduce__ with GraphIndex.__getstate__
            return (_new_object, (type(self),), (self.n, False, Index(torch.as_tensor(self.src)),
                                                 Index(torch.as_tensor(self.dst))))

    class Scheme(namedtuple("Scheme", ["shape", "dtype"])):
        def __reduce__(self):
            return self._reconstruct_scheme, (self.shape, "float32")

        @classmethod
        def _reconstruct_scheme(cls, shape, dtype_str):
            return cls(shape, dtype_str)

    class Column:
        def __init__(self, data):
            self.data, self.scheme = data, Scheme(tuple(data.shape[1:]), "float32")

    class Frame:
        def __init__(self, n, columns=None):
            self._columns, self._num_rows = dict(columns or {}), n
            self._initializers, self._remote_init_builder, self._default_initializer = {}, None, None

    class FrameRef:
        def __init__(self, frame):
            self._frame, self._index = frame, Index(slice(0, frame._num_rows))

    class DGLGraph:
        def __init__(self, n, edges, ndata=None):
            src, dst = edges[:, 0], edges[:, 1]
            self._graph = GraphIndex(n, src, dst)
            self._node_frame = FrameRef(Frame(n, {k: Column(v) for k, v in (ndata or {}).items()}))
            self._edge_frame = FrameRef(Frame(len(src)))
            self._msg_index = None
            self._msg_frame = FrameRef(Frame(len(src)))
            self._msg_frame._frame._default_initializer = zero_initializer
            self._message_func = self._reduce_func = self._apply_node_func = self._apply_edge_func = None
            self._batch_num_nodes = self._batch_num_edges = self._parent = None

    place(_new_object, "dgl._ffi.object", "_new_object")
    place(zero_initializer, "dgl.init", "zero_initializer")
    place(Index, "dgl.utils", "Index")
    place(GraphIndex, "dgl.graph_index", "GraphIndex")
    for cls in (Scheme, Column, Frame, FrameRef):
        place(cls, "dgl.frame", cls.__name__)
    place(DGLGraph, "dgl.graph", "DGLGraph")
    return mods


def dump_dgl(path: Path, graphs: list[tuple[int, np.ndarray]], ndata: bool = False) -> None:
    """graph_dgl.pkl as G-Meta wrote it (pickle.dump of a list of DGLGraphs; protocol 3, Python 3.7's default);
    the fake dgl is in sys.modules only while pickling."""
    mods = fake_dgl()
    saved = {n: sys.modules.get(n) for n in mods}
    sys.modules.update(mods)
    try:
        objs = [mods["dgl.graph"].DGLGraph(n, e, {"h": torch.ones(n, 2)} if ndata else None) for n, e in graphs]
        path.write_bytes(pickle.dumps(objs, protocol=3))
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def ring(n: int, offset: int = 0) -> np.ndarray:
    """A ring with chords over nodes offset..offset+n-1, both directions (as DGL stores an undirected graph)."""
    e = [(offset + i, offset + (i + 1) % n) for i in range(n)] + [(offset + i, offset + (i + 3) % n) for i in range(n)]
    e = np.array(e, dtype=np.int64)
    return np.concatenate([e, e[:, ::-1]])


def write_csv(path: Path, rows: list[tuple[str, int]], header=("", "name", "label")) -> None:
    """pandas' DataFrame.to_csv layout: an unnamed index column, then name and label."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows((i, n, lab) for i, (n, lab) in enumerate(rows))


def save_features(path: Path, mats: list[np.ndarray]) -> None:
    if len(mats) == 1:
        np.save(path, mats[0])                        # a single graph: one 2-D matrix
    else:
        arr = np.empty(len(mats), dtype=object)       # per-graph matrices of different sizes (np.array(list))
        arr[:] = mats
        np.save(path, arr)


def make_release(root: Path, dataset: str) -> Path:
    """A tiny folder of G-Meta_Data/ for `dataset`."""
    folder = root / FOLDERS[dataset]
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    if dataset == "arxiv":            # one graph, 9 labels x 6 nodes + node 54 without edges; labels 3 / 3 / 3
        graphs = [(55, ring(54))]
        label = {f"0_{v}": (v % 9 if v < 54 else 0) for v in range(55)}
        split_of = lambda g, lab: ("train", "val", "test")[lab // 3]      # noqa: E731
        tasks = {"": label}
    elif dataset == "tissue_ppi":     # 4 graphs of 12 nodes; binary tasks; graphs 0, 1 train, 2 val, 3 test
        graphs = [(12, ring(12)) for _ in range(4)]
        tasks = {f"task{t}/": {f"{g}_{v}": (v % 2 if t == 1 else (v // 2) % 2) for g in range(4) for v in range(12)}
                 for t in (1, 2)}
        split_of = lambda g, lab: ("train", "train", "val", "test")[g]    # noqa: E731
    else:                             # 3 graphs of 27 nodes, 9 labels x 3 nodes each; labels 3 / 3 / 3
        graphs = [(27, ring(27)) for _ in range(3)]
        tasks = {"": {f"{g}_{v}": v % 9 for g in range(3) for v in range(27)}}
        split_of = lambda g, lab: ("train", "val", "test")[lab // 3]      # noqa: E731
    dump_dgl(folder / "graph_dgl.pkl", graphs, ndata=dataset == "tissue_ppi")
    save_features(folder / "features.npy", [rng.normal(size=(n, 4)).astype(np.float32) for n, _ in graphs])
    for sub, label in tasks.items():
        (folder / sub).mkdir(exist_ok=True)
        # values as G-Meta's scripts leave them: numpy integers beside plain ints
        mixed = {k: (np.int64(v) if i % 2 else v) for i, (k, v) in enumerate(label.items())}
        (folder / sub / "label.pkl").write_bytes(pickle.dumps(mixed, protocol=3))
        for split in ("train", "val", "test"):
            rows = [(k, v) for k, v in label.items() if split_of(int(k.split("_")[0]), v) == split]
            write_csv(folder / sub / f"{split}.csv", rows)
    return folder


def fetched(tmp_path: Path, dataset: str, mutate=None) -> Path:
    """The fixture release, optionally mutated, fetched as a user's folder (METAREPRO_<DATASET>_DIR)."""
    folder = make_release(tmp_path / "G-Meta_Data", dataset)
    if mutate:
        mutate(folder)
    return fetch(dataset, tmp_path / "raw" / dataset, None, source_dir=folder)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name in PREPARE:
        tmp = tmp_path_factory.mktemp(name)
        out[name] = PREPARE[name](fetched(tmp, name), tmp / "data" / name, {})
    return out


def test_the_dgl_pickle_is_read_without_dgl(tmp_path):
    path = tmp_path / "graph_dgl.pkl"
    edges = ring(10)
    dump_dgl(path, [(11, edges), (3, np.array([[0, 1], [1, 2]]))], ndata=True)
    assert "dgl" not in sys.modules
    raw = path.read_bytes()
    assert b"dgl.graph_index" in raw and b"GraphIndex" in raw and b"torch.storage" in raw   # DGL's own paths
    (n0, e0), (n1, e1) = gmeta_release.read_graphs(path)
    assert n0 == 11 and np.array_equal(e0, edges) and n1 == 3 and e1.tolist() == [[0, 1], [1, 2]]
    # the converted layout: graphs.npz
    np.savez(tmp_path / "graphs.npz", n_nodes=np.array([11, 3]), edges_0=edges, edges_1=np.array([[0, 1], [1, 2]]))
    assert [(n, e.tolist()) for n, e in gmeta_release.read_graphs(tmp_path / "graphs.npz")] == \
        [(n0, e0.tolist()), (n1, e1.tolist())]


def test_tensors_are_rebuilt_from_their_bytes():
    for t in (torch.arange(7), torch.arange(12.0).reshape(3, 4).t(), torch.arange(10)[3:8],
              torch.zeros(0, dtype=torch.int64), torch.tensor([True, False])):
        out = gmeta_release.load_pickle(Path("t.pkl"), io.BytesIO(pickle.dumps(t, protocol=3)))
        assert np.array_equal(out, t.numpy()) and out.dtype == t.numpy().dtype


def test_arxiv_single_graph_disjoint_labels(prepared):
    out = prepared["arxiv"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["setup"] == "single_graph_disjoint_labels" and meta["variant"] == "G-Meta release"
    assert meta["hops"] == 2 and meta["max_nodes"] == 30 and meta["feature_dim"] == 4
    assert meta["labels"] == {"train": [0, 1, 2], "val": [3, 4, 5], "test": [6, 7, 8]}
    assert meta["dropped_isolated"] == {"train": 1, "val": 0, "test": 0}          # node 0_54 has no edges
    assert all(len(s["sha256"]) == 64 for s in meta["splits"].values())
    split = data.cached_graph_split(str(out), "train")
    assert list(split.class_names) == ["graph0/0", "graph0/1", "graph0/2"] and set(split.groups) == {0}
    assert [len(ix) for ix in split.by_class] == [6, 6, 6]
    task = data.episodes("arxiv", {}, str(out), "test", 3, 2, 3, seed=0).episode(0)
    assert task.x_support.shape == (6, 30, 34) and task.y_query.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert data.input_shape("arxiv", str(out)) == (30, 34)


def test_tissue_ppi_shared_labels_split_by_graph_and_task_option(prepared, tmp_path):
    out = prepared["tissue_ppi"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["setup"] == "multi_graph_shared_labels" and meta["variant"] == "G-Meta release (task 1)"
    assert meta["graphs"] == {"train": ["graph0", "graph1"], "val": ["graph2"], "test": ["graph3"]}
    split = data.cached_graph_split(str(out), "train")
    assert list(split.class_names) == ["graph0/0", "graph0/1", "graph1/0", "graph1/1"]
    assert split.groups.tolist() == [0, 0, 1, 1]                                     # a group per graph
    eps = data.episodes("tissue_ppi", {}, str(out), "train", 2, 1, 2, seed=0)
    for i in range(6):
        classes = eps.episode(i).classes
        assert len({int(split.groups[c]) for c in classes}) == 1                     # one graph per task
    # task 2's labels (v // 2 % 2) give other class members than task 1's (v % 2)
    raw = tmp_path / "raw"
    fetch("tissue_ppi", raw, None, source_dir=make_release(tmp_path / "G-Meta_Data", "tissue_ppi"))
    t2 = gmeta_release.prepare_tissue_ppi(raw, tmp_path / "t2", {"task": 2})
    assert json.loads((t2 / "meta.json").read_text())["options"]["task"] == 2
    a = np.load(out / "train.npz")["features"][:, 0]
    b = np.load(t2 / "train.npz")["features"][:, 0]
    assert a.shape == b.shape and not np.array_equal(a, b)                          # other nodes per class
    with pytest.raises(MetareproError, match="task"):
        gmeta_release.prepare_tissue_ppi(raw, tmp_path / "t11", {"task": 11})
    with pytest.raises(MetareproError, match="unknown arxiv option"):
        gmeta_release.prepare_arxiv(raw, tmp_path / "a", {"task": 1})
    assert not (tmp_path / "t11").exists() and not (tmp_path / "a").exists()


def test_fold_ppi_disjoint_labels_over_graphs(prepared):
    out = prepared["fold_ppi"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["setup"] == "multi_graph_disjoint_labels"
    assert meta["labels"] == {"train": [0, 1, 2], "val": [3, 4, 5], "test": [6, 7, 8]}
    split = data.cached_graph_split(str(out), "val")
    assert len(split.class_names) == 9 and split.groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert split.class_names[3] == "graph1/3"
    eps = data.episodes("fold_ppi", {}, str(out), "val", 3, 1, 2, seed=0)
    groups = {int(split.groups[eps.episode(i).classes[0]]) for i in range(20)}
    for i in range(20):
        assert len({int(split.groups[c]) for c in eps.episode(i).classes}) == 1
    assert groups == {0, 1, 2}


def _features_short(folder: Path) -> None:
    mats = list(np.load(folder / "features.npy", allow_pickle=True))
    mats[1] = mats[1][:-1]
    save_features(folder / "features.npy", mats)


def _label_key(folder: Path) -> None:
    label = pickle.loads((folder / "label.pkl").read_bytes())
    label["7-3"] = label.pop("0_3")
    (folder / "label.pkl").write_bytes(pickle.dumps(label))


def _csv_header(folder: Path) -> None:
    rows = list(csv.reader(open(folder / "train.csv")))[1:]
    write_csv(folder / "train.csv", [(r[1], int(r[2])) for r in rows], header=("", "node", "class"))


def _small_label_set(folder: Path) -> None:
    rows = list(csv.reader(open(folder / "val.csv")))[1:]
    write_csv(folder / "val.csv", [(r[1], int(r[2])) for r in rows if r[2] != "5"])


def _overlap(folder: Path) -> None:
    rows = list(csv.reader(open(folder / "val.csv")))[1:]
    write_csv(folder / "val.csv", [(r[1], int(r[2])) for r in rows] + [("0_0", 0)])


def _csv_label(folder: Path) -> None:
    rows = list(csv.reader(open(folder / "test.csv")))[1:]
    write_csv(folder / "test.csv", [(r[1], 8 if i == 0 else int(r[2])) for i, r in enumerate(rows)])


BAD = [
    ("fold_ppi", _features_short, {}, r"features\.npy: graph 1 has 26 feature rows for its 27 nodes"),
    ("arxiv", _label_key, {}, r"label\.pkl: node name '7-3' is not 'X_Y'"),
    ("arxiv", _csv_header, {}, r"train\.csv: expected pandas' to_csv columns"),
    ("arxiv", _small_label_set, {}, r"val\.csv: its graphs have at most 2 label\(s\); G-Meta's 3-way"),
    ("fold_ppi", _overlap, {}, r"val\.csv: node '0_0' is listed twice"),
    ("arxiv", _csv_label, {}, r"test\.csv: node '0_6' has label 8, label\.pkl says 6"),
    ("arxiv", None, {"drop_isolated": False}, r"graph_dgl\.pkl: node\(s\) 0_54 of train\.csv have no edges"),
]


@pytest.mark.parametrize("dataset, mutate, options, message", BAD, ids=[m.__name__ if m else "isolated"
                                                                        for _, m, _, _ in BAD])
def test_bad_input_is_named_before_anything_is_written(tmp_path, dataset, mutate, options, message):
    raw = fetched(tmp_path, dataset, mutate)
    with pytest.raises(MetareproError, match=message):
        PREPARE[dataset](raw, tmp_path / "out", options)
    assert not (tmp_path / "out").exists()


def test_labels_shared_between_disjoint_splits_are_refused(tmp_path):
    def leak(folder: Path) -> None:
        rows = list(csv.reader(open(folder / "train.csv")))[1:]     # node 2_0 (label 0) moved to test
        write_csv(folder / "train.csv", [(r[1], int(r[2])) for r in rows if r[1] != "2_0"])
        rows = list(csv.reader(open(folder / "test.csv")))[1:]
        write_csv(folder / "test.csv", [(r[1], int(r[2])) for r in rows] + [("2_0", 0)])
    raw = fetched(tmp_path, "fold_ppi", leak)
    with pytest.raises(MetareproError, match=r"test\.csv: label 0 is also in train\.csv"):
        gmeta_release.prepare_fold_ppi(raw, tmp_path / "out", {})
    assert not (tmp_path / "out").exists()


def test_a_pickle_naming_another_global_is_refused_and_never_run(tmp_path):
    import os
    sentinel = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    def poison(folder: Path) -> None:
        (folder / "graph_dgl.pkl").write_bytes(pickle.dumps([Evil()], protocol=3))
    raw = fetched(tmp_path, "arxiv", poison)
    with pytest.raises(MetareproError, match=r"graph_dgl\.pkl: refusing to unpickle posix\.system"):
        gmeta_release.prepare_arxiv(raw, tmp_path / "out", {})
    assert not sentinel.exists() and not (tmp_path / "out").exists()
    # the same guard for label.pkl and features.npy's object array
    (raw / "label.pkl").write_bytes(pickle.dumps({"0_0": Evil()}))
    with pytest.raises(MetareproError, match=r"label\.pkl: refusing to unpickle posix\.system"):
        gmeta_release.read_labels(raw / "label.pkl")
    arr = np.empty(1, dtype=object)
    arr[0] = Evil()
    np.save(tmp_path / "features.npy", arr)
    with pytest.raises(MetareproError, match=r"features\.npy: refusing to unpickle posix\.system"):
        gmeta_release.read_features(tmp_path / "features.npy")
    assert not sentinel.exists()


def test_graphs_npz_layout_prepares_the_same_arrays(tmp_path, prepared):
    def convert(folder: Path) -> None:
        graphs = gmeta_release.read_graphs(folder / "graph_dgl.pkl")
        np.savez(folder / "graphs.npz", n_nodes=np.array([n for n, _ in graphs]),
                 **{f"edges_{i}": e for i, (_, e) in enumerate(graphs)})
        (folder / "graph_dgl.pkl").unlink()
    out = gmeta_release.prepare_arxiv(fetched(tmp_path, "arxiv", convert), tmp_path / "out", {})
    meta, ref = (json.loads((p / "meta.json").read_text()) for p in (out, prepared["arxiv"]))
    assert meta["raw_layout"] == "graphs.npz"
    assert {s: v["sha256"] for s, v in meta["splits"].items()} == {s: v["sha256"] for s, v in ref["splits"].items()}


def test_download_sources(tmp_path, monkeypatch):
    for name in ("ARXIV", "TISSUE_PPI", "FOLD_PPI"):
        for kind in ("DIR", "URL", "SHA256"):
            monkeypatch.delenv(f"METAREPRO_{name}_{kind}", raising=False)
    with pytest.raises(MetareproError, match=r"METAREPRO_TISSUE_PPI_DIR=<the folder G-Meta_Data/tissue_PPI>") as err:
        fetch("tissue_ppi", tmp_path / "none", None)
    assert "drive.google.com" in str(err.value) and not (tmp_path / "none").exists()
    # a folder holding G-Meta_Data.zip: each dataset takes its own sub-folder of it
    root = tmp_path / "src"
    for name in ("arxiv", "fold_ppi", "tissue_ppi"):
        make_release(root / "G-Meta_Data", name)
    (tmp_path / "zip").mkdir()
    with zipfile.ZipFile(tmp_path / "zip" / "G-Meta_Data.zip", "w") as z:
        for p in sorted((root / "G-Meta_Data").rglob("*")):
            if p.is_file():
                z.write(p, p.relative_to(root).as_posix())
    for name, files in (("fold_ppi", {"label.pkl", "train.csv"}), ("tissue_ppi", {"task2/label.pkl"})):
        raw = fetch(name, tmp_path / "raw" / name, None, source_dir=tmp_path / "zip")
        manifest = json.loads((raw / "MANIFEST.json").read_text())
        folder = root / "G-Meta_Data" / FOLDERS[name]
        assert files <= set(manifest["files"])
        for rel in files:
            assert manifest["files"][rel] == hashlib.sha256((folder / rel).read_bytes()).hexdigest()
    # the user's folder G-Meta_Data/<dataset> itself, or G-Meta_Data/ (its named sub-folder)
    raw = fetch("fold_ppi", tmp_path / "raw2", None, source_dir=root / "G-Meta_Data")
    assert json.loads((raw / "MANIFEST.json").read_text())["files"]["label.pkl"] == \
        hashlib.sha256((root / "G-Meta_Data" / "fold_PPI" / "label.pkl").read_bytes()).hexdigest()


def test_registration_is_consistent():
    from metarepro.config import load_schema
    from metarepro.data.download import SOURCES
    from metarepro.dataset_cards import DATASET_CARDS, GRAPH, SYNTHESIZED

    schema = load_schema()
    for name in PREPARE:
        assert data.get(name).graph and not data.get(name).synthesized
        assert name in SOURCES and name in GRAPH and name not in SYNTHESIZED and name in DATASET_CARDS
        assert name in schema["properties"]["datasets"]["properties"]
        assert name in schema["$defs"]["experiment"]["properties"]["dataset"]["enum"]


def test_a_tiny_run_trains_and_evaluates_on_a_prepared_release(prepared, tmp_path):
    from metarepro.config import resolve_run, validate_config
    from metarepro.evaluate import evaluate
    from metarepro.train import metatrain

    cfg = validate_config({"experiments": {"e": {
        "dataset": "arxiv", "backbone": "gnn", "backbone_args": {"hidden": [8, 8]}, "ways": 3, "shots": [1],
        "methods": {"gmeta": {"inner_steps": 1, "eval_inner_steps": 2}}}}})
    run = resolve_run(cfg, "e", "gmeta", 1, 0)
    run = dataclasses.replace(run, data_dir=str(prepared["arxiv"]), run_dir=str(tmp_path / "run"),
                              train={**run.train, "iterations": 2, "meta_batch": 2, "queries": 2, "val_every": 2,
                                     "val_episodes": 2, "checkpoint_every": 2},
                              evaluation={**run.evaluation, "episodes": 3, "queries": 2, "curve_episodes": 1})
    assert metatrain(run, progress=False).exists()
    ev = json.loads(evaluate(tmp_path / "run", progress=False).read_text())
    assert len(ev["per_episode"]) == 3 and all(math.isfinite(x) for x in ev["per_episode"])
