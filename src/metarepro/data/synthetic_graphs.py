"""G-Meta's synthetic node-classification benchmarks (Huang & Zitnik 2020), generated with networkx from the paper's
description and the facts of its authors' data notebook (mims-harvard/G-Meta history; its code is not used):
motifs attached to a basis graph, a cycle (Synthetic Cycle) or a Barabasi-Albert graph (Synthetic BA), node
labels the nodes' structural roles (GraphWave's role assignment, Donnat et al. 2018).

One graph (seeded by (seed, graph index): the data is a pure function of the options):
- the basis: a cycle of `basis_nodes` nodes (50, as the notebook), or a Barabasi-Albert graph of `basis_nodes`
  nodes with `ba_edges` edges per new node (200 and 3, as the notebook);
- motifs: house (5 nodes), diamond (a 4-cycle and two apexes joined to all four: 6), star (a hub and 6 leaves: 7)
  and fan (a star whose 6 leaves form a path: 7); graph i < 4 holds 15 copies of motif kind i and one of each
  other kind, the others 1-14 copies of each kind drawn at random (the notebook's ten multi-graph graphs);
- each motif hangs from its node 0 by one edge to a basis node, the attachment points evenly spaced over the
  basis;
- `noise_edges` random edges between distinct unconnected nodes (100, as the notebook), which blur the roles;
- labels: a basis node's role is "basis", or "plugin:<kind>" when a motif of that kind hangs from it; a motif
  node's role is its position in the motif ("house:roof", "fan:end", ...; node 0, the attached one, is
  "<kind>:anchor"): 16 labels shared by every graph (the notebook's GraphWave roles gave 17);
- node features: the one-hot degree, capped at `max_degree` (our choice: the notebook's one-hot node ids cannot
  transfer between graphs, and the released features could not be read), so only the structure carries the
  label.
Synthetic BA differs from the notebook's BA, which planted the motifs onto existing BA nodes and labelled nodes
by spectral clusters of graphlet-orbit counts: here both benchmarks share the construction and role labels
above, as the paper describes them ("structural roles").

Task setup: many graphs, shared labels. Fold f (of `folds`, G-Meta's five) tests on graph f, validates on graph
f + folds - 1 (mod graphs) and trains on the others, the notebook's [test, val] graph pairs.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from ..utils import MetareproError
from .download import resolve_options
from .graphs import Graph, split_samples, write_graph_dataset

log = logging.getLogger(__name__)


def _star(leaves: int, fan: bool) -> tuple[int, list[tuple[int, int]], list[str]]:
    edges = [(0, i) for i in range(1, leaves + 1)] + ([(i, i + 1) for i in range(1, leaves)] if fan else [])
    roles = ["anchor"] + (["end" if i in (1, leaves) else "inner" for i in range(1, leaves + 1)] if fan
                          else ["leaf"] * leaves)
    return leaves + 1, edges, roles


# Each motif: (nodes, edges, role of each node); node 0 is the one attached to the basis.
MOTIFS: dict[str, tuple[int, list[tuple[int, int]], list[str]]] = {
    # a square 0-1-2-3 with a roof 4 over 0-1
    "house": (5, [(0, 1), (1, 2), (2, 3), (3, 0), (0, 4), (1, 4)], ["anchor", "upper", "lower", "lower", "roof"]),
    # a 4-cycle 0-1-2-3 and two apexes 4, 5 joined to all of it
    "diamond": (6, [(0, 1), (1, 2), (2, 3), (3, 0)] + [(a, i) for a in (4, 5) for i in range(4)],
                ["anchor"] + ["node"] * 5),
    "star": _star(6, fan=False),
    "fan": _star(6, fan=True),
}
KINDS = tuple(MOTIFS)

DEFAULTS: dict[str, Any] = {
    "graphs": 10,              # the notebook's ten graphs
    "basis_nodes": None,       # None: 50 (cycle) / 200 (BA), as the notebook
    "ba_edges": 3,             # Barabasi-Albert: edges from each new node (the notebook: m = 3)
    "noise_edges": 100,        # random edges added to each graph (the notebook: 100)
    "max_degree": 10,          # node features: one-hot degree, degrees above this share the last slot
    "hops": 2,                 # G-Meta's h: 2-hop subgraphs (its default)
    "max_nodes": 30,           # subgraph cap, the nearest nodes kept (G-Meta samples 1000 of larger ones)
    "folds": 5,                # G-Meta reports the mean over five folds
    "fold": 0,                 # which fold this dataset is
    "seed": 0,
}
BASIS_NODES = {"cycle": 50, "ba": 200}


def role_names() -> list[str]:
    """Every label, in label order."""
    names = ["basis"] + [f"plugin:{k}" for k in KINDS]
    for kind in KINDS:
        names += [f"{kind}:{r}" for r in dict.fromkeys(MOTIFS[kind][2])]
    return names


def motif_counts(index: int, rng: np.random.Generator) -> list[int]:
    """Copies of each motif kind in graph `index`: 15 of kind `index` and 1 of the others for the first four
    graphs, 1-14 of each at random for the rest (the notebook's scheme)."""
    if index < len(KINDS):
        return [15 if k == index else 1 for k in range(len(KINDS))]
    return [int(v) for v in rng.integers(1, 15, size=len(KINDS))]


def build_graph(basis: str, index: int, options: Mapping[str, Any]) -> Graph:
    """Graph `index` of a synthetic benchmark (see the module docstring)."""
    import networkx as nx

    rng = np.random.default_rng([int(options["seed"]), index])
    n0 = int(options["basis_nodes"] or BASIS_NODES[basis])
    if basis == "cycle":
        g = nx.cycle_graph(n0)
    elif basis == "ba":
        g = nx.barabasi_albert_graph(n0, int(options["ba_edges"]), seed=int(rng.integers(2**31)))
    else:
        raise ValueError(f"basis must be cycle or ba, got {basis!r}")
    counts = motif_counts(index, rng)
    total = sum(counts)
    if total > n0:
        raise MetareproError(f"{total} motifs need as many basis nodes to hang from; basis_nodes is {n0}")
    names = role_names()
    label = {r: i for i, r in enumerate(names)}
    edges = [tuple(sorted(map(int, e))) for e in g.edges()]
    roles = ["basis"] * n0
    n, m = n0, 0
    for kind, count in zip(KINDS, counts):
        size, medges, mroles = MOTIFS[kind]
        for _ in range(count):
            plug = (m * n0) // total                 # evenly spaced attachment points
            roles[plug] = f"plugin:{kind}"
            edges += [(n + a, n + b) for a, b in medges] + [(plug, n)]
            roles += [f"{kind}:{r}" for r in mroles]
            n, m = n + size, m + 1
    existing = set(edges)
    added = 0
    while added < int(options["noise_edges"]):
        a, b = sorted(int(v) for v in rng.integers(n, size=2))
        if a != b and (a, b) not in existing:
            existing.add((a, b))
            edges.append((a, b))
            added += 1
    labels = np.array([label[r] for r in roles], dtype=np.int64)
    e = np.asarray(edges, dtype=np.int64)
    degree = np.bincount(e.reshape(-1), minlength=n)
    cap = int(options["max_degree"])
    features = np.eye(cap + 1, dtype=np.float32)[np.minimum(degree, cap)]           # (n, cap + 1)
    return Graph(f"graph{index}", n, e, features, labels)


def graph_splits(n_graphs: int, folds: int, fold: int) -> dict[str, list[int]]:
    """Fold `fold`: test graph `fold`, validation graph `fold + folds - 1` (mod n_graphs), the rest train."""
    if not 0 <= fold < folds or folds > n_graphs:
        raise MetareproError(f"fold must be in 0..{folds - 1} and folds <= graphs ({n_graphs}); got fold {fold}, "
                             f"folds {folds}")
    test, val = fold, (fold + folds - 1) % n_graphs
    if val == test:
        raise MetareproError(f"{n_graphs} graphs and {folds} folds put fold {fold}'s test and validation graphs together")
    return {"train": [g for g in range(n_graphs) if g not in (test, val)], "val": [val], "test": [test]}


def prepare_synthetic(basis: str, dataset: str) -> Callable[[Path | None, Path, Mapping[str, Any]], Path]:
    def prepare(raw_dir: Path | None, out_dir: Path, options: Mapping[str, Any] | None) -> Path:
        opts = resolve_options(dataset, options, DEFAULTS)
        if int(opts["hops"]) < 1 or int(opts["max_nodes"]) < 2:
            raise MetareproError(f"{dataset}: hops must be >= 1 and max_nodes >= 2, got {opts['hops']} / "
                                 f"{opts['max_nodes']}")
        graphs = [build_graph(basis, i, opts) for i in range(int(opts["graphs"]))]
        names = role_names()
        parts = graph_splits(len(graphs), int(opts["folds"]), int(opts["fold"]))
        arrays = {}
        for split, idx in parts.items():
            classes = [(g, lab) for g in idx for lab in range(len(names)) if (graphs[g].labels == lab).any()]
            arrays[split] = split_samples(graphs, classes, int(opts["hops"]), int(opts["max_nodes"]))
            log.info("%s %s: graphs %s, %d nodes, %d classes", dataset, split, idx, len(arrays[split]["labels"]),
                     len(classes))
        extra = {"variant": f"regenerated (fold {opts['fold']} of {opts['folds']})", "labels": names, "graphs": {s: [graphs[g].name for g in idx] for s, idx in parts.items()},
                 "nodes": int(sum(g.n_nodes for g in graphs)), "edges": int(sum(len(g.edges) for g in graphs))}
        return write_graph_dataset(out_dir, dataset, "multi_graph_shared_labels", arrays, int(opts["hops"]),
                                   int(opts["max_nodes"]), opts, f"generated with networkx ({basis} basis)", extra)
    return prepare


prepare_cycle = prepare_synthetic("cycle", "synthetic_cycle")
prepare_ba = prepare_synthetic("ba", "synthetic_ba")
