"""How long Snakemake takes to plan a grid: wall seconds of `snakemake -n` (a dry run), repeated.

    python benchmarks/dry_run.py                                   # the paper grid, 7 repeats
    python benchmarks/dry_run.py --configfile config/config.yaml --repeats 5
    python benchmarks/dry_run.py --profile                         # + where the time goes (cProfile, one run)
    git worktree add /tmp/old <commit> && python benchmarks/dry_run.py --against /tmp/old --repeats 8

Each repeat is a fresh `snakemake -n --cores 2 --configfile F` process from the repository root, so the times
include Python's start-up and imports, as a user waits for them (with Python's bytecode cache, as on a user's
machine: see --keep-env). The minimum is the figure to compare (the least
disturbed run); the median is printed beside it. Run it on an idle machine: a job beside it inflates every repeat.
--against DIR times another checkout (say, the commit before a change) in interleaved pairs, this one and DIR in
turn, and prints the ratio of their CPU seconds (user + system of the snakemake process), median and range: on a
machine whose speed drifts, pairs compare where absolute times do not. DIR plans against its own data/, results/
and .snakemake/ (link them from this checkout for the same state).
--profile also runs one dry run under cProfile and prints the functions with the most cumulative time among
Snakemake's phases and this repository's code, and the imports that cost the most (python -X importtime).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def snakemake_cmd(configfile: str) -> list[str]:
    exe = shutil.which("snakemake")
    if exe is None:
        sys.exit("snakemake is not on PATH: activate the venv with the workflow extra (pip install -e '.[workflow]')")
    return [exe, "-n", "--cores", "2", "--configfile", configfile]


def child_env(keep_env: bool) -> dict[str, str]:
    """The dry runs' environment: as a user's shell has it, i.e. without PYTHONDONTWRITEBYTECODE (some sandboxes
    and CI images set it, and then every start compiles this package's modules again), unless `keep_env`."""
    env = dict(os.environ)
    if not keep_env:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def planned_jobs(root: Path, configfile: str, env: dict[str, str]) -> int:
    """One untimed dry run in `root`: checks that it succeeds, returns the job count and leaves the bytecode cache
    warm."""
    out = subprocess.run(snakemake_cmd(configfile), cwd=root, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"the dry run in {root} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    m = re.search(r"^total\s+(\d+)", out.stdout + out.stderr, re.M)
    return int(m.group(1)) if m else 0


def timed_dry_run(root: Path, configfile: str, env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one dry run in `root`, its output to /dev/null (what a terminal or a
    pipe adds is not planning: a pipe adds about 0.2 s here)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(snakemake_cmd(configfile), cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env=env, check=True)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


def profile(configfile: str, top: int, env: dict[str, str]) -> None:
    import pstats
    with tempfile.TemporaryDirectory() as tmp:
        prof = Path(tmp) / "dry.prof"
        subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), *snakemake_cmd(configfile)], cwd=ROOT,
                       capture_output=True, check=True, env=env)
        stats = pstats.Stats(str(prof))
        print("\n## cumulative time (cProfile inflates Python-level calls; compare rows, not with the wall time)")
        stats.sort_stats("cumulative").print_stats(top)
        print(f"\n## this repository's code ({ROOT})")
        stats.sort_stats("cumulative").print_stats(re.escape(str(ROOT)) + "/(src|workflow|Snakefile)", top)
        imp = subprocess.run([sys.executable, "-X", "importtime", *snakemake_cmd(configfile)], cwd=ROOT,
                             capture_output=True, text=True, env=env).stderr
    rows = [(int(m.group(2)), m.group(3)) for m in re.finditer(r"import time:\s+(\d+) \|\s+(\d+) \|( +\S+)", imp)]
    print("\n## top-level imports by cumulative ms")
    for us, name in sorted([r for r in rows if r[1].startswith(" ") and not r[1].startswith("  ")],
                           reverse=True)[:top]:
        print(f"{us / 1000:8.1f} {name.strip()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configfile", default="config/paper.yaml")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--profile", action="store_true", help="also profile one dry run (cProfile, importtime)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--keep-env", action="store_true",
                    help="keep PYTHONDONTWRITEBYTECODE if set (default: unset it, as on a user's shell)")
    ap.add_argument("--against", help="another checkout to time in interleaved pairs with this one")
    ap.add_argument("--out", default="benchmarks/out/dry_run.json")
    args = ap.parse_args()
    env = child_env(args.keep_env)
    roots = [ROOT] + ([Path(args.against).resolve()] if args.against else [])
    jobs = [planned_jobs(root, args.configfile, env) for root in roots]
    runs: dict[Path, list[tuple[float, float]]] = {root: [] for root in roots}
    for _ in range(args.repeats):
        for root in roots:                      # interleaved: this checkout, then the other one, in turn
            runs[root].append(timed_dry_run(root, args.configfile, env))
    times = [w for w, _ in runs[ROOT]]
    result = {"configfile": args.configfile, "jobs": jobs[0], "repeats": args.repeats, "min_s": min(times),
              "median_s": statistics.median(times), "times_s": times, "cpu_s": [c for _, c in runs[ROOT]],
              "load_avg_1min": os.getloadavg()[0], "bytecode_cache": "PYTHONDONTWRITEBYTECODE" not in env,
              "output": "/dev/null", "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"{args.configfile}: {jobs[0]} jobs planned; dry run min {min(times):.2f} s, median "
          f"{statistics.median(times):.2f} s over {args.repeats} (1-min load average {os.getloadavg()[0]:.2f})")
    if args.against:
        other = roots[1]
        ratios = [c_other / c_this for (_, c_this), (_, c_other) in zip(runs[ROOT], runs[other])]
        o_times = [w for w, _ in runs[other]]
        result["against"] = {"dir": str(other), "jobs": jobs[1], "times_s": o_times,
                             "cpu_s": [c for _, c in runs[other]], "cpu_ratio_median": statistics.median(ratios),
                             "cpu_ratio_range": [min(ratios), max(ratios)]}
        print(f"{other}: {jobs[1]} jobs; min {min(o_times):.2f} s, median {statistics.median(o_times):.2f} s; CPU "
              f"seconds {other.name}/this checkout: median {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f}-{max(ratios):.3f}) over {args.repeats} pairs")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if args.profile:
        profile(args.configfile, args.top, env)


if __name__ == "__main__":
    main()
