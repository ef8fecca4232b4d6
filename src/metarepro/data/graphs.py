"""Few-shot node classification on local subgraphs (Huang & Zitnik 2020, "Graph Meta Learning via Local
Subgraphs", NeurIPS): the prepared format, the subgraph extraction and the episodes.

A node is represented by its local subgraph: the nodes within `hops` of it (G-Meta's h), the centre first, then
by distance and node id, capped at `max_nodes` (the nearest kept). Prepared data (one npz per split, the same
names and atomic write as the image datasets, metarepro.data.store):

data/<dataset>/
  train.npz, val.npz, test.npz
      adjacency     uint8 (N, M, M)   the subgraph's edges (symmetric, no self-loops), padded with zeros
      features      float32 (N, M, F) its nodes' features, padded rows zero
      sizes         int32 (N,)        real nodes of each subgraph (>= 1: the centre)
      labels        int64 (N,)        index into class_names
      class_names   str (C,)          "<graph>/<label>": a class is a label of one graph
      groups        int64 (C,)        the graph of each class: an episode draws all its classes from one graph
  meta.json         dataset, format, setup, hops, max_nodes, feature_dim, per-split counts and sha256, options,
                    source; written last

G-Meta's three task setups differ only in how classes are split and grouped, which prepare decides:
- single graph, disjoint labels (ogbn-arxiv): one group; the labels are split between train / val / test;
- many graphs, shared labels (Tissue-PPI): the graphs are split, every label appears in every split;
- many graphs, disjoint labels (Fold-PPI): the labels are split; a task draws one graph and labels of the split.
"""
from __future__ import annotations

import json
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from ..task import Task
from ..utils import MetareproError, atomic_path, sha256_file
from .sampling import indices_fingerprint, split_task
from .store import SPLITS, check_disjoint

FORMAT = "metarepro-graph-npz-v1"
SETUPS = ("single_graph_disjoint_labels", "multi_graph_shared_labels", "multi_graph_disjoint_labels")


@dataclass(frozen=True)
class Graph:
    """One graph: undirected edges (E, 2) over nodes 0..n-1, node features (n, F) float32, node labels (n,)
    (-1: unlabelled, never drawn)."""
    name: str
    n_nodes: int
    edges: np.ndarray
    features: np.ndarray
    labels: np.ndarray

    def neighbours(self) -> list[list[int]]:
        nb: list[list[int]] = [[] for _ in range(self.n_nodes)]
        for a, b in self.edges.tolist():
            if a != b:
                nb[a].append(b)
                nb[b].append(a)
        return [sorted(set(v)) for v in nb]


def local_subgraph(neighbours: Sequence[Sequence[int]], centre: int, hops: int, max_nodes: int) -> list[int]:
    """The nodes within `hops` of `centre` by breadth-first search, centre first, then by distance and node id,
    at most `max_nodes` (the nearest kept)."""
    order, dist = [centre], {centre: 0}
    frontier = deque([centre])
    while frontier and len(order) < max_nodes:
        u = frontier.popleft()
        if dist[u] == hops:
            continue
        for v in neighbours[u]:
            if v not in dist:
                dist[v] = dist[u] + 1
                order.append(v)
                frontier.append(v)
                if len(order) == max_nodes:
                    break
    return order


