"""MAML meta-training throughput: this project's implementation vs the `higher` library.

Setting (Finn et al. 2017, Omniglot 5-way 1-shot): Conv-4-64 on 28x28x1 images, 5 queries per class,
1 inner SGD step with inner lr 0.4, meta-batch 8, Adam meta-optimiser (lr 1e-3). Both
implementations run on IDENTICAL meta-batches from IDENTICAL initial weights:

- ours:   `metarepro.methods.build("maml" | "fomaml", ...)` + `meta_step(learner, tasks, optimizer)`
          (torch.func.functional_call + torch.autograd.grad, per-task backward).
- stacked: the same with the meta-batch as one stacked task (`train.stack_tasks`: per-task weights through
          grouped convolutions, per-task batch norm), one backward.
- higher: the standard `higher` MAML loop, `higher.innerloop_ctx(model, SGD(lr=0.4),
          copy_initial_weights=False, track_higher_grads=second_order)` per task, per-task backward.
          First order: with track_higher_grads=False higher detaches the fast weights after the inner
          step, so the query-loss gradient w.r.t. the fast weights is accumulated into the initial
          weights' .grad by hand (which is exactly the FO-MAML meta-gradient).
- floor:  a plain forward + backward (no inner loop) over the same support + query images, per task
          (same batch-norm batches as the inner loop sees), plus the same Adam step.

Before timing, the meta-gradients of ours and higher on the first meta-batch are compared (max abs
difference, asserted small) for both orders, so the throughput comparison is apples-to-apples.

Timing is paired: in each timed meta-iteration every implementation runs once on the same meta-batch,
in an order rotated from iteration to iteration, so load from other processes hits all of them alike.
Reported: median and IQR (25th-75th percentile) of tasks/s over the timed iterations, and the median
(IQR) of the per-iteration ratio ours/higher in tasks/s (> 1: ours is faster).

Run:  python benchmarks/maml_throughput.py [--iters 20] [--warmup 3] [--threads 1] [--out PATH]
      python benchmarks/maml_throughput.py --meta-batch 32 --queries 1   (the Omniglot protocol's meta-batch)
Bench-only dependency: `pip install -e '.[bench]'` (higher==0.2.1).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from metarepro import data as datasets
from metarepro import methods, models
from metarepro.addons.outer import meta_step
from metarepro.methods.base import Task
from metarepro.utils import set_threads

WAYS, SHOTS, QUERIES = 5, 1, 5
IN_SHAPE = (1, 28, 28)
FILTERS = 64
INNER_LR = 0.4
INNER_STEPS = 1
META_BATCH = 8
META_LR = 1e-3


# ---- tasks ------------------------------------------------------------------------------------
class RandomEpisodes:
    """Stand-in for Omniglot when data/omniglot is not prepared: uniform [0, 1) images, same shapes."""

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def episode(self, index: int) -> Task:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        x = torch.rand(WAYS, SHOTS + QUERIES, *IN_SHAPE, generator=g)
        y = torch.arange(WAYS).view(-1, 1).expand(-1, SHOTS + QUERIES)
        xs, ys = x[:, :SHOTS].reshape(-1, *IN_SHAPE), y[:, :SHOTS].reshape(-1)
        xq, yq = x[:, SHOTS:].reshape(-1, *IN_SHAPE), y[:, SHOTS:].reshape(-1)
        return Task(xs.contiguous(), ys.contiguous(), xq.contiguous(), yq.contiguous())


def task_sampler(data_dir: str, seed: int, force_random: bool) -> tuple[datasets.TaskSampler, str]:
    if not force_random and (Path(data_dir) / "meta.json").exists():
        eps = datasets.episodes("omniglot", {"rotations": True}, data_dir, "train", WAYS, SHOTS, QUERIES, seed)
        return datasets.TaskSampler(eps), f"omniglot ({data_dir}, train split, rotations)"
    why = "--random-data" if force_random else f"{Path(data_dir) / 'meta.json'} not found"
    return datasets.TaskSampler(RandomEpisodes(seed)), f"random tensors of the same shapes ({why})"


# ---- the three step functions -----------------------------------------------------------------
def make_ours(init_state: dict, second_order: bool, stacked: bool = False) -> tuple[nn.Module, Callable]:
    model = models.build("conv4", IN_SHAPE, WAYS, filters=FILTERS)
    model.load_state_dict(init_state)
    model.stack_tasks = stacked
    learner = methods.build("maml" if second_order else "fomaml", model, "classification",
                            inner_lr=INNER_LR, inner_steps=INNER_STEPS)
    learner.train()
    opt = torch.optim.Adam(learner.parameters(), lr=META_LR)

    def step(tasks: list[Task], optimizer: torch.optim.Optimizer | None = None) -> None:
        meta_step(learner, tasks, optimizer or opt)

    return learner, step


def make_higher(init_state: dict, second_order: bool) -> tuple[nn.Module, Callable]:
    import higher

    model = models.build("conv4", IN_SHAPE, WAYS, filters=FILTERS)
    model.load_state_dict(init_state)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)
    params = list(model.parameters())

    def step(tasks: list[Task], optimizer: torch.optim.Optimizer | None = None) -> None:
        optimizer = optimizer or opt
        optimizer.zero_grad(set_to_none=True)
        n = len(tasks)
        stats = {"loss": 0.0, "metric": 0.0}  # same bookkeeping as ours (loss + accuracy per task)
        for t in tasks:
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=second_order) as (fnet, diffopt):
                for _ in range(INNER_STEPS):
                    diffopt.step(F.cross_entropy(fnet(t.x_support), t.y_support))
                out = fnet(t.x_query)
                loss = F.cross_entropy(out, t.y_query)
                if second_order:
                    (loss / n).backward()
                else:
                    grads = torch.autograd.grad(loss / n, list(fnet.parameters()))
                    for p, g in zip(params, grads):
                        if p.grad is None:
                            p.grad = g.detach().clone()
                        else:
                            p.grad.add_(g)
                stats["loss"] += float(loss.detach()) / n
                stats["metric"] += float((out.argmax(-1) == t.y_query).float().mean()) * 100.0 / n
        optimizer.step()

    return model, step


def make_floor(init_state: dict) -> Callable:
    model = models.build("conv4", IN_SHAPE, WAYS, filters=FILTERS)
    model.load_state_dict(init_state)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=META_LR)

    def step(tasks: list[Task]) -> None:
        opt.zero_grad(set_to_none=True)
        for t in tasks:
            x = torch.cat([t.x_support, t.x_query])
            y = torch.cat([t.y_support, t.y_query])
            (F.cross_entropy(model(x), y) / len(tasks)).backward()
        opt.step()

    return step


# ---- checks and timing ------------------------------------------------------------------------
def meta_grads(module: nn.Module, step: Callable, tasks: list[Task]) -> list[torch.Tensor]:
    """Meta-gradient of one meta-step, leaving the weights unchanged (SGD with lr 0)."""
    step(tasks, torch.optim.SGD(module.parameters(), lr=0.0))
    return [p.grad.detach().clone() for p in module.parameters()]


def grad_check(init_state: dict, second_order: bool, tasks: list[Task], rtol: float) -> dict:
    ours, ours_step = make_ours(init_state, second_order)
    stacked, stacked_step = make_ours(init_state, second_order, stacked=True)
    hmod, higher_step = make_higher(init_state, second_order)
    g_ours = meta_grads(ours, ours_step, tasks)
    g_stacked = meta_grads(stacked, stacked_step, tasks)
    g_higher = meta_grads(hmod, higher_step, tasks)
    assert len(g_ours) == len(g_higher) == len(g_stacked)
    diff = max(float((a - b).abs().max()) for a, b in zip(g_ours, g_higher))
    diff_stacked = max(float((a - b).abs().max()) for a, b in zip(g_stacked, g_higher))
    scale = max(float(a.abs().max()) for a in g_ours)
    # also: second- and first-order meta-gradients must differ (the SO path is really second order)
    return {"max_abs_diff": diff, "max_abs_diff_stacked": diff_stacked, "max_abs_grad": scale,
            "rel_diff": max(diff, diff_stacked) / scale, "ok": max(diff, diff_stacked) <= rtol * scale,
            "grads_ours": g_ours}


def summary(values: list[float]) -> dict:
    q25, q50, q75 = np.percentile(values, [25, 50, 75])
    return {"median": float(q50), "q25": float(q25), "q75": float(q75), "iqr": float(q75 - q25),
            "max": float(max(values)), "n": len(values)}


def run_order(init_state: dict, second_order: bool, batches: list[list[Task]], warmup: int,
              floor_step: Callable) -> dict:
    _, ours_step = make_ours(init_state, second_order)
    _, stacked_step = make_ours(init_state, second_order, stacked=True)
    _, higher_step = make_higher(init_state, second_order)
    fns = {"ours": ours_step, "stacked": stacked_step, "higher": higher_step, "floor": floor_step}
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for i, tasks in enumerate(batches):
        k = i % len(names)
        for name in names[k:] + names[:k]:  # rotate the order every iteration
            t0 = time.perf_counter()
            fns[name](tasks)
            dt = time.perf_counter() - t0
            if i >= warmup:
                times[name].append(dt)
    tps = {k: [META_BATCH / t for t in v] for k, v in times.items()}
    ratio = [th / to for to, th in zip(times["ours"], times["higher"])]  # (tasks/s ours) / (tasks/s higher)
    ratio_st = [th / ts for ts, th in zip(times["stacked"], times["higher"])]
    ratio_sl = [to / ts for ts, to in zip(times["stacked"], times["ours"])]
    return {"seconds_per_meta_iteration": times,
            "tasks_per_s": {k: summary(v) for k, v in tps.items()},
            "ratio_ours_over_higher": summary(ratio), "ratio_stacked_over_higher": summary(ratio_st),
            "ratio_stacked_over_loop": summary(ratio_sl)}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    global META_BATCH, QUERIES
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--iters", type=int, default=20, help="timed meta-iterations per order (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed meta-iterations first (default 3)")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default="data/omniglot")
    ap.add_argument("--random-data", action="store_true", help="use random tensors even if Omniglot is prepared")
    ap.add_argument("--rtol", type=float, default=1e-4,
                    help="grad check: max |g_ours - g_higher| <= rtol * max |g_ours| (default 1e-4)")
    ap.add_argument("--meta-batch", type=int, default=META_BATCH, help="tasks per meta-batch (default 8)")
    ap.add_argument("--queries", type=int, default=QUERIES, help="query images per class (default 5)")
    ap.add_argument("--out", default="benchmarks/out/maml_throughput.json")
    args = ap.parse_args(argv)
    META_BATCH, QUERIES = args.meta_batch, args.queries

    import higher

    set_threads(args.threads)
    sampler, source = task_sampler(args.data_dir, args.seed, args.random_data)
    n_batches = args.warmup + args.iters
    batches = [sampler.sample(i, META_BATCH) for i in range(n_batches)]  # sampled up front, not timed

    torch.manual_seed(args.seed)
    init_state = copy.deepcopy(models.build("conv4", IN_SHAPE, WAYS, filters=FILTERS).state_dict())
    n_params = sum(v.numel() for v in init_state.values())

    env = {"torch": str(torch.__version__), "higher": getattr(higher, "__version__", "0.2.1"),
           "python": platform.python_version(), "platform": platform.platform(), "cpu": cpu_model(),
           "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_")}
    print(f"MAML throughput, Conv-4-{FILTERS} ({n_params} params), Omniglot {WAYS}-way {SHOTS}-shot, "
          f"{QUERIES} queries/class, {INNER_STEPS} inner step lr {INNER_LR}, meta-batch {META_BATCH}")
    print(f"data: {source}")
    print(f"torch {env['torch']}, higher {env['higher']}, {env['cpu']} ({env['cpu_count']} cores), "
          f"threads {env['torch_threads']}, warmup {args.warmup}, timed iters {args.iters}")
    if env["MALLOC_MMAP_THRESHOLD_"] is None:
        print("note: MALLOC_MMAP_THRESHOLD_ is not set (export MALLOC_MMAP_THRESHOLD_=17179869184 speeds CPU torch)")

    # ---- meta-gradient equivalence on the first meta-batch --------------------------------------
    checks = {}
    for order, so in (("second_order", True), ("first_order", False)):
        checks[order] = grad_check(init_state, so, batches[0], args.rtol)
    so_fo = max(float((a - b).abs().max()) for a, b in
                zip(checks["second_order"]["grads_ours"], checks["first_order"]["grads_ours"]))
    for c in checks.values():
        del c["grads_ours"]
    print("\nmeta-gradient check, first meta-batch (ours vs higher):")
    for order, c in checks.items():
        print(f"  {order:12s} max|diff| loop {c['max_abs_diff']:.2e}, stacked {c['max_abs_diff_stacked']:.2e}  "
              f"(max|grad| {c['max_abs_grad']:.2e}, rel {c['rel_diff']:.1e})  {'OK' if c['ok'] else 'MISMATCH'}")
    print(f"  (second- vs first-order meta-gradient max|diff| {so_fo:.2e}: the orders really differ)")
    if not all(c["ok"] for c in checks.values()):
        print("meta-gradients differ: the comparison would not be apples-to-apples", file=sys.stderr)
        return 1

    # ---- timing -----------------------------------------------------------------------------
    t_start = time.perf_counter()
    floor_step = make_floor(init_state)
    results = {}
    for order, so in (("second_order", True), ("first_order", False)):
        results[order] = run_order(init_state, so, batches, args.warmup, floor_step)
    wall = time.perf_counter() - t_start

    floor_all = [META_BATCH / t for r in results.values() for t in r["seconds_per_meta_iteration"]["floor"]]
    floor = summary(floor_all)

    def cell(s: dict, digits: int = 1) -> str:
        return f"{s['median']:.{digits}f} [{s['q25']:.{digits}f}, {s['q75']:.{digits}f}]"

    print(f"\ntasks/s, median [IQR] over {args.iters} timed meta-iterations (higher is better)")
    header = (f"{'':14s}{'ours (loop)':>22s}{'ours (stacked)':>22s}{'higher':>22s}{'loop/higher':>24s}"
              f"{'stacked/higher':>24s}{'stacked/loop':>24s}{'floor fwd+bwd':>24s}")
    print(header)
    print("-" * len(header))
    for order, r in results.items():
        t = r["tasks_per_s"]
        print(f"{order.replace('_', '-'):14s}{cell(t['ours']):>22s}{cell(t['stacked']):>22s}{cell(t['higher']):>22s}"
              f"{cell(r['ratio_ours_over_higher'], 3):>24s}{cell(r['ratio_stacked_over_higher'], 3):>24s}"
              f"{cell(r['ratio_stacked_over_loop'], 3):>24s}{cell(t['floor']):>24s}")
    print("best iteration (least disturbed by other load), tasks/s: " + "; ".join(
        f"{o.replace('_', '-')} ours {r['tasks_per_s']['ours']['max']:.1f}, higher {r['tasks_per_s']['higher']['max']:.1f},"
        f" floor {r['tasks_per_s']['floor']['max']:.1f}" for o, r in results.items()))
    print(f"\nfloor (plain forward+backward+Adam on the same {META_BATCH} x {WAYS * (SHOTS + QUERIES)} images, "
          f"no inner loop), both phases pooled: {cell(floor)} tasks/s")
    for order, r in results.items():
        t = r["tasks_per_s"]
        print(f"{order.replace('_', '-')}: ours at {t['ours']['median'] / floor['median']:.2f}x, "
              f"higher at {t['higher']['median'] / floor['median']:.2f}x of the floor's throughput")
    print(f"timing wall time {wall:.1f}s")

    out = {"benchmark": "maml_throughput",
           "setting": {"backbone": f"conv4-{FILTERS}", "in_shape": IN_SHAPE, "ways": WAYS, "shots": SHOTS,
                       "queries": QUERIES, "inner_lr": INNER_LR, "inner_steps": INNER_STEPS,
                       "meta_batch": META_BATCH, "meta_optimizer": f"Adam(lr={META_LR})", "n_params": n_params},
           "data": source, "args": vars(args), "environment": env,
           "grad_check": {**checks, "so_vs_fo_max_abs_diff": so_fo},
           "results": results, "floor_pooled_tasks_per_s": floor, "timing_wall_s": wall}
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
