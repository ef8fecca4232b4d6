"""How long Snakemake takes to plan a grid: wall seconds of `snakemake -n` (a dry run), repeated.

    python benchmarks/dry_run.py                                   # the paper grid, 7 repeats
    python benchmarks/dry_run.py --configfile config/config.yaml --repeats 5
    python benchmarks/dry_run.py --profile                         # + where the time goes (cProfile, one run)

Each repeat is a fresh `snakemake -n --cores 2 --configfile F` process from the repository root, so the times
include Python's start-up and imports, as a user waits for them (with Python's bytecode cache, as on a user's
machine: see --keep-env). The minimum is the figure to compare (the least
disturbed run); the median is printed beside it. Run it on an idle machine: a job beside it inflates every repeat.
--profile also runs one dry run under cProfile and prints the functions with the most cumulative time among
Snakemake's phases and this repository's code, and the imports that cost the most (python -X importtime).
"""
from __future__ import annotations

import argparse
import json
import os
import re
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


def time_dry_runs(configfile: str, repeats: int, env: dict[str, str]) -> tuple[list[float], int]:
    """Wall seconds of each repeat and the number of jobs planned. One untimed run first checks that the dry run
    succeeds, reads the job count and leaves the bytecode cache warm; the timed repeats write their output to
    /dev/null (what a terminal or a pipe adds is not planning: a pipe adds about 0.2 s here)."""
    out = subprocess.run(snakemake_cmd(configfile), cwd=ROOT, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"the dry run failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
    m = re.search(r"^total\s+(\d+)", out.stdout + out.stderr, re.M)
    jobs = int(m.group(1)) if m else 0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run(snakemake_cmd(configfile), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       env=env, check=True)
        times.append(time.perf_counter() - t0)
    return times, jobs


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
                    help="keep PYTHONDONTWRITEBYTECODE if set (default: unset it for the dry runs, as on a user's shell)")
    ap.add_argument("--out", default="benchmarks/out/dry_run.json")
    args = ap.parse_args()
    env = child_env(args.keep_env)
    times, jobs = time_dry_runs(args.configfile, args.repeats, env)
    result = {"configfile": args.configfile, "jobs": jobs, "repeats": args.repeats, "min_s": min(times),
              "median_s": statistics.median(times), "times_s": times, "load_avg_1min": os.getloadavg()[0],
              "bytecode_cache": "PYTHONDONTWRITEBYTECODE" not in env, "output": "/dev/null",
              "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"{args.configfile}: {jobs} jobs planned; dry run min {min(times):.2f} s, median "
          f"{statistics.median(times):.2f} s over {args.repeats} (1-min load average {os.getloadavg()[0]:.2f})")
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    if args.profile:
        profile(args.configfile, args.top, env)


if __name__ == "__main__":
    main()