def subgraph_arrays(graph: Graph, nodes: Sequence[int], hops: int, max_nodes: int,
                    neighbours: Sequence[Sequence[int]] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Local subgraphs of `nodes` in `graph` -> adjacency uint8 (N, M, M), features float32 (N, M, F), sizes (N,)."""
    nb = neighbours if neighbours is not None else graph.neighbours()
    n, m, f = len(nodes), int(max_nodes), graph.features.shape[1]
    adj = np.zeros((n, m, m), dtype=np.uint8)
    feats = np.zeros((n, m, f), dtype=np.float32)
    sizes = np.zeros(n, dtype=np.int32)
    for i, c in enumerate(nodes):
        sub = local_subgraph(nb, int(c), hops, m)
        pos = {v: j for j, v in enumerate(sub)}
        for j, v in enumerate(sub):
            for w in nb[v]:
                k = pos.get(w)
                if k is not None:
                    adj[i, j, k] = 1
        feats[i, :len(sub)] = graph.features[sub]
        sizes[i] = len(sub)
    return adj, feats, sizes


def split_samples(graphs: Sequence[Graph], classes: Sequence[tuple[int, int]], hops: int, max_nodes: int,
                  neighbours: Mapping[int, Sequence[Sequence[int]]] | None = None,
                  drop_isolated: bool = False) -> dict[str, np.ndarray]:
    """The arrays of one split holding the classes `classes` = [(graph index, label)], in that order: every node
    of each class becomes a sample. A node without neighbours has an empty h-hop subgraph (nothing for a GNN to
    read): an error naming it, or with `drop_isolated` left out."""
    parts, labels, names, groups = [], [], [], []
    nbs = dict(neighbours or {})
    for g, lab in classes:
        graph = graphs[g]
        if g not in nbs:
            nbs[g] = graph.neighbours()
        nodes = np.flatnonzero(graph.labels == lab)
        lonely = [int(v) for v in nodes if not nbs[g][v]]
        if lonely and not drop_isolated:
            raise MetareproError(f"graph {graph.name!r}: node(s) {lonely[:10]}{' ...' if len(lonely) > 10 else ''} "
                                 f"(label {lab}) have no neighbours, so their {hops}-hop subgraph is empty; "
                                 "drop them (drop_isolated) or give them edges")
        nodes = np.array([v for v in nodes if nbs[g][v]], dtype=np.int64)
        if not len(nodes):
            continue
        parts.append(subgraph_arrays(graph, nodes, hops, max_nodes, nbs[g]))
        labels.append(np.full(len(nodes), len(names), dtype=np.int64))
        names.append(f"{graph.name}/{lab}")
        groups.append(g)
    if not parts:
        raise MetareproError("a split has no classes")
    return {"adjacency": np.concatenate([p[0] for p in parts]), "features": np.concatenate([p[1] for p in parts]),
            "sizes": np.concatenate([p[2] for p in parts]), "labels": np.concatenate(labels),
            "class_names": np.asarray(names, dtype=str), "groups": np.asarray(groups, dtype=np.int64)}


def write_graph_dataset(out_dir: str | Path, dataset: str, setup: str, splits: Mapping[str, Mapping[str, np.ndarray]],
                        hops: int, max_nodes: int, options: Mapping[str, Any], source: str,
                        extra: Mapping[str, Any] | None = None) -> Path:
    """Atomically write a prepared graph dataset: each split's arrays (split_samples) and meta.json, last."""
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {SETUPS}, got {setup!r}")
    if set(splits) != set(SPLITS):
        raise ValueError(f"a graph dataset needs the splits {SPLITS}, got {sorted(splits)}")
    check_disjoint(dataset, {s: list(a["class_names"]) for s, a in splits.items()})
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        meta: dict[str, Any] = {"dataset": dataset, "format": FORMAT, "setup": setup, "hops": int(hops),
                                "max_nodes": int(max_nodes), "source": source, "options": dict(options),
                                **dict(extra or {}), "splits": {}}
        for split in SPLITS:
            a = splits[split]
            _check_arrays(split, a, max_nodes)
            np.savez(tmp / f"{split}.npz", **{k: a[k] for k in ARRAYS})
            meta["feature_dim"] = int(a["features"].shape[2])
            meta["splits"][split] = {"nodes": int(len(a["labels"])), "classes": int(len(a["class_names"])),
                                     "graphs": int(len(set(a["groups"].tolist()))),
                                     "sha256": sha256_file(tmp / f"{split}.npz")}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out_dir


ARRAYS = ("adjacency", "features", "sizes", "labels", "class_names", "groups")


def _check_arrays(split: str, a: Mapping[str, np.ndarray], max_nodes: int) -> None:
    n = len(a["labels"])
    if a["adjacency"].shape != (n, max_nodes, max_nodes) or a["features"].shape[:2] != (n, max_nodes):
        raise MetareproError(f"{split}: subgraph arrays {a['adjacency'].shape} / {a['features'].shape} do not match "
                             f"{n} nodes of at most {max_nodes} subgraph nodes")
    if n and int(a["sizes"].min()) < 1:
        raise MetareproError(f"{split}: an empty local subgraph (size 0)")
    if len(a["groups"]) != len(a["class_names"]):
        raise MetareproError(f"{split}: {len(a['groups'])} groups for {len(a['class_names'])} classes")


@dataclass
class GraphSplit:
    """A loaded split, samples grouped by class and classes by graph, for episode sampling."""
    adjacency: np.ndarray
    features: np.ndarray
    sizes: np.ndarray
    labels: np.ndarray
    class_names: np.ndarray
    groups: np.ndarray
    by_class: list[np.ndarray]

    @property
    def n_classes(self) -> int:
        return len(self.by_class)


def is_graph_data(data_dir: str | Path) -> bool:
    meta = Path(data_dir) / "meta.json"
    return meta.exists() and json.loads(meta.read_text()).get("format") == FORMAT


def read_meta(data_dir: str | Path) -> dict[str, Any]:
    path = Path(data_dir) / "meta.json"
    if not path.exists():
        raise MetareproError(f"{path} not found: run `python -m metarepro prepare` (or `snakemake`) first")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise MetareproError(f"{path}: format {meta.get('format')!r} is not a prepared graph dataset ({FORMAT})")
    return meta


def load_graph_split(data_dir: str | Path, split: str) -> GraphSplit:
    read_meta(data_dir)
    path = Path(data_dir) / f"{split}.npz"
    if not path.exists():
        raise MetareproError(f"{path} not found (split {split!r} of {data_dir})")
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ARRAYS if k not in z.files]
        if missing:
            raise MetareproError(f"{path}: not a prepared graph split (missing {', '.join(missing)})")
        a = {k: z[k] for k in ARRAYS}
    order = np.argsort(a["labels"], kind="stable")
    counts = np.bincount(a["labels"], minlength=len(a["class_names"]))
    return GraphSplit(**a, by_class=np.split(order, np.cumsum(counts)[:-1]))


