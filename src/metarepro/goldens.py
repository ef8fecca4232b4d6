"""Golden results: the sha256 of the per-episode test scores of a few cheap runs, to catch numerics that drift.

Strict numerics promise the same bits on any x86-64 CPU with AVX2 (metarepro.numerics). This module makes that
promise checkable. Two sets:
- `tiny`: three small runs built here (sinusoid MAML, and ProtoNet and a short Conv-4 MAML on seeded synthetic
  16x16 images), a few seconds each, specified in `tests/goldens_runs.yaml`; `tests/goldens.json` holds their
  hashes and the CPU they came from, and the test suite reruns them in strict mode (`python -m metarepro.goldens
  check`).
- `default`: the default profile's cheapest strict runs (sinusoid MAML at 5/10/20 shots, ProtoNet Omniglot 1-shot
  and CIFAR-FS 5-shot, Omniglot MAML 1-shot), hashed from their eval.json files (`python -m metarepro.goldens default`);
  `benchmarks/goldens_default.json` names them (`<dataset>/<method>/<w>way<k>shot`) and holds their hashes, with
  each run's CPU and ISA.
A mismatch means this machine's numerics differ from those of the machine that wrote the goldens (another ISA path,
another library build, strict mode off), not that the code is wrong; the message names the run and both CPUs.

    python -m metarepro.goldens check  [--goldens tests/goldens.json]      # strict: exit 1 on any mismatch
    python -m metarepro.goldens write  [--goldens tests/goldens.json]      # record this machine's hashes
    python -m metarepro.goldens default [--results results] [--out benchmarks/goldens_default.json] [--check]
Run `check` with METAREPRO_STRICT_NUMERICS=1 (the test does); `write --goldens OTHER.json` without it records what
native numerics give, for comparison.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .config import run_dir
from .formats import EVAL_FILE
from .numerics import apply_strict

REPO = Path(__file__).resolve().parents[2]
TINY_GOLDENS = REPO / "tests" / "goldens.json"
TINY_RUNS = REPO / "tests" / "goldens_runs.yaml"
DEFAULT_GOLDENS = REPO / "benchmarks" / "goldens_default.json"


def default_runs(goldens: Path) -> list[tuple[str, str, int, int]]:
    """The default profile's runs whose per-episode scores are hashed, (dataset, method, ways, shots), read from the
    keys of the goldens file (`<dataset>/<method>/<w>way<k>shot`): adding a key adds a run."""
    out = []
    for key in sorted(json.loads(goldens.read_text())["runs"]):
        dataset, method, setting = key.split("/")
        ways, shots = setting.removesuffix("shot").split("way")
        out.append((dataset, method, int(ways), int(shots)))
    return out


def digest(per_episode: list[float]) -> str:
    """sha256 of the scores as float64 bytes: equal only when every score is equal bit for bit."""
    return hashlib.sha256(np.asarray(per_episode, dtype=np.float64).tobytes()).hexdigest()


def _synthetic(root: Path, dataset: str) -> Path:
    """Seeded random 16x16 grey images, 6 classes per split (the same bytes on every machine), written in the
    prepared format of `dataset` (an image dataset)."""
    from .data.store import write_dataset
    rng = np.random.default_rng(20261206)
    splits = {}
    for split in ("train", "val", "test"):
        labels = np.repeat(np.arange(6), 6)
        images = rng.integers(0, 256, (len(labels), 16, 16, 1), dtype=np.uint8)
        splits[split] = (images, labels, [f"{split}{i}" for i in range(6)])
    return write_dataset(root / dataset, dataset, splits, {}, "synthetic (metarepro.goldens)")


def _tiny_runs(spec: dict, data_dir: Path, out: Path) -> dict[str, Any]:
    """The runs of `spec` (tests/goldens_runs.yaml), shortened by its `train` settings; experiments on its
    `synthetic` dataset read the synthetic images in `data_dir`."""
    from .config import resolve_run, validate_config
    cfg = validate_config(spec["config"])
    runs = {}
    for name, (exp, method, shots) in spec["runs"].items():
        run = resolve_run(cfg, exp, method, shots, 0)
        synthetic = cfg["experiments"][exp]["dataset"] == spec["synthetic"]
        runs[name] = dataclasses.replace(run, train={**run.train, **spec["train"]}, run_dir=str(out / name),
                                         data_dir=str(data_dir) if synthetic else run.data_dir)
    return runs


def run_tiny() -> tuple[dict[str, str], dict[str, Any]]:
    """Train and evaluate the tiny runs here -> ({name: digest}, this machine's numerics)."""
    from . import numerics
    from .evaluate import evaluate
    from .train import metatrain
    from .yaml_io import safe_load
    spec = safe_load(TINY_RUNS.read_text())
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = _synthetic(root, spec["synthetic"])
        for name, run in _tiny_runs(spec, data, root / "runs").items():
            metatrain(run, progress=False)
            ev = json.loads(evaluate(run.run_dir, progress=False).read_text())
            out[name] = digest(ev["per_episode"])
    return out, numerics.describe()


def _machine(n: dict) -> str:
    return f"{n.get('cpu', '?')} (ISA {n.get('cpu_capability', '?')}, strict {n.get('strict')})"


def check(goldens: Path) -> int:
    want = json.loads(goldens.read_text())
    got, here = run_tiny()
    bad = [n for n in want["runs"] if got.get(n) != want["runs"][n]]
    for n in bad:
        print(f"golden mismatch: run {n!r} gave sha256 {got.get(n)} on {_machine(here)}; {goldens} holds "
              f"{want['runs'][n]} from {_machine(want['numerics'])}. The numerics of this machine differ from the "
              "goldens' (ISA, library build or strict mode), not necessarily the code.")
    if not bad:
        print(f"{len(want['runs'])} goldens equal bit for bit on {_machine(here)}")
    return 1 if bad else 0


def write(goldens: Path) -> int:
    got, here = run_tiny()
    keep = {k: here[k] for k in ("strict", "cpu", "cpu_capability", "torch") if k in here}
    goldens.write_text(json.dumps({"runs": got, "numerics": keep}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {goldens}: {len(got)} runs on {_machine(here)}")
    return 0


def default(results: Path, out: Path, verify: bool) -> int:
    """Hash the default profile's golden runs from their eval.json files (or compare them with `out`)."""
    runs, missing = {}, []
    for dataset, method, ways, shots in default_runs(out):
        path = Path(run_dir({"results_dir": str(results)}, dataset, method, ways, shots, 0)) / EVAL_FILE
        if not path.exists():
            missing.append(str(path))
            continue
        ev = json.loads(path.read_text())
        n = ev.get("numerics") or {}
        runs[f"{dataset}/{method}/{ways}way{shots}shot"] = {"sha256": digest(ev["per_episode"]), "mean": ev["mean"],
                                                            "cpu": n.get("cpu"), "cpu_capability": n.get("cpu_capability"),
                                                            "strict": n.get("strict")}
    if missing:
        print("missing eval.json (run the default profile first): " + ", ".join(missing))
        return 1
    if verify:
        want = json.loads(out.read_text())["runs"]
        bad = [k for k in want if runs[k]["sha256"] != want[k]["sha256"]]
        for k in bad:
            print(f"golden mismatch: {k} on {runs[k]['cpu']} (ISA {runs[k]['cpu_capability']}, strict "
                  f"{runs[k]['strict']}) vs {want[k]['cpu']} (ISA {want[k]['cpu_capability']})")
        print(f"{len(want) - len(bad)} of {len(want)} default-profile goldens equal")
        return 1 if bad else 0
    out.write_text(json.dumps({"runs": runs}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out}: {len(runs)} runs")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m metarepro.goldens", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("check", "write"):
        s = sub.add_parser(name)
        s.add_argument("--goldens", type=Path, default=TINY_GOLDENS)
    d = sub.add_parser("default")
    d.add_argument("--results", type=Path, default=REPO / "results")
    d.add_argument("--out", type=Path, default=DEFAULT_GOLDENS)
    d.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    args = p.parse_args(argv)
    if args.cmd == "default":
        return default(args.results, args.out, args.check)
    apply_strict()          # before torch runs anything, when METAREPRO_STRICT_NUMERICS=1
    return check(args.goldens) if args.cmd == "check" else write(args.goldens)


if __name__ == "__main__":
    sys.exit(main())
