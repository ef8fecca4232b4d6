"""Dataset registry: the only place a dataset name is bound to code.

Each entry says how the dataset is obtained (download + prepare into the compact format of
store.py, or generated on the fly) and whether tasks are classification or regression.

Importing the package imports no torch: the episode samplers (sampling.py, graphs.py, sinusoid.py) load on first
use, so that torch-free callers (the workflow's pre-run source check reads data.download) stay torch-free.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..dataset_cards import GRAPH, SYNTHESIZED
from .store import ImageSplit, load_split

if TYPE_CHECKING:
    from . import graphs
    from .sampling import ImageEpisodes, SinusoidEpisodes

_LAZY = {"TaskSampler": "sampling", "eval_seed": "sampling", "graphs": None}


def __getattr__(name: str):
    """The torch-side names of the package, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_LAZY[name] or name}")
    return module if _LAZY[name] is None else getattr(module, name)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    task_type: str                 # "classification" | "regression"
    module: str | None = None      # module with prepare(raw_dir, out_dir, options); None: generated
    prepare_fn: str = "prepare"
    normalize: bool = True         # per-channel mean/std from the train split (False: raw [0, 1])
    @property
    def graph(self) -> bool:
        """Node classification on local subgraphs (metarepro.data.graphs): the dataset card's kind."""
        return self.name in GRAPH

    @property
    def synthesized(self) -> bool:
        """`prepare` generates the data from its options (no raw files, no download): the dataset card says so."""
        return self.name in SYNTHESIZED

    @property
    def generated(self) -> bool:
        return self.module is None

    def prepare(self) -> Callable:
        mod = importlib.import_module(f"{__name__}.{self.module}")
        return getattr(mod, self.prepare_fn)


DATASETS: dict[str, DatasetSpec] = {
    "sinusoid": DatasetSpec("sinusoid", "regression"),
    "omniglot": DatasetSpec("omniglot", "classification", "omniglot", normalize=False),
    "cifarfs": DatasetSpec("cifarfs", "classification", "cifar", "prepare_cifarfs"),
    "fc100": DatasetSpec("fc100", "classification", "cifar", "prepare_fc100"),
    "miniimagenet": DatasetSpec("miniimagenet", "classification", "miniimagenet"),
    "tieredimagenet": DatasetSpec("tieredimagenet", "classification", "tieredimagenet"),
    "cub": DatasetSpec("cub", "classification", "cub"),
    # G-Meta's synthetic node-classification benchmarks (Huang & Zitnik 2020), generated with networkx
    "synthetic_cycle": DatasetSpec("synthetic_cycle", "classification", "synthetic_graphs", "prepare_cycle",
                                   normalize=False),
    "synthetic_ba": DatasetSpec("synthetic_ba", "classification", "synthetic_graphs", "prepare_ba",
                                normalize=False),
    # G-Meta's real-world benchmarks, from its processed release (G-Meta_Data.zip), read without DGL
    "arxiv": DatasetSpec("arxiv", "classification", "gmeta_release", "prepare_arxiv", normalize=False),
    "tissue_ppi": DatasetSpec("tissue_ppi", "classification", "gmeta_release", "prepare_tissue_ppi",
                              normalize=False),
    "fold_ppi": DatasetSpec("fold_ppi", "classification", "gmeta_release", "prepare_fold_ppi", normalize=False),
}


def get(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


@lru_cache(maxsize=8)
def cached_split(data_dir: str, split: str) -> ImageSplit:
    """A prepared split, loaded once per process."""
    return load_split(data_dir, split)


@lru_cache(maxsize=8)
def train_stats(data_dir: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    imgs = cached_split(data_dir, "train").images
    sample = imgs[:: max(1, len(imgs) // 5000)].astype(np.float32) / 255.0  # (n, H, W, C)
    return tuple(sample.mean(axis=(0, 1, 2)).tolist()), tuple(sample.std(axis=(0, 1, 2)).clip(1e-3).tolist())


def normalization(dataset: str, data_dir: str) -> dict | None:
    """The per-channel input normalisation of a dataset's episodes, {"mean": [...], "std": [...]} from its train
    split; None when images stay in [0, 1] (Omniglot) or the data is generated."""
    spec = get(dataset)
    if spec.generated or not spec.normalize:
        return None
    mean, std = train_stats(str(Path(data_dir)))
    return {"mean": list(mean), "std": list(std)}


def episodes(dataset: str, dataset_args: dict, data_dir: str, split: str, ways: int, shots: int,
             queries: int, seed: int, model_input: tuple[tuple[int, ...], dict | None] | None = None,
             exclude: Sequence[int] = ()) -> ImageEpisodes | SinusoidEpisodes | graphs.GraphEpisodes:
    """Episodes of `split` ('train' | 'val' | 'test') for an N-way K-shot Q-query protocol.

    `model_input` = (input shape (C, H, W), normalization) of a model trained on another dataset (cross-domain
    evaluation): images are converted to that shape and normalised with that model's training statistics
    (`normalization`, None: left in [0, 1]) instead of this dataset's."""
    from . import graphs, sinusoid
    from .sampling import ImageEpisodes, SinusoidEpisodes
    spec = get(dataset)
    if spec.generated:
        return SinusoidEpisodes(sinusoid.SinusoidTasks(**dataset_args), shots, queries, seed)
    if spec.graph:
        if model_input is not None or exclude:
            raise ValueError(f"{dataset}: node-classification episodes take no cross-domain conversion or exclusion")
        return graphs.GraphEpisodes(cached_graph_split(str(Path(data_dir)), split), ways, shots, queries, seed)
    data = cached_split(str(Path(data_dir)), split)
    shape, norm = model_input if model_input is not None else (None, normalization(dataset, data_dir))
    return ImageEpisodes(data, ways, shots, queries, seed, rotations=bool(dataset_args.get("rotations", False)),
                         out_shape=shape, mean=norm["mean"] if norm else None, std=norm["std"] if norm else None,
                         input_crop=dataset_args.get("input"), exclude=exclude)


@lru_cache(maxsize=8)
def cached_graph_split(data_dir: str, split: str) -> graphs.GraphSplit:
    """A prepared graph split, loaded once per process."""
    from . import graphs
    return graphs.load_graph_split(data_dir, split)


def class_names(data_dir: str, split: str) -> list[str]:
    """The class names of a prepared split."""
    from . import graphs
    if graphs.is_graph_data(data_dir):
        return [str(c) for c in cached_graph_split(str(Path(data_dir)), split).class_names]
    return [str(c) for c in cached_split(str(Path(data_dir)), split).class_names]


def input_shape(dataset: str, data_dir: str, dataset_args: dict | None = None) -> tuple[int, ...]:
    """The model's input shape (C, H, W): the prepared images', or the crop of the run's `input` transform; a
    graph dataset's node sample (M, M + F)."""
    if get(dataset).generated:
        return (1,)
    if get(dataset).graph:
        from . import graphs
        return graphs.input_shape(data_dir)       # a node sample: (M, M + F)
    h, w, c = cached_split(str(Path(data_dir)), "train").images.shape[1:]
    crop = ((dataset_args or {}).get("input") or {}).get("crop")
    return (c, crop, crop) if crop else (c, h, w)


__all__ = ["DATASETS", "DatasetSpec", "get", "episodes", "input_shape", "eval_seed", "normalization", "class_names",
           "cached_split", "train_stats",
           "TaskSampler"]
