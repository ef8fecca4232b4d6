"""G-Meta's released real-world node-classification data, read without DGL (Huang & Zitnik 2020, "Graph Meta Learning
via Local Subgraphs", NeurIPS; github.com/mims-harvard/G-Meta): ogbn-arxiv, Tissue-PPI and Fold-PPI.

Raw layout: one folder of G-Meta_Data.zip (metarepro.data.download names where to get it), as G-Meta's train.py and
subgraph_data_processing.py (commit 1bcc4f6) read it:
  graph_dgl.pkl   a pickled list of DGL 0.4.3 DGLGraphs, graph X = item X (one graph: [G])
  features.npy    per-graph node features: an object array [feat_0, ...] of (n_X, F) matrices, or one 2-D matrix
                  (a single graph)
  label.pkl       a pickled dict {"X_Y": label}: node Y of graph X
  train.csv, val.csv, test.csv   pandas to_csv: an unnamed index column, then `name` ("X_Y") and `label`
Tissue-PPI keeps label.pkl and the csvs of each of its ten binary tasks in task1/ ... task10/ (option `task`).
Instead of graph_dgl.pkl, graphs.npz (`n_nodes` (G,) and `edges_<X>` (E_X, 2) int arrays, np.savez) holds graphs
that a user converted with DGL themselves; it is read when present.

graph_dgl.pkl is read by a restricted unpickler: the DGL classes it names are replaced by stubs that only record
their state, numpy arrays and torch tensors are rebuilt from their bytes without torch.load, and any other global
is refused, so a pickle can run no code. Each split holds exactly the nodes its csv lists, with label.pkl's labels;
a class is a (graph, label) pair (metarepro.data.graphs):
- arxiv: single graph, disjoint labels (G-Meta's 40 labels split by its csvs), one group;
- tissue_ppi: 24 graphs, shared labels (each task's two labels), split by graph;
- fold_ppi: many graphs, disjoint labels; G-Meta draws a task's classes from any graphs, here (as every setup of
  metarepro.data.graphs) from one graph, so only graphs with enough nodes of >= `ways` labels of a split serve it.
Subgraphs are taken on the undirected graph (G-Meta follows DGL in-edges: the same on graphs stored with both
directions), the nearest `max_nodes` within `hops` kept (G-Meta keeps a random 1000 of a larger h-hop net).
"""
from __future__ import annotations

import collections
import csv
import io
import logging
import pickle
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..utils import MetareproError
from .download import detect_layout, resolve_options, verify_raw
from .graphs import Graph, split_samples, write_graph_dataset
from .store import SPLITS

try:                                   # numpy >= 2 (numpy.core is a deprecated alias there)
    from numpy._core import multiarray as _multiarray
except ImportError:                    # pragma: no cover - numpy 1.x
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "hops": 2,                 # G-Meta's h: 2 in every README command (its default)
    # Subgraph cap, the nearest kept (G-Meta keeps a random 1000 of a larger net). The prepared arrays are dense,
    # N x M x M uint8 + N x M x F float32: ogbn-arxiv's 169,343 nodes (F = 128) take 2.8 GB at 30, 8.0 GB at 80.
    "max_nodes": 30,
    # A node without edges has no subgraph (G-Meta's GCN without self-loops reads nothing but the bias for it):
    # left out, and counted in meta.json. false: such a node is an error naming it.
    "drop_isolated": True,
}
TASK_DEFAULTS: dict[str, Any] = {**DEFAULTS, "task": 1}   # Tissue-PPI: which of its ten binary tasks (task1..10/)
TASKS = range(1, 11)

# G-Meta's n_way per dataset (README commands; Tissue-PPI tasks are binary): every split must offer a graph with
# at least this many labels, else its published tasks cannot be drawn
WAYS = {"arxiv": 3, "tissue_ppi": 2, "fold_ppi": 3}

