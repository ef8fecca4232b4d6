"""metarepro: reproduce, compare and extend gradient-based few-shot meta-learning."""
__version__ = "0.1.0"
