"""Report stage: ours-vs-paper tables (tables.py), figures (figures.py) and their command line (cli.py).

Torch-free: Snakemake's report rules import only this package, numpy, pandas and matplotlib.
"""
from .tables import METHOD_LABELS, load_eval, load_paper_results, make_table, method_label, paired_test

__all__ = ["METHOD_LABELS", "load_eval", "load_paper_results", "make_table", "method_label", "paired_test"]