# ---------------------------------------------------------------------------------------------------------------
# The restricted unpickler
#
# What DGL 0.4.x pickles (dmlc/dgl, tags v0.4.0 .. 0.4.3.post2, python/dgl/):
# - graph.py: DGLGraph defines no __getstate__, so it pickles as NEWOBJ + its __dict__; the structure is
#   `_graph`, a GraphIndex (the frames `_node_frame`, `_edge_frame`, `_msg_frame` hold features we do not need);
# - _ffi/object.py: ObjectBase.__reduce__ = (_new_object, (cls,), self.__getstate__());
# - graph_index.py: GraphIndex.__getstate__ = (n_nodes, readonly, src, dst) in 0.4.3 and
#   (n_nodes, multigraph, readonly, src, dst) in 0.4.0 - 0.4.2, src/dst from self.edges(): utils.Index;
# - utils.py: Index.__getstate__ = its slice, if it is one, else self.tousertensor() (a torch tensor);
# - frame.py: Frame / FrameRef / Column pickle as their __dict__, Scheme as (Scheme._reconstruct_scheme,
#   (shape, dtype name)); FrameRef's index is an Index over slice(0, n); init.zero_initializer is the message
#   frame's default initializer (a global reference).
# A torch tensor pickles (torch/_tensor.py, torch/storage.py; the same in torch 1.5 and 2.x) as
# _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks), its storage as
# _load_from_bytes(<torch.save legacy bytes>), decoded here by _legacy_storage.


class _Bad(Exception):
    """Raised inside an unpickle; the caller names the file."""


class _Stub:
    """Stands in for a DGL class: records what pickle gives it and runs nothing."""
    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _DGLGraph(_Stub):
    pass


class _GraphIndex(_Stub):
    pass


class _Index(_Stub):
    pass


class _Frame(_Stub):
    pass


class _Scheme(_Stub):
    @classmethod
    def _reconstruct_scheme(cls, shape: Any, dtype: Any) -> "_Scheme":
        obj = cls()
        obj.state = (shape, dtype)
        return obj


def _new_object(cls: Any) -> _Stub:
    if not (isinstance(cls, type) and issubclass(cls, _Stub)):
        raise _Bad(f"_new_object({cls!r}): not a DGL object")
    return cls.__new__(cls)


def _zero_initializer(*args: Any, **kwargs: Any) -> None:
    raise _Bad("dgl.init.zero_initializer is a stand-in and cannot be called")


def _getattr(obj: Any, name: str) -> Any:
    """pickle's reference to a bound method (Scheme._reconstruct_scheme), on stubs only."""
    if not (isinstance(obj, type) and issubclass(obj, _Stub)) or name.startswith("__"):
        raise _Bad(f"refusing getattr({obj!r}, {name!r})")
    return getattr(obj, name)


_STORAGES = {"LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
             "ByteStorage": np.uint8, "BoolStorage": np.bool_, "HalfStorage": np.float16,
             "FloatStorage": np.float32, "DoubleStorage": np.float64}
_TORCH_MAGIC, _TORCH_PROTOCOL = 0x1950A86A20F9469CFC6C, 1001     # torch/serialization.py, legacy format


