"""Meta-LSTM cost on Conv-4-64 (Omniglot 5-way 1-shot): the coordinate-last LSTM layout vs nn.LSTMCell's.

Meta-LSTM runs its two-layer LSTM over every one of the learner's 112k parameters at each inner step, so its
per-coordinate layout decides its cost. `metarepro.methods.metalstm.MetaLSTM` keeps the first layer's state as
(hidden, n) and computes the gates as one (4 hidden, n) GEMM whose gate blocks are contiguous rows.
`RowMajorMetaLSTM` below is the same method with the state as (n, hidden) run through `nn.LSTMCell` (the
layout this project used before, gates as strided column slices). Both share the same weights.

Measured, paired (the two implementations alternate on the same episodes):
- eval: one test episode, `eval_inner_steps` (5) LSTM-written steps without a graph, then the query score
  (what `metarepro evaluate` does 600 times);
- train: one meta-iteration of `--meta-batch` tasks with the graph through the LSTM, backward and Adam step.
Before timing, both are checked to give the same adapted parameters and meta-gradients (max abs difference).

Run:  python benchmarks/metalstm_step.py [--iters 10] [--threads 1] [--out benchmarks/out/metalstm_step.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import Tensor

from metarepro import models
from metarepro.cards import card
from metarepro.addons.outer import meta_step
from metarepro.methods.base import Task
from metarepro.methods.metalstm import MetaLSTM, preprocess
from metarepro.utils import set_threads

WAYS, SHOTS, QUERIES, IN_SHAPE, FILTERS, STEPS = 5, 1, 15, (1, 28, 28), 64, 5


class RowMajorMetaLSTM(MetaLSTM):
    """The same update written with nn.LSTMCell: h, s as (n, hidden)."""

    def initial_state(self, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        n, zeros = c.numel(), c.detach().new_zeros
        return zeros(n, self.lstm.hidden_size), zeros(n, self.lstm.hidden_size), zeros(n), zeros(n)

    def lstm_step(self, c, grad, loss, state):
        h, s, f_prev, i_prev = state
        n = c.numel()
        x = torch.cat([preprocess(loss.reshape(1), self.preprocess_p).expand(n, 2),
                       preprocess(grad, self.preprocess_p)], dim=1)   # (n, 4)
        h, s = self.lstm(x, (h, s))
        w = torch.stack([self.cell.w_f, self.cell.w_i])               # (2, hidden + 2)
        f = h @ w[0, :-2] + c * w[0, -2] + f_prev * w[0, -1] + self.cell.b_f
        i = h @ w[1, :-2] + c * w[1, -2] + i_prev * w[1, -1] + self.cell.b_i
        c = torch.sigmoid(f) * c - torch.sigmoid(i) * grad
        return c, (h, s, f, i), torch.sigmoid(f), torch.sigmoid(i)


def random_task(g: torch.Generator) -> Task:
    x = torch.rand(WAYS, SHOTS + QUERIES, *IN_SHAPE, generator=g)
    y = torch.arange(WAYS).view(-1, 1).expand(-1, SHOTS + QUERIES)
    return Task(x[:, :SHOTS].reshape(-1, *IN_SHAPE).contiguous(), y[:, :SHOTS].reshape(-1).contiguous(),
                x[:, SHOTS:].reshape(-1, *IN_SHAPE).contiguous(), y[:, SHOTS:].reshape(-1).contiguous())


def build(cls, seed: int) -> MetaLSTM:
    torch.manual_seed(seed)
    model = models.build("conv4", IN_SHAPE, WAYS, filters=FILTERS)
    torch.manual_seed(seed + 1)
    # a subclass, so not methods.build: the card's defaults by hand (the constructors have none)
    return cls(model, "classification",
               **{**card("metalstm").defaults(), "inner_steps": STEPS, "eval_inner_steps": STEPS})


def summary(xs: list[float]) -> dict[str, float]:
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"median": statistics.median(xs), "q25": q[0], "q75": q[2], "min": min(xs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--meta-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/metalstm_step.json")
    args = ap.parse_args()
    set_threads(args.threads)

    impls = {"coordinate_last": build(MetaLSTM, args.seed), "lstmcell_rows": build(RowMajorMetaLSTM, args.seed)}
    impls["lstmcell_rows"].load_state_dict(impls["coordinate_last"].state_dict())
    n_params = sum(p.numel() for p in impls["coordinate_last"].model.parameters())
    g = torch.Generator().manual_seed(args.seed)
    tasks = [random_task(g) for _ in range(args.iters + args.warmup + 1)]

    # same computation: adapted parameters and meta-gradients
    check = {}
    adapted = {k: torch.cat([v.reshape(-1) for v in m.adapt(tasks[0], STEPS).params.values()]).detach()
               for k, m in impls.items()}
    check["adapted_max_abs_diff"] = float((adapted["coordinate_last"] - adapted["lstmcell_rows"]).abs().max())
    grads = {}
    for k, m in impls.items():
        m.train()
        m.zero_grad()
        m.meta_loss(tasks[0])[0].backward()
        grads[k] = torch.cat([p.grad.reshape(-1) for p in m.parameters()])
    check["meta_grad_max_abs_diff"] = float((grads["coordinate_last"] - grads["lstmcell_rows"]).abs().max())
    check["meta_grad_max_abs"] = float(grads["coordinate_last"].abs().max())
    print(json.dumps(check))
    if check["meta_grad_max_abs_diff"] > 1e-4 * max(1.0, check["meta_grad_max_abs"]):
        sys.exit(f"meta-gradients differ: {check}")

    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in impls.items()}
    times: dict[str, dict[str, list[float]]] = {k: {"eval": [], "train": []} for k in impls}
    order = list(impls)
    for it in range(args.warmup + args.iters):
        order = order[::-1]   # alternate who goes first
        for k in order:
            m = impls[k]
            m.eval()
            t0 = time.perf_counter()
            m.evaluate_task(tasks[it], STEPS, every_step=False)
            t_eval = time.perf_counter() - t0
            m.train()
            batch = [tasks[(it + j) % len(tasks)] for j in range(args.meta_batch)]
            t0 = time.perf_counter()
            meta_step(m, batch, opts[k])
            t_train = time.perf_counter() - t0
            if it >= args.warmup:
                times[k]["eval"].append(t_eval)
                times[k]["train"].append(t_train)

    result = {
        "setting": {"backbone": f"conv4-{FILTERS}", "parameters": n_params, "ways": WAYS, "shots": SHOTS,
                    "queries": QUERIES, "inner_steps": STEPS, "meta_batch": args.meta_batch,
                    "iters": args.iters, "warmup": args.warmup, "threads": args.threads, "data": "random tensors"},
        "check": check,
        "seconds": {k: {phase: summary(v) for phase, v in t.items()} for k, t in times.items()},
        "speedup_median": {phase: statistics.median(
            [a / b for a, b in zip(times["lstmcell_rows"][phase], times["coordinate_last"][phase])])
            for phase in ("eval", "train")},
        "env": {"torch": torch.__version__, "python": platform.python_version(), "cpu_count": os.cpu_count(),
                "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                "MALLOC_TRIM_THRESHOLD_": os.environ.get("MALLOC_TRIM_THRESHOLD_")},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for k, t in result["seconds"].items():
        print(f"{k:16s} eval/episode {t['eval']['median']:.3f} s   train/meta-iteration {t['train']['median']:.3f} s")
    print("speedup (median of paired ratios):", {k: round(v, 2) for k, v in result["speedup_median"].items()})


if __name__ == "__main__":
    main()
