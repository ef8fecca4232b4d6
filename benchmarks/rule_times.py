"""Where a pipeline run's time goes: wall and CPU minutes per rule kind and per method, and the longest jobs.

    python benchmarks/rule_times.py logs/default/benchmark [--calibrate]     # Snakemake `benchmark:` files
    python benchmarks/rule_times.py .snakemake/log/<run>.snakemake.log        # older runs: Snakemake's own log

From benchmark files (every download, prepare, pretrain, metatrain and evaluate job writes one, a TSV of its wall
seconds `s`, CPU seconds `cpu_time` and peak RSS `max_rss`) the table has wall and CPU minutes and the largest RSS.
From a Snakemake log, each job's time runs from the timestamp before its `rule X:` block to the one before
`Finished jobid: N` (wall only). With --cores 2 two jobs run at once, so job-minutes add up to about twice the wall
time of the run.

--calibrate expresses every time in a machine-independent unit as well: multiples of one plain forward + backward
+ Adam step of the Conv-4-64 on a batch of 80 Omniglot-sized images (one MAML Omniglot task's worth of images),
measured here, now, so run it on the machine and in the session that ran the pipeline.
"""
from __future__ import annotations

import argparse
import collections
import csv
import datetime
import re
import statistics
import time
from pathlib import Path

RULE_DIRS = ("download", "prepare", "pretrain", "metatrain", "evaluate")


def calibrate(repeats: int = 20) -> float:
    """Median seconds of one Conv-4-64 forward + backward + Adam step on 80 images of 1x28x28 (1 thread)."""
    import torch
    import torch.nn.functional as F

    from metarepro import models

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = models.build("conv4", (1, 28, 28), 5, filters=64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(80, 1, 28, 28), torch.arange(80) % 5
    times = []
    for i in range(repeats + 3):
        t0 = time.perf_counter()
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def from_benchmarks(root: Path) -> list[dict]:
    """One dict per job: rule kind, job name (the file's path below the rule folder), wall s, CPU s, max RSS MB."""
    jobs = []
    for tsv in sorted(root.rglob("*.tsv")):
        rule = tsv.relative_to(root).parts[0]
        with open(tsv, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        if not rows:
            continue
        r = rows[-1]
        num = lambda k: float(r[k]) if r.get(k) not in (None, "", "NA", "-") else float("nan")   # noqa: E731
        jobs.append({"rule": rule, "job": str(tsv.relative_to(root / rule).with_suffix("")), "wall": num("s"),
                     "cpu": num("cpu_time"), "rss": num("max_rss")})
    return jobs


def from_log(path: Path) -> list[dict]:
    text = path.read_text().splitlines()
    start, rule_of, wc = {}, {}, {}
    cur_time = cur_rule = None
    for line in text:
        m = re.match(r"^\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]$", line)
        if m:
            cur_time = datetime.datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            continue
        m = re.match(r"^(?:local)?rule (\w+):", line)
        if m:
            cur_rule = m.group(1)
            continue
        m = re.match(r"^\s+jobid: (\d+)", line)
        if m and cur_rule:
            start[m.group(1)], rule_of[m.group(1)] = cur_time, cur_rule
            continue
        m = re.match(r"^\s+wildcards: (.*)", line)
        if m and cur_rule and start:
            wc[list(start)[-1]] = m.group(1)
        m = re.match(r"^Finished jobid: (\d+)", line)
        if m and m.group(1) in start:
            start[m.group(1)] = (start[m.group(1)], cur_time)
    jobs = []
    for j, v in start.items():
        if isinstance(v, tuple) and v[0] and v[1]:
            w = wc.get(j, "")
            method = re.search(r"method=([^,]+)", w)
            jobs.append({"rule": rule_of[j], "job": (method.group(1) + "/" if method else "") + w,
                         "wall": (v[1] - v[0]).total_seconds(), "cpu": float("nan"), "rss": float("nan")})
    return jobs


def method_of(job: dict) -> str | None:
    """The method of a metatrain/evaluate job ('<dataset>/<method>/...'), variants and add-ons with their base."""
    if not job["rule"].startswith(("metatrain", "evaluate")):
        return None
    parts = job["job"].split("/")
    name = parts[1] if len(parts) > 1 and not parts[0].startswith("method=") else parts[0]
    return re.split(r"[@+]", name)[0] or None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("source", help="a benchmark folder (logs/<profile>/benchmark) or a .snakemake.log")
    ap.add_argument("--calibrate", action="store_true", help="also in units of a plain Conv-4 forward+backward")
    args = ap.parse_args()
    src = Path(args.source)
    jobs = from_benchmarks(src) if src.is_dir() else from_log(src)
    unit = calibrate() if args.calibrate else None
    if unit:
        print(f"unit: one Conv-4-64 forward+backward+Adam on 80 images of 1x28x28 = {unit * 1000:.1f} ms here")

    def fmt(s: float) -> str:
        return f"{s / 60:8.1f}" + (f" {s / unit:10.0f}" if unit else "")
    unit_hdr = "      units" if unit else ""
    by_rule: dict[str, list[dict]] = collections.defaultdict(list)
    for j in jobs:
        by_rule[j["rule"]].append(j)
    print(f"{'rule':18s} {'jobs':>5s} {'wall min':>8s}{unit_hdr} {'CPU min':>8s} {'max RSS MB':>10s}")
    for rule, js in sorted(by_rule.items(), key=lambda kv: -sum(j["wall"] for j in kv[1])):
        wall, cpu = sum(j["wall"] for j in js), sum(j["cpu"] for j in js)
        rss = max(j["rss"] for j in js)
        print(f"{rule:18s} {len(js):5d} {fmt(wall)} {cpu / 60:8.1f} {rss:10.0f}")
    by_method: dict[str, float] = collections.defaultdict(float)
    for j in jobs:
        m = method_of(j)
        if m:
            by_method[m] += j["wall"]
    print("meta-training + evaluation wall minutes per method (variants and add-ons with their method):")
    for m, s in sorted(by_method.items(), key=lambda kv: -kv[1]):
        print(f"  {m:18s} {fmt(s)}")
    total = sum(j["wall"] for j in jobs)
    print(f"total {total / 60:.1f} job-min in {len(jobs)} jobs; longest:")
    for j in sorted(jobs, key=lambda j: -j["wall"])[:10]:
        print(f"  {fmt(j['wall'])} min  {j['rule']} {j['job']}")


if __name__ == "__main__":
    main()
