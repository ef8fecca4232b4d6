"""Node-classification data: local subgraphs, G-Meta's synthetic benchmarks, the prepared format and its episodes,
and the errors that name bad input before anything is written."""
import json

import numpy as np
import pytest

from metarepro import data
from metarepro.data import graphs, synthetic_graphs
from metarepro.data.graphs import Graph, local_subgraph, split_samples, write_graph_dataset
from metarepro.utils import MetareproError

SMALL = {"graphs": 5, "folds": 5, "noise_edges": 10}


@pytest.fixture(scope="module")
def cycle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("graphs") / "synthetic_cycle"
    synthetic_graphs.prepare_cycle(None, out, SMALL)
    return out


def test_local_subgraph_is_breadth_first_centre_first_and_capped():
    nb = [[1, 2], [0, 3], [0], [1, 4], [3]]            # a path 2-0-1-3-4
    assert local_subgraph(nb, 0, 2, 10) == [0, 1, 2, 3]
    assert local_subgraph(nb, 0, 1, 10) == [0, 1, 2]
    assert local_subgraph(nb, 0, 2, 2) == [0, 1]           # the nearest kept
    assert local_subgraph(nb, 4, 2, 10) == [4, 3, 1]


def test_synthetic_graphs_have_the_described_structure():
    opts = {**synthetic_graphs.DEFAULTS, "basis_nodes": None}
    g = synthetic_graphs.build_graph("cycle", 0, opts)
    names = synthetic_graphs.role_names()
    counts = {names[k]: int(v) for k, v in enumerate(np.bincount(g.labels, minlength=len(names)))}
    # graph 0: 15 houses and one of each other motif on a 50-node cycle, 100 noise edges
    assert counts["house:roof"] == counts["house:anchor"] == 15 and counts["house:lower"] == 30
    assert counts["plugin:house"] == 15 and counts["star:leaf"] == 6 and counts["fan:inner"] == 4
    assert counts["basis"] == 50 - 18
    assert g.n_nodes == 50 + 15 * 5 + 6 + 7 + 7
    assert len(g.edges) == 50 + 15 * 7 + (12 + 1) + (6 + 1) + (11 + 1) + 100
    assert len(names) == 16
    ba = synthetic_graphs.build_graph("ba", 0, opts)
    assert ba.n_nodes == 200 + 15 * 5 + 6 + 7 + 7
    # node features: one-hot degree, capped
    deg = np.bincount(g.edges.reshape(-1), minlength=g.n_nodes)
    assert (g.features.argmax(1) == np.minimum(deg, 10)).all()


def test_prepare_is_seeded_with_checksums_and_graph_level_folds(cycle_dir, tmp_path):
    meta = json.loads((cycle_dir / "meta.json").read_text())
    assert meta["format"] == graphs.FORMAT and meta["setup"] == "multi_graph_shared_labels"
    assert meta["graphs"] == {"train": ["graph1", "graph2", "graph3"], "val": ["graph4"], "test": ["graph0"]}
    again = tmp_path / "again"
    synthetic_graphs.prepare_cycle(None, again, SMALL)
    assert json.loads((again / "meta.json").read_text())["splits"] == meta["splits"]      # same sha256 per split
    fold2 = tmp_path / "fold2"
    synthetic_graphs.prepare_cycle(None, fold2, {**SMALL, "fold": 2})
    assert json.loads((fold2 / "meta.json").read_text())["graphs"]["test"] == ["graph2"]
    # classes are (graph, role) pairs: split-disjoint although the roles are shared
    names = {s: set(data.class_names(str(cycle_dir), s)) for s in ("train", "val", "test")}
    assert not names["train"] & names["test"] and all(n.startswith("graph0/") for n in names["test"])


def test_episodes_are_fixed_per_seed_and_draw_one_graph(cycle_dir):
    eps = data.episodes("synthetic_cycle", {}, str(cycle_dir), "train", 3, 2, 4, seed=7)
    t1, t2 = eps.episode(5), data.episodes("synthetic_cycle", {}, str(cycle_dir), "train", 3, 2, 4, seed=7).episode(5)
    assert (t1.x_support == t2.x_support).all() and t1.classes == t2.classes
    m = int(json.loads((cycle_dir / "meta.json").read_text())["max_nodes"])
    assert t1.x_support.shape == (6, m, m + 11) and t1.x_query.shape == (12, m, m + 11)
    split = eps.split
    for i in range(20):
        classes = eps.episode(i).classes
        assert len({int(split.groups[c]) for c in classes}) == 1        # one graph per task
    assert eps.fingerprint(10) != data.episodes("synthetic_cycle", {}, str(cycle_dir), "train", 3, 2, 4, 8).fingerprint(10)


