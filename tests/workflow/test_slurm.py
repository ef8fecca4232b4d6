"""The tiny profile through Snakemake's SLURM executor (profiles/slurm) on a real SLURM, when one is running here
(`sinfo` on PATH; ../shared/tools/slurm-single-node.sh starts a one-node cluster): jobs reach SLURM, local rules
stay local, and the results equal a local run's episode by episode. Skipped without SLURM."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from test_workflow import MIRROR, _project_copy, _tiny, ok, snakemake

pytestmark = pytest.mark.skipif(
    shutil.which("sinfo") is None or subprocess.run(["sinfo"], capture_output=True).returncode != 0,
    reason="no SLURM cluster here (start one with ../shared/tools/slurm-single-node.sh)")


def test_tiny_profile_runs_through_slurm_like_a_local_run(tmp_path: Path) -> None:
    if not MIRROR.exists():
        pytest.skip("dataset mirror not beside the checkout")
    cfg = _tiny()
    runs = ["sinusoid/maml/1way5shot/seed0", "omniglot/maml/5way1shot/seed0"]
    targets = [f"{cfg['results_dir']}/{r}/eval.json" for r in runs]
    slurm_root = _project_copy(tmp_path / "slurm", cfg)
    text = ok(snakemake("--workflow-profile", "profiles/slurm", "--jobs", "2", *targets, cwd=slurm_root,
                        timeout=1500))
    assert "has been submitted with SLURM jobid" in text, text[-3000:]
    slurm_logs = slurm_root / ".snakemake" / "slurm_logs"
    submitted = {p.parts[len(slurm_logs.parts)] for p in slurm_logs.rglob("*.log")}
    assert {"rule_metatrain", "rule_evaluate"} <= submitted, submitted
    assert not submitted & {"rule_download"}, "downloads are local rules"
    local_root = _project_copy(tmp_path / "local", cfg)
    ok(snakemake("--cores", "2", *targets, cwd=local_root, timeout=900))
    for r in runs:
        a, b = (json.loads((root / cfg["results_dir"] / r / "eval.json").read_text())
                for root in (slurm_root, local_root))
        assert a["per_episode"] == b["per_episode"] and a["mean"] == b["mean"], r
