"""The golden results: three tiny runs, rerun in strict numerics, must give the per-episode scores whose sha256
tests/goldens.json holds, bit for bit. On another CPU a mismatch names the run and both machines: its numerics differ
from the goldens' (see metarepro.goldens and the README), which strict mode exists to prevent."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_strict_goldens_are_reproduced_bit_for_bit():
    env = {**os.environ, "METAREPRO_STRICT_NUMERICS": "1", "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run([sys.executable, "-m", "metarepro.goldens", "check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 goldens equal bit for bit" in proc.stdout


def test_goldens_file_records_the_machine_they_came_from():
    g = json.loads((REPO / "tests" / "goldens.json").read_text())
    assert g["numerics"]["strict"] is True and g["numerics"]["cpu"] and g["numerics"]["cpu_capability"] == "AVX2"
    assert set(g["runs"]) == {"sinusoid-maml", "synthetic-protonet", "synthetic-conv4-maml"}
    assert all(len(h) == 64 for h in g["runs"].values())


def test_a_mismatch_names_the_run_and_both_machines(tmp_path, monkeypatch, capsys):
    from metarepro import goldens
    bad = json.loads((REPO / "tests" / "goldens.json").read_text())
    bad["runs"]["sinusoid-maml"] = "0" * 64
    path = tmp_path / "g.json"
    path.write_text(json.dumps(bad))
    monkeypatch.setattr(goldens, "run_tiny", lambda: ({k: v for k, v in bad["runs"].items() if k != "sinusoid-maml"}
                                                     | {"sinusoid-maml": "f" * 64},
                                                     {"cpu": "Other CPU", "cpu_capability": "AVX512", "strict": False}))
    assert goldens.check(path) == 1
    out = capsys.readouterr().out
    assert "run 'sinusoid-maml'" in out and "Other CPU (ISA AVX512, strict False)" in out and "AMD EPYC" in out
