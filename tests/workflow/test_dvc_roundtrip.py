"""Publish -> clone -> pull round trip through a local DVC remote (workflow/scripts/{publish,pull}.sh).

Acceptance: after pulling the published data and results into a fresh clone, `snakemake -n`
schedules no download, prepare, training or evaluation job, although DVC gives the files fresh
modification times in no set order and the clone has no .snakemake/ records. Also: afterwards a
method's hparams edit re-runs that method only, and runs that no longer match the committed config
are named by pull.sh. The project state is
faked (files with the pipeline's names, run configs as metatrain writes them): a dry run only looks
at paths, times and params, so no training is needed.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from metarepro.config import iter_runs, load_config, resolve_run

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# What a clone of the project holds that the pipeline and the DVC mechanism need.
PROJECT = ["Snakefile", "profiles", "workflow", "src/metarepro", "config/paper_results.csv", "environment.yml", ".gitignore",
           ".dvcignore", ".dvc/config", ".dvc/.gitignore", "data.dvc", "reports/results.dvc"]
EXPENSIVE = {"download", "prepare", "metatrain", "evaluate"}

pytestmark = pytest.mark.skipif(shutil.which("git") is None or not (BIN / "dvc").exists(),
                                reason="needs git and dvc (pip install -e '.[workflow]')")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "METAREPRO_MIRROR"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", DVC_NO_ANALYTICS="1",
               GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@example.org",
               GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@example.org")
    return env


def sh(*cmd: str, cwd: Path) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout + out.stderr


def scheduled(cwd: Path, *args: str) -> dict[str, int]:
    """Jobs per rule that `snakemake -n` would run."""
    text = sh(str(BIN / "snakemake"), "-n", *args, cwd=cwd)
    if "Nothing to be done" in text:
        return {}
    stats = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", stats, re.M)}


def _tiny_config() -> dict:
    """The tiny test profile, writing to the default places (results/, reports/, data/)."""
    cfg = yaml.safe_load((REPO / "tests/workflow/config.yaml").read_text())
    cfg.update(profile="default", results_dir="results", reports_dir="reports")
    cfg["data"] = {"mirror": None, "raw_dir": "resources/raw", "dir": "data"}
    return cfg


def _fake_outputs(root: Path) -> None:
    """Every output of the pipeline but the raw downloads, as a finished run leaves them.

    Written downstream-first, so that every input ends up newer than the outputs made from it:
    the pipeline's own order would hide the problem that pull.sh solves.
    """
    cfg = load_config(root / "config/config.yaml")
    summary = sh(str(BIN / "snakemake"), "--summary", cwd=root)
    outputs = [line.split("\t")[0] for line in summary.splitlines()[1:] if "\t" in line]
    outputs = [f for f in outputs if not f.startswith(cfg["data"]["raw_dir"])]
    assert any(f.endswith("model.pt") for f in outputs) and any(f.endswith("meta.json") for f in outputs)
    run_configs = {f"{r.run_dir}/config.yaml": resolve_run(cfg, r.experiment, r.method, r.shots, r.seed).to_dict()
                   for r in iter_runs(cfg)}
    stage = {"README.md": 0, "reports": 1, "eval.json": 2, "results": 3, "data": 4}

    def rank(path: str) -> int:
        for marker, r in stage.items():
            if path.endswith(marker) or path.startswith(marker):
                return r
        return 3

    for i, rel in enumerate(sorted(outputs, key=rank)):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel in run_configs:  # what metatrain saves: the resolved run config plus provenance
            path.write_text(yaml.safe_dump({**run_configs[rel], "provenance": {"wall_time_s": 1.0}}))
        else:
            path.write_text(f"fake {rel}\n")
        t = time.time() - 1000 + i  # strictly increasing: downstream files oldest
        os.utime(path, (t, t))


def test_publish_clone_pull_schedules_nothing(tmp_path: Path) -> None:
    origin, remote = tmp_path / "origin", tmp_path / "remote"
    for rel in PROJECT:
        src, dst = REPO / rel, origin / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    (origin / "config/config.yaml").write_text(yaml.safe_dump(_tiny_config(), sort_keys=False))
    sh("git", "init", "-q", cwd=origin)
    sh(str(BIN / "dvc"), "remote", "modify", "storage", "url", str(remote), cwd=origin)
    sh("git", "add", "-A", cwd=origin)
    sh("git", "commit", "-q", "-m", "project", cwd=origin)

    _fake_outputs(origin)
    assert scheduled(origin).keys() & EXPENSIVE, "the faked state should look out of date to Snakemake"
    # never published (.dvcignore): resume checkpoints, the test profile's outputs, half-written temp dirs
    unpublished = ["results/sinusoid/maml/1way5shot/seed0/checkpoints/last.pt", "results/test/x/model.pt",
                   "data/.omniglot.abc.tmp/out/meta.json"]
    for rel in unpublished:
        (origin / rel).parent.mkdir(parents=True, exist_ok=True)
        (origin / rel).write_text("not for publishing\n")
    out = sh("bash", "workflow/scripts/publish.sh", cwd=origin)
    assert "pushed" in out
    sh("git", "commit", "-q", "-m", "publish", cwd=origin)  # publish.sh staged the pointers + reports
    assert "md5:" in (origin / "data.dvc").read_text() and "md5:" in (origin / "reports/results.dvc").read_text()

    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    assert not (clone / "results").exists() and not (clone / "data").exists()
    # A plain `dvc pull`, then the worst order DVC could have written the files in: data newest.
    sh(str(BIN / "dvc"), "pull", "-q", "data.dvc", "reports/results.dvc", cwd=clone)
    future = time.time() + 100
    for f in (clone / "data").rglob("*"):
        os.utime(f, (future, future))
    assert scheduled(clone).keys() & {"metatrain", "evaluate"}, "bare dvc pull: Snakemake would re-train"

    sh("bash", "workflow/scripts/pull.sh", cwd=clone)
    for rel in ("data/omniglot/meta.json", "results/sinusoid/maml/1way5shot/seed0/model.pt"):
        assert (clone / rel).read_text() == (origin / rel).read_text()
    for rel in unpublished:
        assert not (clone / rel).exists(), rel
    assert scheduled(clone) == {}, "after pull.sh nothing at all is out of date"

    # pull.sh recorded each job's params: editing one method's hparams re-runs that method only.
    cfg = yaml.safe_load((clone / "config/config.yaml").read_text())
    cfg["experiments"]["sinusoid"]["methods"]["fomaml"]["inner_lr"] = 0.02
    edited = clone / "edited.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    jobs = scheduled(clone, "--configfile", str(edited))
    assert jobs.get("metatrain") == 1 and jobs.get("evaluate") == 1
    assert not jobs.keys() & {"download", "prepare"}

    # A config change committed without re-running and re-publishing: Snakemake cannot see it in a
    # fresh clone (no records); pull.sh names the one stale run and the command that re-runs it.
    shutil.copy(edited, clone / "config/config.yaml")
    proc = subprocess.run(["bash", "workflow/scripts/pull.sh"], cwd=clone, env=_env(), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    command = re.search(r"^  (snakemake .*)$", proc.stderr, re.M)[1].split()
    assert command[1:] == ["--forcerun", "results/sinusoid/fomaml/1way5shot/seed0/model.pt"]
    jobs = scheduled(clone, *command[1:])
    assert jobs.get("metatrain") == 1 and jobs.get("evaluate") == 1
    assert not jobs.keys() & {"download", "prepare"}