class _StorageUnpickler(pickle.Unpickler):
    """The pickles inside a legacy torch.save stream: storage classes only, storages as persistent ids."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGES:
            return np.dtype(_STORAGES[name])
        raise _Bad(f"refusing to load {module}.{name} inside a torch storage")

    def persistent_load(self, pid: Any) -> Any:
        # ('storage', storage type, key, location, numel, view metadata): torch/serialization.py persistent_id
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage" and isinstance(pid[1], np.dtype)):
            raise _Bad(f"unexpected persistent id {pid!r} in a torch storage")
        return pid


def _legacy_storage(data: bytes) -> np.ndarray:
    """A torch storage from its pickled bytes (torch.save's legacy format: magic, protocol, sys_info, the object,
    the storage keys, then per key its element count as int64 and its raw bytes), as a flat numpy array."""
    f = io.BytesIO(data)

    def load() -> Any:
        return _StorageUnpickler(f).load()
    if load() != _TORCH_MAGIC or load() != _TORCH_PROTOCOL:
        raise _Bad("a tensor's storage is not in torch's legacy serialization format")
    sys_info = load()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian", True)):
        raise _Bad("a tensor's storage was written on a big-endian machine")
    pid = load()
    keys = load()
    if not (isinstance(pid, tuple) and isinstance(keys, list)):
        raise _Bad("a tensor's storage is not in torch's legacy serialization format")
    arrays = {}
    for key in keys:
        count = int.from_bytes(f.read(8), "little", signed=True)
        dtype = pid[1] if key == pid[2] else None
        if dtype is None or count < 0:
            raise _Bad(f"a tensor's storage holds an unexpected entry {key!r}")
        raw = f.read(count * dtype.itemsize)
        if len(raw) != count * dtype.itemsize:
            raise _Bad("a tensor's storage is truncated")
        arrays[key] = np.frombuffer(raw, dtype=dtype)
    if pid[2] not in arrays:
        raise _Bad("a tensor's storage lacks its data")
    flat = arrays[pid[2]]
    if pid[5] is not None:                                # a view: (key, offset, size)
        _, offset, size = pid[5]
        flat = flat[int(offset):int(offset) + int(size)]
    return flat


def _rebuild_tensor(storage: Any, offset: int, size: Sequence[int], stride: Sequence[int], *rest: Any) -> np.ndarray:
    """torch._utils._rebuild_tensor_v2 as a numpy array, the view checked against its storage."""
    if not isinstance(storage, np.ndarray):
        raise _Bad("a tensor without a storage")
    size, stride, offset = tuple(int(s) for s in size), tuple(int(s) for s in stride), int(offset)
    if len(size) != len(stride) or offset < 0 or min(size, default=1) < 0 or min(stride, default=0) < 0:
        raise _Bad(f"a tensor view of size {size}, stride {stride}, offset {offset}")
    if 0 in size:
        return np.zeros(size, dtype=storage.dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(storage):
        raise _Bad(f"a tensor view of size {size}, stride {stride}, offset {offset} past its storage "
                   f"({len(storage)} elements)")
    view = np.lib.stride_tricks.as_strided(storage[offset:], size, [s * storage.itemsize for s in stride])
    return np.array(view)


ALLOWED: dict[tuple[str, str], Any] = {
    ("dgl.graph", "DGLGraph"): _DGLGraph,
    ("dgl.graph_index", "GraphIndex"): _GraphIndex,
    ("dgl._ffi.object", "_new_object"): _new_object,
    ("dgl.utils", "Index"): _Index,
    ("dgl.frame", "Frame"): _Frame,
    ("dgl.frame", "FrameRef"): _Frame,
    ("dgl.frame", "Column"): _Frame,
    ("dgl.frame", "Scheme"): _Scheme,
    ("dgl.init", "zero_initializer"): _zero_initializer,
    ("builtins", "getattr"): _getattr,
    ("builtins", "slice"): slice,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch.storage", "_load_from_bytes"): _legacy_storage,
    # numpy arrays and scalars (features.npy's object array, label.pkl's numpy labels): numpy 1.x and 2.x paths
    **{(m, n): getattr(_multiarray, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
       for n in ("_reconstruct", "scalar")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Loads only the globals of ALLOWED; anything else (os.system, ...) is refused before it is called."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        raise _Bad(f"refusing to unpickle {module}.{name}: not one of the DGL 0.4 / numpy / torch globals that "
                   "G-Meta's files hold (a pickle can run arbitrary code, so only an allow-list is loaded)")


def load_pickle(path: Path, stream: Any = None) -> Any:
    """Restricted pickle.load of `path` (or of `stream`, read from `path`); errors name the file."""
    try:
        if stream is not None:
            return RestrictedUnpickler(stream).load()
        with open(path, "rb") as f:
            return RestrictedUnpickler(f).load()
    except _Bad as e:
        raise MetareproError(f"{path}: {e}") from None
    except (pickle.UnpicklingError, EOFError, AttributeError, ValueError, TypeError, IndexError, KeyError) as e:
        raise MetareproError(f"{path}: not a readable pickle ({type(e).__name__}: {e})") from None


# ---------------------------------------------------------------------------------------------------------------
# The raw files


def _as_index(value: Any, path: Path, what: str) -> np.ndarray:
    state = value.state if isinstance(value, _Index) else value
    if isinstance(state, slice):
        return np.arange(state.start or 0, state.stop, state.step or 1, dtype=np.int64)
    if isinstance(state, np.ndarray) and state.ndim == 1 and state.dtype.kind in "iu":
        return state.astype(np.int64)
    raise MetareproError(f"{path}: {what} is not an index array (got {type(state).__name__})")


def dgl_structure(graph: Any, path: Path, index: int) -> tuple[int, np.ndarray]:
    """(node count, edges (E, 2) int64) of one unpickled DGL 0.4 graph."""
    where = f"graph {index}"
    gidx = graph.state.get("_graph") if isinstance(graph, _DGLGraph) and isinstance(graph.state, dict) else None
    if not isinstance(gidx, _GraphIndex) or not isinstance(gidx.state, tuple) or len(gidx.state) not in (4, 5):
        raise MetareproError(f"{path}: {where} is not a DGL 0.4 DGLGraph (got {type(graph).__name__})")
    n_nodes, src, dst = gidx.state[0], gidx.state[-2], gidx.state[-1]
    src, dst = _as_index(src, path, f"{where}'s edge sources"), _as_index(dst, path, f"{where}'s edge targets")
    return _checked(int(n_nodes), np.stack([src, dst], axis=1) if len(src) == len(dst) else None, path, where)


def _checked(n_nodes: int, edges: np.ndarray | None, path: Path, where: str) -> tuple[int, np.ndarray]:
    if edges is None or edges.ndim != 2 or edges.shape[1] != 2:
        raise MetareproError(f"{path}: {where}'s edges are not (E, 2) source / target pairs")
    if n_nodes < 1 or (len(edges) and (int(edges.min()) < 0 or int(edges.max()) >= n_nodes)):
        raise MetareproError(f"{path}: {where} has an edge outside its {n_nodes} nodes")
    return n_nodes, edges.astype(np.int64)


def read_graphs(path: Path) -> list[tuple[int, np.ndarray]]:
    """Each graph's (node count, edges (E, 2)) from graph_dgl.pkl or graphs.npz."""
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "n_nodes" not in z.files:
                raise MetareproError(f"{path}: no `n_nodes` array (graphs.npz holds n_nodes and edges_0, edges_1, ...)")
            n_nodes = z["n_nodes"].reshape(-1)
            missing = [f"edges_{i}" for i in range(len(n_nodes)) if f"edges_{i}" not in z.files]
            if missing:
                raise MetareproError(f"{path}: {len(n_nodes)} graphs in n_nodes but no {', '.join(missing[:5])}")
            return [_checked(int(n), z[f"edges_{i}"], path, f"edges_{i}") for i, n in enumerate(n_nodes)]
    obj = load_pickle(path)
    if not isinstance(obj, list) or not obj:
        raise MetareproError(f"{path}: expected a pickled list of DGL graphs, got {type(obj).__name__}")
    return [dgl_structure(g, path, i) for i, g in enumerate(obj)]


