"""YAML reading for the config, the schema and the method cards: libyaml's C parser where PyYAML has it.

`snakemake -n` parses the schema, the cards and the config files in every Snakemake process, and every job reads
its saved config; the C loader reads the same documents into the same Python objects about ten times faster than
PyYAML's pure-Python one (same resolver and constructors; only the scanner and parser are C)."""
from __future__ import annotations

import yaml

LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(stream):
    """`yaml.safe_load`, with the C parser where available."""
    return yaml.load(stream, Loader=LOADER)
