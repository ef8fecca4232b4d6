"""Strict numerics: the same config gives bit-identical results on any x86-64 CPU with AVX2.

On one machine our runs repeat bit for bit, but another CPU takes other numerical code paths: torch's own
kernels dispatch on the widest vector ISA (ATen CPU capability), oneDNN (convolutions) picks its ISA at run time,
and MKL (matrix products) its code branch; each sums in another order. Strict mode pins all three to AVX2, the
widest ISA every supported machine has, plus MKL's conditional numerical reproducibility, one thread per job and
deterministic algorithms. It must take effect before torch runs its first operation: `apply_strict()` at the
start of the CLI when METAREPRO_STRICT_NUMERICS=1 (the Snakefile sets it for every job with `strict_numerics:
true`). Every eval.json records the settings in force (`numerics`), and reports flag rows computed under
different numerics. Measured cost: benchmarks/README.md.
"""
from __future__ import annotations

import os
import platform
import re
from typing import Any

ENV_FLAG = "METAREPRO_STRICT_NUMERICS"
STRICT_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",     # torch's vectorised kernels
    "ONEDNN_MAX_CPU_ISA": "AVX2",      # oneDNN (convolutions, some matmuls)
    "MKL_CBWR": "AVX2",                # MKL conditional numerical reproducibility, AVX2 branch
    "OMP_NUM_THREADS": "1",            # one thread: reductions split the same way everywhere
    "MKL_NUM_THREADS": "1",
}


def strict_requested() -> bool:
    return os.environ.get(ENV_FLAG, "") not in ("", "0", "false", "False")


def apply_strict() -> None:
    """Pin the numerical code paths (call before any torch operation); a no-op unless strict mode is requested."""
    if strict_requested():
        os.environ.update(STRICT_ENV)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> dict[str, Any]:
    """What decides the numbers besides the code and config: CPU, ISA in use, library versions, the settings."""
    import torch

    config = torch.__config__.show()
    mkl = re.search(r"Math Kernel Library Version ([^\s]+)", config)
    onednn = re.search(r"MKL-DNN v([^\s]+)", config)
    return {
        "strict": strict_requested(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": str(torch.__version__),
        "mkl": mkl.group(1) if mkl else None,
        "onednn": onednn.group(1) if onednn else None,
        "threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "env": {k: os.environ.get(k) for k in STRICT_ENV},
    }


def signature(numerics: dict | None) -> tuple:
    """What must agree for two runs' numbers to be comparable bit for bit (None: not recorded)."""
    if not numerics:
        return ("unrecorded",)
    if numerics.get("strict"):
        return ("strict", numerics.get("torch"), numerics.get("mkl"), numerics.get("onednn"))
    return ("native", numerics.get("cpu_capability"), numerics.get("torch"), numerics.get("mkl"),
            numerics.get("onednn"))