def read_features(path: Path) -> list[np.ndarray]:
    """Per-graph feature matrices from features.npy; an object array is read with the restricted unpickler."""
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            header = {(1, 0): np.lib.format.read_array_header_1_0,
                      (2, 0): np.lib.format.read_array_header_2_0}.get(version)
            if header is None:
                raise ValueError(f"npy version {version}")
            shape, fortran, dtype = header(f)
        except ValueError as e:
            raise MetareproError(f"{path}: not a .npy file ({e})") from None
        if dtype.hasobject:
            arr = load_pickle(path, f)               # np.save pickles object arrays whole
        else:
            arr = None
    if arr is None:
        arr = np.load(path, allow_pickle=False)
    if not isinstance(arr, np.ndarray):
        raise MetareproError(f"{path}: expected an array of feature matrices, got {type(arr).__name__}")
    if arr.dtype != object and arr.ndim == 2:
        mats = [arr]                                 # one graph (G-Meta: "single graph")
    elif arr.dtype != object and arr.ndim == 3:
        mats = list(arr)
    else:
        mats = list(arr.reshape(-1)) if arr.dtype == object else []
    out = []
    for i, m in enumerate(mats):
        if not (isinstance(m, np.ndarray) and m.ndim == 2 and m.dtype.kind in "biuf"):
            raise MetareproError(f"{path}: graph {i}'s features are not a 2-D numeric matrix")
        out.append(m.astype(np.float32, copy=False))
    if not out:
        raise MetareproError(f"{path}: expected one (nodes, features) matrix per graph, got shape {arr.shape}")
    if len({m.shape[1] for m in out}) != 1:
        raise MetareproError(f"{path}: the graphs' feature widths differ ({sorted({m.shape[1] for m in out})})")
    return out


def _node_name(name: Any, where: str) -> tuple[int, int]:
    parts = str(name).split("_") if isinstance(name, str) else []
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise MetareproError(f"{where}: node name {name!r} is not 'X_Y' (node Y of graph X)")
    return int(parts[0]), int(parts[1])


def _int_label(value: Any, where: str) -> int:
    v = np.asarray(value)
    if v.size == 1 and v.dtype.kind in "biu":
        return int(v.reshape(-1)[0])
    if v.size == 1 and v.dtype.kind in "fU":
        try:
            f = float(v.reshape(-1)[0])
        except ValueError:
            f = float("nan")
        if f.is_integer():
            return int(f)
    raise MetareproError(f"{where}: label {value!r} is not an integer")