def test_too_few_labels_for_the_ways_is_named(cycle_dir):
    with pytest.raises(MetareproError, match=r"12-way 1-shot .* need a graph with >= 12 labels"):
        data.episodes("synthetic_cycle", {}, str(cycle_dir), "test", 12, 1, 5, 0)


def test_a_wrong_format_file_is_named(tmp_path, cycle_dir):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text(json.dumps({"format": graphs.FORMAT}))
    np.savez(bad / "train.npz", images=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(MetareproError, match=r"train.npz: not a prepared graph split \(missing adjacency"):
        graphs.load_graph_split(bad, "train")
    with pytest.raises(MetareproError, match="is not a prepared graph dataset"):
        graphs.read_meta(_image_meta(tmp_path))


def _image_meta(tmp_path):
    d = tmp_path / "image"
    d.mkdir()
    (d / "meta.json").write_text(json.dumps({"format": "metarepro-npz-v1"}))
    return d


def _tiny_graph(isolated: bool) -> Graph:
    edges = np.array([[0, 1], [1, 2]] + ([] if isolated else [[2, 3]]))
    return Graph("g", 4, edges, np.ones((4, 1), np.float32), np.array([0, 0, 1, 1]))


def test_an_empty_subgraph_is_named_and_nothing_is_written(tmp_path):
    with pytest.raises(MetareproError, match=r"graph 'g': node\(s\) \[3\] \(label 1\) have no neighbours"):
        split_samples([_tiny_graph(True)], [(0, 0), (0, 1)], 2, 4)
    kept = split_samples([_tiny_graph(True)], [(0, 0), (0, 1)], 2, 4, drop_isolated=True)
    assert kept["labels"].tolist() == [0, 0, 1] and kept["sizes"].min() >= 2
    # a size-0 subgraph that reaches the writer is refused, and the output folder never appears
    arrays = split_samples([_tiny_graph(False)], [(0, 0), (0, 1)], 2, 4)
    broken = {**arrays, "sizes": np.zeros_like(arrays["sizes"])}
    out = tmp_path / "out"
    splits = {"train": arrays, "val": {**arrays, "class_names": np.array(["v/0", "v/1"])},
              "test": {**broken, "class_names": np.array(["t/0", "t/1"])}}
    with pytest.raises(MetareproError, match="test: an empty local subgraph"):
        write_graph_dataset(out, "x", "single_graph_disjoint_labels", splits, 2, 4, {}, "test")
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


def test_prepare_options_are_checked_before_work(tmp_path):
    with pytest.raises(MetareproError, match="unknown synthetic_cycle option"):
        synthetic_graphs.prepare_cycle(None, tmp_path / "o", {"nodes": 3})
    with pytest.raises(MetareproError, match="fold must be in 0..4"):
        synthetic_graphs.prepare_cycle(None, tmp_path / "o", {"fold": 5})
    assert not (tmp_path / "o").exists()


def test_the_registry_the_cards_and_the_schema_name_the_same_datasets():
    from metarepro.config import load_schema
    from metarepro.dataset_cards import DATASET_CARDS, GRAPH, IMAGE, SYNTHESIZED
    assert set(DATASET_CARDS) == set(data.DATASETS)
    schema = load_schema()
    exp = schema["$defs"]["experiment"]["properties"]
    assert set(schema["properties"]["datasets"]["properties"]) == set(exp["dataset"]["enum"]) == set(DATASET_CARDS)
    assert set(exp["cross_domain"]["items"]["properties"]["dataset"]["enum"]) == set(IMAGE)
    assert all(c.options in schema["$defs"] for c in DATASET_CARDS.values())
    for name, spec in data.DATASETS.items():
        assert spec.graph == (name in GRAPH) and spec.synthesized == (name in SYNTHESIZED), name


@pytest.mark.parametrize("ways, queries", [(12, 2), (3, 60)])
def test_training_refuses_too_few_labels_before_writing_anything(cycle_dir, tmp_path, ways, queries):
    """Too many ways for the graphs' labels (or too many queries for their nodes), in the training, validation or
    test split: the run stops naming the requirement, before its folder exists."""
    import dataclasses

    from metarepro.config import resolve_run, validate_config
    from metarepro.train import metatrain

    cfg = validate_config({"experiments": {"g": {"dataset": "synthetic_cycle", "backbone": "gnn", "ways": 3,
                                                 "shots": [1], "methods": {"gmeta": {}}}}})
    run = resolve_run(cfg, "g", "gmeta", 1, 0)
    run = dataclasses.replace(run, ways=ways, data_dir=str(cycle_dir), run_dir=str(tmp_path / "run"),
                              evaluation={**run.evaluation, "queries": queries})
    with pytest.raises(MetareproError, match=rf"{ways}-way 1-shot episodes with \d+ queries need a graph"):
        metatrain(run, progress=False)
    assert not (tmp_path / "run").exists()
