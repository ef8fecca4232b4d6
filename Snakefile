# metarepro: data -> (pretrain) -> meta-train -> evaluate -> report for every run the config lists.
# Run `snakemake --cores N` from the repository root (see README); rules live in workflow/rules/.
import os
import sys

from snakemake.utils import min_version, update_config

min_version("9.0")
sys.path.insert(0, f"{workflow.basedir}/src")  # torch-free; Snakemake never imports torch
from metarepro import yaml_io
from metarepro.config import ConfigError, command_line_overrides, validate_config


# glibc malloc settings for the torch jobs this workflow starts (they inherit Snakemake's environment): keep
# freed tensor buffers in the heap instead of handing them back to the OS after every step, which otherwise makes
# every job re-fault its pages (measurements: benchmarks/README.md). A value the user set wins; other libcs
# ignore them.
for _var in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
    os.environ.setdefault(_var, "17179869184")


# config/config.yaml, then each --configfile replacing whole top-level keys of it, as metarepro.config.load_config
# does (Snakemake alone merges key by key, mixing config.yaml's experiments into paper.yaml's); --config key=value
# still sets single keys. validate_config fills in defaults, names any bad key. (No `configfile:` directive: it
# would only have Snakemake parse config.yaml a second time, with its pure-Python YAML parser.)
_files = ["config/config.yaml", *map(str, workflow.config_settings.configfiles)]
_config = {}
for _f in _files:
    _config.update(yaml_io.safe_load(open(_f)) or {})
update_config(_config, command_line_overrides(dict(workflow.config_settings.config)))
try:
    config.update(validate_config(_config, source=" + ".join(_files)))
except ConfigError as e:
    sys.exit(f"ConfigError: {e}")


# Strict numerics (config key strict_numerics): every job pins its CPU code paths at start (metarepro.numerics).
_STRICT_FLAG = "METAREPRO_STRICT_NUMERICS"   # read by every job's CLI (metarepro.numerics) before torch runs
if config.get("strict_numerics"):
    os.environ[_STRICT_FLAG] = "1"
    config["threads"] = 1


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/pretrain.smk"
include: "workflow/rules/metatrain.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