def read_labels(path: Path) -> dict[tuple[int, int], int]:
    """label.pkl -> {(graph, node): label}."""
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise MetareproError(f"{path}: expected a pickled dict {{'X_Y': label}}, got {type(obj).__name__}")
    return {_node_name(k, f"{path}"): _int_label(v, f"{path} key {k!r}") for k, v in obj.items()}


def read_split_csv(path: Path) -> list[tuple[int, int, int]]:
    """(graph, node, label) rows of a G-Meta split csv (pandas to_csv: index, name, label)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    header = [c.strip() for c in rows[0]] if rows else []
    if "name" not in header or "label" not in header:
        raise MetareproError(f"{path}: expected pandas' to_csv columns `,name,label` (index, 'X_Y', label); "
                             f"got header {header!r}")
    i, j = header.index("name"), header.index("label")
    out = []
    for n, row in enumerate(rows[1:], 2):
        if len(row) <= max(i, j):
            raise MetareproError(f"{path}:{n}: expected {len(header)} columns, got {row!r}")
        g, v = _node_name(row[i].strip(), f"{path}:{n}")
        out.append((g, v, _int_label(row[j].strip(), f"{path}:{n}")))
    return out


# ---------------------------------------------------------------------------------------------------------------
# Prepare


def _prepare(dataset: str, setup: str, raw_dir: str | Path, out_dir: str | Path,
             options: Mapping[str, Any] | None) -> Path:
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    tasks = dataset == "tissue_ppi"
    opts = resolve_options(dataset, options, TASK_DEFAULTS if tasks else DEFAULTS, {"task": TASKS} if tasks else None)
    hops, max_nodes = opts["hops"], opts["max_nodes"]
    if not (isinstance(hops, int) and hops >= 1 and isinstance(max_nodes, int) and max_nodes >= 2):
        raise MetareproError(f"{dataset}: hops must be >= 1 and max_nodes >= 2, got {hops!r} / {max_nodes!r}")
    if not isinstance(opts["drop_isolated"], bool):
        raise MetareproError(f"{dataset} option drop_isolated must be true or false, got {opts['drop_isolated']!r}")
    layout = detect_layout(dataset, raw_dir, {"npz": ("graphs.npz",), "dgl": ("graph_dgl.pkl",)})
    graph_file = "graphs.npz" if layout == "npz" else "graph_dgl.pkl"
    sub = f"task{opts['task']}/" if tasks else ""
    csvs = {s: f"{sub}{s}.csv" for s in SPLITS}
    provenance = verify_raw(dataset, raw_dir, [graph_file, "features.npy", f"{sub}label.pkl", *csvs.values()])

    structure = read_graphs(raw_dir / graph_file)
    features = read_features(raw_dir / "features.npy")
    if len(features) != len(structure):
        raise MetareproError(f"{raw_dir / 'features.npy'}: {len(features)} feature matrices for the "
                             f"{len(structure)} graphs of {graph_file}")
    for g, ((n, _), feat) in enumerate(zip(structure, features)):
        if feat.shape[0] != n:
            raise MetareproError(f"{raw_dir / 'features.npy'}: graph {g} has {feat.shape[0]} feature rows for its "
                                 f"{n} nodes ({graph_file})")
    label_path = raw_dir / f"{sub}label.pkl"
    labels = read_labels(label_path)
    for (g, v) in labels:
        if g >= len(structure) or v >= structure[g][0]:
            raise MetareproError(f"{label_path}: key '{g}_{v}' names no node of the {len(structure)} graphs "
                                 f"of {graph_file}")

    # per split: each graph's label array (-1: not in this split), from the csv, checked against label.pkl
    split_labels: dict[str, dict[int, np.ndarray]] = {}
    seen: dict[tuple[int, int], str] = {}
    for split, rel in csvs.items():
        path = raw_dir / rel
        arrays: dict[int, np.ndarray] = {}
        for g, v, lab in read_split_csv(path):
            where = f"{path}: node '{g}_{v}'"
            if (g, v) not in labels:
                raise MetareproError(f"{where} is not in {label_path.name}")
            if labels[(g, v)] != lab:
                raise MetareproError(f"{where} has label {lab}, {label_path.name} says {labels[(g, v)]}")
            if (g, v) in seen:
                raise MetareproError(f"{where} is listed twice (also in {seen[(g, v)]})")
            seen[(g, v)] = rel
            arrays.setdefault(g, np.full(structure[g][0], -1, dtype=np.int64))[v] = lab
        if not arrays:
            raise MetareproError(f"{path}: lists no nodes")
        split_labels[split] = arrays
    _check_setup(dataset, setup, {s: raw_dir / r for s, r in csvs.items()}, split_labels)

    used = sorted({g for arrays in split_labels.values() for g in arrays})
    neighbours = {g: Graph(f"graph{g}", structure[g][0], structure[g][1], features[g],
                           np.full(structure[g][0], -1, dtype=np.int64)).neighbours() for g in used}
    arrays_out, dropped = {}, {}
    for split, per_graph in split_labels.items():
        graphs: list[Graph | None] = [None] * len(structure)      # split_samples reads graphs[g] of its classes
        classes: list[tuple[int, int]] = []
        lonely: list[str] = []
        for g, lab in sorted(per_graph.items()):
            graphs[g] = Graph(f"graph{g}", structure[g][0], structure[g][1], features[g], lab)
            classes += [(g, int(c)) for c in np.unique(lab[lab >= 0])]
            lonely += [f"{g}_{v}" for v in np.flatnonzero(lab >= 0) if not neighbours[g][v]]
        if lonely and not opts["drop_isolated"]:
            raise MetareproError(f"{raw_dir / graph_file}: node(s) {', '.join(lonely[:10])}"
                                 f"{' ...' if len(lonely) > 10 else ''} of {csvs[split]} have no edges, so their "
                                 f"{hops}-hop subgraph is empty; set drop_isolated: true to leave them out")
        dropped[split] = len(lonely)
        arrays_out[split] = split_samples(graphs, classes, hops, max_nodes, neighbours,  # type: ignore[arg-type]
                                          drop_isolated=True)
        log.info("%s %s: %d graphs, %d classes, %d nodes (%d without edges left out)", dataset, split,
                 len(per_graph), len(classes), len(arrays_out[split]["labels"]), len(lonely))
    extra = {"variant": "G-Meta release" + (f" (task {opts['task']})" if tasks else ""),
             "raw_layout": graph_file,
             "labels": {s: sorted({int(c) for a in la.values() for c in np.unique(a[a >= 0])})
                        for s, la in split_labels.items()},
             "graphs": {s: [f"graph{g}" for g in sorted(la)] for s, la in split_labels.items()},
             "dropped_isolated": dropped,
             "nodes": int(sum(n for n, _ in structure)), "edges": int(sum(len(e) for _, e in structure))}
    return write_graph_dataset(out_dir, dataset, setup, arrays_out, hops, max_nodes, opts, provenance, extra)


def _check_setup(dataset: str, setup: str, paths: Mapping[str, Path], split_labels: Mapping[str, dict]) -> None:
    """Disjoint-label setups: no label in two splits; shared labels: no graph in two splits; every split has a
    graph with G-Meta's ways of labels."""
    by = "labels" if setup.endswith("disjoint_labels") else "graphs"
    owner: dict[int, str] = {}
    for split, per_graph in split_labels.items():
        keys = ({int(c) for a in per_graph.values() for c in np.unique(a[a >= 0])} if by == "labels"
                else set(per_graph))
        for k in sorted(keys):
            if k in owner:
                raise MetareproError(f"{paths[split]}: {by[:-1]} {k} is also in {paths[owner[k]].name}; "
                                     f"the {setup} setup needs {by}-disjoint splits")
            owner[k] = split
    ways = WAYS[dataset]
    for split, per_graph in split_labels.items():
        most = max(len(np.unique(a[a >= 0])) for a in per_graph.values())
        if most < ways:
            raise MetareproError(f"{paths[split]}: its graphs have at most {most} label(s); G-Meta's {ways}-way "
                                 f"tasks need {ways} labels in one graph")


def _prepare_fn(dataset: str, setup: str) -> Callable[[str | Path, str | Path, Mapping[str, Any] | None], Path]:
    def prepare(raw_dir: str | Path, out_dir: str | Path, options: Mapping[str, Any] | None = None) -> Path:
        return _prepare(dataset, setup, raw_dir, out_dir, options)
    prepare.__doc__ = f"G-Meta's {dataset} release (raw_dir) -> the prepared graph format ({setup}) in out_dir."
    return prepare


prepare_arxiv = _prepare_fn("arxiv", "single_graph_disjoint_labels")
prepare_tissue_ppi = _prepare_fn("tissue_ppi", "multi_graph_shared_labels")
prepare_fold_ppi = _prepare_fn("fold_ppi", "multi_graph_disjoint_labels")
