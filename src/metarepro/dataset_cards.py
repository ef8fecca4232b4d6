"""Dataset cards: what the workflow and the reports need to know about each dataset, torch-free (Snakemake imports
it). The code that reads or builds a dataset is bound to its name in metarepro.data.DATASETS; a test checks that
the two hold the same names.

Fields: the label tables and reports print, the row order of tables, the kind of data (regression / image / graph),
how it is obtained (`on_the_fly`: sampled while training, nothing prepared; `synthesized`: prepare generates it, no
download), the peak memory of a training or evaluation job (MiB, a scheduler hint) and the standard image size.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DatasetCard:
    name: str
    label: str
    kind: str                       # "regression" | "image" | "graph"
    mem_mb: int                     # peak memory of a training / evaluation job: scheduler hint
    on_the_fly: bool = False        # sampled on the fly: no download, no prepare (the sinusoid)
    synthesized: bool = False       # prepare generates it from its options: no download
    image_size: int | None = None   # the standard image size that published numbers use
    note: str = ""                  # what a reader of a table with this dataset must know (printed under it)
    options: str = "dataset_plain"  # the config schema's $def of its `datasets:` block (metarepro.config.load_schema)
    # images per class of the full dataset, where a copy (the mirror's) may be a subset: a run on a subset is not
    # compared with numbers published on the full dataset (its prepared meta.json says which it is)
    full_images_per_class: int | None = None
    # its classes, for cross-domain overlap (metarepro.classes): the image collection it is cut from (two datasets of
    # one collection may share images: such a pair is refused), how a class name maps to a WordNet concept
    # ("wnid": the name is one; "cifar100": the shipped CIFAR-100 table; "bird": every class is a bird species), and
    # where its standard split's class names are: a folder of data/splits and that folder's format
    collection: str = ""
    concepts: str = ""
    split_files: tuple[str, str] = ("", "")


_SYNTHETIC_NOTE = ("G-Meta's synthetic benchmarks, regenerated here from the paper's description and its authors' "
                   "data notebook (metarepro.data.synthetic_graphs; their released files could not be read), so "
                   "published numbers on them are context, not comparisons: 10 graphs of motifs (house, diamond, "
                   "star, fan) on a {basis} basis with 100 noise edges, 16 structural-role labels shared by all "
                   "graphs, one-hot degree features, 2-hop subgraphs of at most 30 nodes; fold 0 of G-Meta's five "
                   "(test graph 0, validation graph 4, the others train), a task's classes drawn from one graph.")

_CARDS = (
    DatasetCard("sinusoid", "Sinusoid", "regression", 1000, on_the_fly=True, options="dataset_sinusoid"),
    DatasetCard("omniglot", "Omniglot", "image", 4000, image_size=28, options="dataset_omniglot"),
    DatasetCard("cifarfs", "CIFAR-FS", "image", 6000, image_size=32, collection="CIFAR-100", concepts="cifar100",
                split_files=("cifar_fs_torchmeta", "class_pairs")),
    DatasetCard("fc100", "FC100", "image", 6000, image_size=32, collection="CIFAR-100", concepts="cifar100",
                split_files=("fc100_torchmeta", "cifar100_superclasses")),
    DatasetCard("miniimagenet", "miniImageNet", "image", 12000, image_size=84, options="dataset_sized",
                full_images_per_class=600, collection="ImageNet", concepts="wnid",
                split_files=("miniimagenet_ravi", "ravi_csv")),
    DatasetCard("tieredimagenet", "tieredImageNet", "image", 32000, image_size=84,
                options="dataset_sized", collection="ImageNet", concepts="wnid"),
    DatasetCard("cub", "CUB", "image", 12000, image_size=84, options="dataset_sized", concepts="bird",
                split_files=("cub_closerlook_chen", "closerlook_json")),
    DatasetCard("synthetic_cycle", "Synthetic Cycle", "graph", 3000, synthesized=True, options="dataset_synthetic_graph",
                note=_SYNTHETIC_NOTE.format(basis="50-node cycle")),
    DatasetCard("synthetic_ba", "Synthetic BA", "graph", 3000, synthesized=True, options="dataset_synthetic_graph",
                note=_SYNTHETIC_NOTE.format(basis="200-node Barabási-Albert (m = 3)")),
    # G-Meta's release; the prepared subgraphs are dense (nodes x max_nodes x (max_nodes + features)): arxiv 2.8 GB
    DatasetCard("arxiv", "ogbn-arxiv", "graph", 8000, options="dataset_gmeta_release"),
    DatasetCard("tissue_ppi", "Tissue-PPI", "graph", 4000, options="dataset_gmeta_release_tasks"),
    DatasetCard("fold_ppi", "Fold-PPI", "graph", 4000, options="dataset_gmeta_release"),
)

DATASET_CARDS: dict[str, DatasetCard] = {c.name: c for c in _CARDS}
DATASET_ORDER: list[str] = [c.name for c in _CARDS]
DATASET_LABELS: dict[str, str] = {c.name: c.label for c in _CARDS}
MEM_MB: dict[str, int] = {c.name: c.mem_mb for c in _CARDS}
ON_THE_FLY: frozenset[str] = frozenset(c.name for c in _CARDS if c.on_the_fly)
SYNTHESIZED: frozenset[str] = frozenset(c.name for c in _CARDS if c.synthesized)
GRAPH: frozenset[str] = frozenset(c.name for c in _CARDS if c.kind == "graph")
IMAGE: frozenset[str] = frozenset(c.name for c in _CARDS if c.kind == "image")
REGRESSION: frozenset[str] = frozenset(c.name for c in _CARDS if c.kind == "regression")
FULL_IMAGES_PER_CLASS: dict[str, int] = {c.name: c.full_images_per_class for c in _CARDS
                                          if c.full_images_per_class is not None}
STANDARD_IMAGE_SIZE: dict[str, int] = {c.name: c.image_size for c in _CARDS if c.image_size is not None}
