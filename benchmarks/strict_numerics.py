"""Cost of strict numerics: MAML meta-iterations (Conv-4-64, Omniglot 5-way 1-shot shapes, meta-batch 8, random
images) and a Conv-4-32 evaluation episode at CIFAR-FS shapes, native vs strict (AVX2 pins, one thread), timed as
paired ratios: the two modes run alternately in fresh processes, so load from other work falls on both alike.

    python benchmarks/strict_numerics.py --rounds 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKER = r"""
import json, sys, time, torch
from metarepro.numerics import apply_strict, describe
apply_strict()
from metarepro import methods, models
from metarepro.methods.base import Task
from metarepro.utils import set_threads
from metarepro.addons.outer import meta_step
set_threads(1)
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
def task(c, s, ways=5, shots=1, queries=5):
    return Task(torch.randn(ways * shots, c, s, s, generator=g), torch.arange(ways).repeat_interleave(shots),
                torch.randn(ways * queries, c, s, s, generator=g), torch.arange(ways).repeat_interleave(queries))
m = methods.build("maml", models.build("conv4", (1, 28, 28), 5, filters=64), "classification", inner_lr=0.4)
opt = torch.optim.Adam(m.parameters(), 1e-3)
batches = [[task(1, 28) for _ in range(8)] for _ in range(int(sys.argv[1]) + 2)]
for b in batches[:2]:
    meta_step(m, b, opt)
t0 = time.perf_counter()
for b in batches[2:]:
    meta_step(m, b, opt)
train = (time.perf_counter() - t0) / int(sys.argv[1])
e = methods.build("maml", models.build("conv4", (3, 32, 32), 5, filters=32), "classification", inner_lr=0.01,
                  inner_steps=5, eval_inner_steps=10).eval()
eps = [task(3, 32, queries=15) for _ in range(22)]
for t in eps[:2]:
    e.evaluate_task(t, every_step=False)
t0 = time.perf_counter()
for t in eps[2:]:
    e.evaluate_task(t, every_step=False)
print(json.dumps({"train_s_per_iteration": train, "eval_s_per_episode": (time.perf_counter() - t0) / 20,
                  "isa": describe()["cpu_capability"]}))
"""


def once(strict: bool, iters: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "METAREPRO_STRICT_NUMERICS"}
    env.update(PYTHONPATH=str(REPO / "src"), **({"METAREPRO_STRICT_NUMERICS": "1"} if strict else {}))
    out = subprocess.run([sys.executable, "-c", WORKER, str(iters)], env=env, capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--iters", type=int, default=10, help="timed meta-iterations per process")
    p.add_argument("--out", default="benchmarks/out/strict_numerics.json")
    args = p.parse_args()
    rows = []
    for r in range(args.rounds):
        pair = {}
        for strict in ((False, True) if r % 2 == 0 else (True, False)):     # alternate which mode goes first
            pair["strict" if strict else "native"] = once(strict, args.iters)
        rows.append(pair)
        print(json.dumps(pair), flush=True)
    summary = {k: statistics.median(p["strict"][k] / p["native"][k] for p in rows)
               for k in ("train_s_per_iteration", "eval_s_per_episode")}
    summary["isa"] = {"native": rows[0]["native"]["isa"], "strict": rows[0]["strict"]["isa"]}
    print("median strict/native time ratio:", json.dumps(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"rounds": rows, "median_ratio": summary}, indent=2))


if __name__ == "__main__":
    main()
