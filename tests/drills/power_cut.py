"""Power-cut drill against the real pipeline: SIGKILL Snakemake and every job it started in the middle of a run,
then `snakemake --unlock` and run again; the results must equal those of an uninterrupted run.

It runs in a checkout whose default run has finished (the uninterrupted reference):
  1. it copies what the run made under `--redo` (results subfolders; e.g. every FC100 run, about 20 minutes of
     two-core work with training jobs side by side, the default run's busiest kind of stretch) and the reports;
  2. deletes those results, starts `snakemake --cores 2` in its own process group, waits until `--kill-after`
     seconds have passed *and* at least one training job has written a resume checkpoint, and SIGKILLs the group;
  3. checks what the cut left (Snakemake's lock, incomplete markers, resume checkpoints), runs `snakemake --unlock`
     and `snakemake --cores 2` to the end;
  4. compares every eval*.json (all scores, per episode included; only wall times, memory and the git revision
     may differ), every train_log.csv (all columns but elapsed_s), the Markdown tables and the table CSVs (less
     their wall-time columns) and every figure's pixels with the reference.

    python tests/drills/power_cut.py --workdir . --redo results/fc100 --kill-after 300

Prints a table of what was compared and exits 1 when anything differs (nothing is lost when it exits 0).

    python tests/drills/power_cut.py --compare NEW_CHECKOUT REFERENCE_CHECKOUT

compares two finished runs instead (e.g. before and after a speed-up): every run with the same resolved config
in both must have the same scores per episode, training log and weights.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VOLATILE = {"wall_time_s", "adapt_time_per_task_s", "peak_memory_mb", "peak_gpu_memory_mb", "git_revision",
            "train_wall_time_s", "elapsed_s", "train_wall_s", "test_wall_s"}
TIMING_TABLES = ("_complexity.",)          # tables of measured time and memory: they differ between any two runs


def scrub(x):
    if isinstance(x, dict):
        return {k: scrub(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [scrub(v) for v in x]
    return x


def csv_rows(path: Path) -> list[dict]:
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


def png_pixels(path: Path) -> bytes:
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGBA").tobytes()


def snapshot(workdir: Path, redo: list[str], dest: Path) -> None:
    for sub in redo + ["reports"]:
        shutil.copytree(workdir / sub, dest / sub, symlinks=True)


def compare(workdir: Path, ref: Path, redo: list[str], reports: bool = True) -> tuple[dict[str, list[int]], list[str]]:
    """{kind: [compared, identical]} and the differing files."""
    stats: dict[str, list[int]] = {}
    diffs: list[str] = []

    def check(kind: str, same: bool, name: str) -> None:
        s = stats.setdefault(kind, [0, 0])
        s[0] += 1
        s[1] += int(same)
        if not same:
            diffs.append(name)

    for sub in redo:
        for old in sorted((ref / sub).rglob("*")):
            rel = old.relative_to(ref)
            new = workdir / rel
            if old.name.startswith("eval") and old.suffix == ".json":
                check("eval*.json (scores, per episode)", new.exists() and scrub(json.loads(old.read_text()))
                      == scrub(json.loads(new.read_text())), str(rel))
            elif old.name == "train_log.csv":
                check("train_log.csv (all but elapsed_s)", new.exists() and csv_rows(old) == csv_rows(new), str(rel))
            elif old.name in ("model.pt", "backbone.pt"):
                check("model.pt / backbone.pt (weights)", new.exists() and same_weights(old, new), str(rel))
    for old in sorted((ref / "reports").rglob("*")) if reports else []:
        rel = old.relative_to(ref)
        new = workdir / rel
        if any(t in old.name for t in TIMING_TABLES) or old.is_dir():
            continue
        if old.suffix == ".md":
            check("report tables (.md)", new.exists() and old.read_bytes() == new.read_bytes(), str(rel))
        elif old.suffix == ".csv":
            check("report tables (.csv, less wall times)", new.exists() and csv_rows(old) == csv_rows(new), str(rel))
        elif old.suffix == ".png":
            check("figures (pixels)", new.exists() and png_pixels(old) == png_pixels(new), str(rel))
    return stats, diffs


def tensors(x, prefix: str = "") -> dict:
    import torch
    if isinstance(x, torch.Tensor):
        return {prefix: x}
    if isinstance(x, dict):
        return {k: v for key, val in x.items() for k, v in tensors(val, f"{prefix}/{key}").items()}
    if isinstance(x, (list, tuple)):
        return {k: v for i, val in enumerate(x) for k, v in tensors(val, f"{prefix}/{i}").items()}
    return {}


def same_weights(a: Path, b: Path) -> bool:
    """Every tensor saved in the two files (weights, ensemble members, add-ons) is equal."""
    import torch
    x = tensors(torch.load(a, map_location="cpu", weights_only=False))
    y = tensors(torch.load(b, map_location="cpu", weights_only=False))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def run_config(path: Path) -> dict:
    import yaml
    cfg = yaml.safe_load(path.read_text()) or {}
    cfg.pop("provenance", None)
    return cfg


def compare_checkouts(new: Path, ref: Path) -> int:
    """Two finished runs of the pipeline (e.g. before and after a speed-up): every run whose resolved config is the
    same in both must have the same scores (per episode), training log and weights; runs whose config differs
    are listed, not compared."""
    stats: dict[str, list[int]] = {}
    diffs, changed, missing = [], [], []
    for cfg_path in sorted((ref / "results").rglob("config.yaml")):
        run = cfg_path.parent
        rel = run.relative_to(ref)
        other = new / rel
        if not (other / "config.yaml").exists():
            missing.append(str(rel))
            continue
        if run_config(cfg_path) != run_config(other / "config.yaml"):
            changed.append(str(rel))
            continue
        s, d = compare(new, ref, [str(rel)], reports=False)
        for k, (n, same) in s.items():
            t = stats.setdefault(k, [0, 0])
            t[0] += n
            t[1] += same
        diffs += d
    print("| compared (runs with the same config) | files | identical |\n|---|---|---|")
    for kind, (n, same) in stats.items():
        print(f"| {kind} | {n} | {same} |")
    print(f"runs whose config differs (not compared): {len(changed)}" + "".join(f"\n  {c}" for c in changed))
    print(f"runs only in {ref}: {len(missing)}" + "".join(f"\n  {m}" for m in missing))
    if diffs:
        print("differing:\n  " + "\n  ".join(diffs))
    return 1 if diffs else 0


def main() -> int:
    if sys.argv[1:2] == ["--compare"]:
        if len(sys.argv) != 4:
            sys.exit("usage: power_cut.py --compare NEW_CHECKOUT REFERENCE_CHECKOUT")
        return compare_checkouts(Path(sys.argv[2]).resolve(), Path(sys.argv[3]).resolve())
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default=".", help="checkout whose default run has finished (default: .)")
    ap.add_argument("--redo", nargs="+", default=["results/fc100"], help="results subfolders to delete and redo")
    ap.add_argument("--kill-after", type=float, default=300.0, help="seconds before the cut (default: %(default)s)")
    ap.add_argument("--snakemake", default="snakemake")
    args = ap.parse_args()
    wd = Path(args.workdir).resolve()
    for sub in args.redo:
        if not (wd / sub).is_dir():
            sys.exit(f"power_cut: {wd / sub} does not exist: run the default pipeline to the end first")
    ref = Path(tempfile.mkdtemp(prefix="power_cut_ref_"))
    snapshot(wd, args.redo, ref)
    for sub in args.redo:
        shutil.rmtree(wd / sub)
    # the reports too: Snakemake does not rebuild a missing intermediate file whose reports are present and newer
    for f in [*(wd / "reports" / "tables").glob("*"), *(wd / "reports" / "figures").glob("*.png"), wd / "reports" / "README.md"]:
        f.unlink()
    log = open(wd / "power_cut_drill.log", "w")
    t0 = time.time()
    proc = subprocess.Popen([args.snakemake, "--cores", "2"], cwd=wd, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    while True:
        time.sleep(5)
        if proc.poll() is not None:
            sys.exit(f"power_cut: snakemake ended before the cut (rc {proc.returncode}); raise --redo or lower "
                     "--kill-after")
        ckpts = [p for sub in args.redo for p in (wd / sub).rglob("checkpoints/last.pt")]
        if time.time() - t0 >= args.kill_after and ckpts:
            break
    running = subprocess.run(["pgrep", "-g", str(proc.pid), "-a"], capture_output=True, text=True).stdout
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # a power cut leaves nothing running: also any job that Snakemake started in a session of its own
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                if Path(f"/proc/{pid}/cwd").resolve() == wd and b"metarepro" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)
                    running += f"\n{Path(f'/proc/{pid}/cmdline').read_bytes().replace(bytes(1), b' ').decode()}"
            except OSError:
                pass
    cut_at = time.time() - t0
    jobs_at_cut = [ln.split("--run-dir ")[-1].split()[0] if "--run-dir" in ln else ln.split("\"run_dir\":\"")[-1]
                   .split("\"")[0] for ln in running.splitlines() if "metarepro" in ln and ("metatrain" in ln
                                                                                         or "evaluate" in ln)]
    locked = any((wd / ".snakemake" / "locks").glob("*"))
    incomplete = any((wd / ".snakemake" / "incomplete").rglob("*"))
    ckpts = sorted(str(p.relative_to(wd)) for sub in args.redo for p in (wd / sub).rglob("checkpoints/last.pt"))
    print(f"cut after {cut_at:.0f} s: {len(jobs_at_cut)} metarepro jobs killed: {', '.join(jobs_at_cut)}")
    print(f"left behind: lock {'yes' if locked else 'no'}, incomplete markers {'yes' if incomplete else 'no'}, "
          f"resume checkpoints {len(ckpts)}: {', '.join(ckpts)}")
    subprocess.run([args.snakemake, "--unlock"], cwd=wd, stdout=log, stderr=subprocess.STDOUT, check=True)
    t1 = time.time()
    rc = subprocess.run([args.snakemake, "--cores", "2"], cwd=wd, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"rerun after --unlock: rc {rc} in {time.time() - t1:.0f} s")
    log.close()
    resumed = [ln.strip() for ln in (wd / "power_cut_drill.log").read_text().splitlines() if "resuming" in ln]
    for d in sorted((wd / "logs").rglob("*.log")):
        try:
            text = d.read_text()
        except OSError:
            continue
        if "resuming" in text and d.stat().st_mtime >= t1:
            resumed += [f"{d.relative_to(wd)}: " + next(ln for ln in text.splitlines() if "resuming" in ln).strip()]
    print("resumed from checkpoints:\n  " + "\n  ".join(sorted(set(resumed)) or ["(none)"]))
    stats, diffs = compare(wd, ref, args.redo)
    print("\n| compared | files | identical |\n|---|---|---|")
    for kind, (n, same) in stats.items():
        print(f"| {kind} | {n} | {same} |")
    if diffs:
        print("differing:\n  " + "\n  ".join(diffs))
    shutil.rmtree(ref)
    return 1 if diffs or rc else 0


if __name__ == "__main__":
    sys.exit(main())
