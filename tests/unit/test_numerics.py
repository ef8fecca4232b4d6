"""Strict numerics: runs under different allowed ISAs (this machine's widest, and capped at AVX2 as on an AVX2-only
CPU) give bit-identical results in strict mode, and differ without it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarepro import numerics
from metarepro.report.tables import numerics_note

REPO = Path(__file__).resolve().parents[2]
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_CBWR": "AVX2"}
SCRIPT = """
import hashlib, torch
from metarepro.numerics import apply_strict, describe
apply_strict()
from metarepro import models, methods
from metarepro.methods.base import Task
from metarepro.utils import set_threads
from metarepro.addons.outer import meta_step
set_threads(2)
torch.manual_seed(0)
m = methods.build("maml", models.build("conv4", (1, 28, 28), 5, filters=16), "classification", inner_lr=0.4)
opt = torch.optim.Adam(m.parameters(), 1e-3)
g = torch.Generator().manual_seed(1)
for _ in range(3):
    t = Task(torch.randn(5, 1, 28, 28, generator=g), torch.arange(5), torch.randn(25, 1, 28, 28, generator=g),
             torch.arange(5).repeat_interleave(5))
    meta_step(m, [t], opt)
print(describe()["cpu_capability"], hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in m.parameters())).hexdigest())
"""


def run(**env: str) -> tuple[str, str]:
    base = {k: v for k, v in os.environ.items() if k not in {**AVX2_MACHINE, numerics.ENV_FLAG: ""}}
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True,
                         env={**base, "PYTHONPATH": str(REPO / "src"), **env})
    isa, digest = out.stdout.split()
    return isa, digest


def test_strict_mode_gives_the_same_bits_whatever_isa_the_machine_allows():
    native_isa, native = run()
    if native_isa in ("AVX2", "DEFAULT"):
        pytest.skip(f"this CPU's widest ISA is {native_isa}: no wider code path to differ from AVX2")
    capped_isa, capped = run(**AVX2_MACHINE)
    assert capped_isa == "AVX2"
    assert native != capped, "without strict mode the AVX2-capped run should take other code paths"
    strict_native = run(**{numerics.ENV_FLAG: "1"})
    strict_capped = run(**{numerics.ENV_FLAG: "1"}, **AVX2_MACHINE)
    assert strict_native == strict_capped and strict_native[0] == "AVX2"


def test_describe_records_the_numerics_and_reports_flag_mixtures():
    d = numerics.describe()
    assert d["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and d["torch"] == str(torch.__version__)
    assert set(d["env"]) == set(numerics.STRICT_ENV) and isinstance(d["strict"], bool)
    same = [{"_path": "a", "numerics": d}, {"_path": "b", "numerics": dict(d)}]
    assert numerics_note(same) == ""
    other = dict(d, cpu_capability="AVX2" if d["cpu_capability"] != "AVX2" else "AVX512")
    note = numerics_note([same[0], {"_path": "c", "numerics": other}])
    assert "Mixed numerics" in note and "strict_numerics: true" in note
    assert numerics_note([same[0], {"_path": "old", "numerics": None}]) == ""      # unrecorded: not flagged