def normalized_adjacency(adj: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
    """GCN's propagation matrix D^-1/2 (A + I) D^-1/2 (Kipf & Welling 2017) of padded subgraphs: adj (B, M, M) 0/1,
    sizes (B,) -> (B, M, M); self-loops only on real nodes, so padding rows and columns stay zero."""
    m = adj.shape[-1]
    real = (torch.arange(m).view(1, m) < sizes.view(-1, 1)).to(adj.dtype)      # (B, M)
    a = adj + torch.diag_embed(real)
    deg = a.sum(-1)
    inv = torch.where(deg > 0, deg.clamp_min(1e-12).rsqrt(), torch.zeros_like(deg))
    return inv.unsqueeze(-1) * a * inv.unsqueeze(-2)


class GraphEpisodes:
    """N-way K-shot Q-query node-classification episodes: episode i draws (seeded by (seed, i)) one graph among
    those with >= N classes of >= K + Q nodes, then N of its classes and K + Q nodes of each. A node sample is
    its subgraph as one tensor (M, M + F): the normalised adjacency in the first M columns, the node features in
    the last F, the centre node in row 0 (metarepro.models.gnn reads this layout)."""

    def __init__(self, split: GraphSplit, ways: int, shots: int, queries: int, seed: int) -> None:
        self.split, self.ways, self.shots, self.queries, self.seed = split, ways, shots, queries, seed
        need = shots + queries
        eligible: dict[int, list[int]] = {}
        for c, ix in enumerate(split.by_class):
            if len(ix) >= need:
                eligible.setdefault(int(split.groups[c]), []).append(c)
        self.groups = sorted(g for g, cs in eligible.items() if len(cs) >= ways)
        self.classes_of = {g: np.asarray(eligible[g], dtype=np.int64) for g in self.groups}
        if not self.groups:
            most = max((len(cs) for cs in eligible.values()), default=0)
            raise MetareproError(
                f"{ways}-way {shots}-shot episodes with {queries} queries need a graph with >= {ways} labels of >= "
                f"{need} nodes each; the split's best graph has {most} such label(s) (of {split.n_classes} classes)")
        self.n_classes = split.n_classes

    def indices(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        g = self.groups[int(rng.integers(len(self.groups)))] if len(self.groups) > 1 else self.groups[0]
        classes = rng.choice(self.classes_of[g], size=self.ways, replace=False)
        return classes, self._picks(classes, rng)

    def _picks(self, classes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return np.stack([rng.choice(self.split.by_class[c], size=self.shots + self.queries, replace=False)
                         for c in classes])

    def episode(self, index: int) -> Task:
        classes, picks = self.indices(index)
        return self._task(classes, picks, (self.seed, index))

    def episode_of(self, classes: Sequence[int], key: Sequence[int]) -> Task:
        """A task on the given classes (one graph's), nodes drawn by the generator seeded with (seed, *key)."""
        classes = np.asarray(classes, dtype=np.int64)
        if len(classes) != self.ways or len(set(classes.tolist())) != self.ways:
            raise ValueError(f"a {self.ways}-way task needs {self.ways} distinct classes, got {classes.tolist()}")
        if len({int(self.split.groups[c]) for c in classes}) != 1:
            raise ValueError(f"the classes {classes.tolist()} of a node-classification task must share one graph")
        return self._task(classes, self._picks(classes, np.random.default_rng([self.seed, *key])), (self.seed, *key))

    def _task(self, classes: np.ndarray, picks: np.ndarray, key: tuple[int, ...]) -> Task:
        flat = picks.reshape(-1)                                         # (ways * (S+Q),)
        s = self.split
        adj = normalized_adjacency(torch.from_numpy(s.adjacency[flat]).float(), torch.from_numpy(s.sizes[flat]))
        x = torch.cat([adj, torch.from_numpy(s.features[flat])], dim=-1)  # (ways*(S+Q), M, M+F)
        return split_task(x.unflatten(0, picks.shape), self.shots, classes, key)   # x: (ways, S+Q, M, M+F)

    def fingerprint(self, n: int) -> str:
        """Identifier of the first n episodes (same across methods => valid paired comparisons)."""
        return indices_fingerprint(self.indices, n)


def input_shape(data_dir: str | Path) -> tuple[int, int]:
    """A node sample's shape (M, M + F)."""
    meta = read_meta(data_dir)
    return (int(meta["max_nodes"]), int(meta["max_nodes"]) + int(meta["feature_dim"]))
