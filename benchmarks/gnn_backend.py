"""GNN backbone for few-shot node classification on local subgraphs (G-Meta style): this project's dense-torch GCN
(metarepro.models.gnn.GNN) vs torch_geometric's GCNConv, on CPU.

What it measures. The same 2-layer GCN (hidden 64, 64) + linear head, with identical weights, in three forms:

- dense:       metarepro.models.gnn.GNN((M, M + F), ways, hidden=(64, 64), kind="gcn") on the padded node samples
               (B, M, M + F) exactly as metarepro.data.graphs lays them out (normalised adjacency in the first M
               columns, features in the last F, centre node in row 0); one batched (B, M, M) @ (B, M, d) per layer.
- pyg:         torch_geometric.nn.GCNConv(add_self_loops=True, normalize=True) on the disjoint union of the task's
               subgraphs (only their real nodes) with an edge_index; readout = each subgraph's centre node. GCNConv
               recomputes the symmetric normalisation (gcn_norm) in every forward, as it does by default.
- pyg_prenorm: the same GCNConv layers with normalize=False, add_self_loops=False and edge_weight = the entries of
               our precomputed D^-1/2 (A + I) D^-1/2 (self-loops included): PyG's cheapest correct use here.

Both add each layer's bias after the aggregation, relu(Â h W^T + b) (Kipf & Welling 2017), so the stock GCNConv
computes exactly the dense GNN's layer.

Before timing, the logits of all three on the support and query sets of several tasks are compared (max abs diff,
must be <= --atol, default 1e-5), and so are the second-order meta-gradients (reported, checked at 1e-4 relative).

Timed units, each for one meta-batch of --meta-batch (4) tasks of synthetic_cycle 3-way 3-shot 5-query
(9 support + 15 query subgraphs, M = 30, 2-hop, ~15 real nodes each), run the way metarepro's methods run them:
torch.func.functional_call on a params dict, inner SGD with torch.autograd.grad, one backward per task.

- second_order: 5 inner steps with create_graph=True, then the query loss backward (meta-gradient through the loop).
- first_order:  5 inner steps with create_graph=False, then the query loss backward (FO-MAML meta-gradient).
- eval:         10 inner steps, create_graph=False, fast weights detached after each step, query logits under no_grad.

PyG's input conversion (dense padded adjacency -> node features, edge_index [, edge_weight], centre indices, for the
support and query set of every task) is timed separately ("conversion") and added ("total" = conversion + compute);
a real PyG pipeline would build these once per task, so it is paid once per timed unit (timed in every mode's
run and paired with that run's compute time).

Timing is paired: in every repeat, each backend runs once on the same meta-batch, in an order rotated from repeat
to repeat (dense, pyg, pyg_prenorm / pyg, pyg_prenorm, dense / ...), so load from other processes falls on all of
them alike. After --warmup untimed repeats, --repeats (20) timed ones. Reported per mode: the median and IQR of the
milliseconds per meta-batch, and the median (IQR) of the per-repeat ratio pyg/dense (> 1: dense is faster).
Intra-op threads: --threads (default 1), inter-op threads 1.

Run (from the repository root):
    . .venv/bin/activate
    python -m metarepro prepare --dataset synthetic_cycle --out /tmp/gnnbench/sc     # once (the script does it too)
    PYTHONPATH=src python benchmarks/gnn_backend.py [--data-dir /tmp/gnnbench/sc] [--repeats 20] [--warmup 3]
                                                    [--threads 1] [--out benchmarks/out/gnn_backend.json]
Bench-only dependency: torch_geometric (pure Python; results in benchmarks/gnn_backend.json used 2.8.1, without
pyg-lib / torch-scatter / torch-sparse). Without it the script says so, times the dense path only and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metarepro import data as datasets
from metarepro.models.gnn import GNN

try:
    import torch_geometric
    from torch_geometric.nn import GCNConv
except ImportError:            # bench-only dependency
    torch_geometric = None
    GCNConv = None

DATASET = "synthetic_cycle"
WAYS, SHOTS, QUERIES = 3, 3, 5
HIDDEN = (64, 64)
INNER_LR = 0.01                # G-Meta's card default; irrelevant to the timing
TRAIN_STEPS, EVAL_STEPS = 5, 10
MODES = ("second_order", "first_order", "eval")

Params = dict[str, Tensor]


# ---- models -------------------------------------------------------------------------------------------------------
class PygGCN(nn.Module):
    """GCNConv layers (relu after each) + linear head on the centre nodes."""

    def __init__(self, in_features: int, hidden: tuple[int, ...], out_dim: int, prenorm: bool) -> None:
        super().__init__()
        widths = [in_features, *hidden]
        self.convs = nn.ModuleList()
        for a, b in zip(widths[:-1], widths[1:]):
            self.convs.append(GCNConv(a, b, add_self_loops=not prenorm, normalize=not prenorm))
        self.head = nn.Linear(hidden[-1], out_dim)

    def forward(self, x: Tensor, edge_index: Tensor, edge_weight: Tensor | None, centre: Tensor) -> Tensor:
        for conv in self.convs:
            x = torch.relu(conv(x, edge_index, edge_weight))
        return self.head(x[centre])


def name_map(n_layers: int) -> dict[str, str]:
    """dense GNN parameter name -> PygGCN parameter name."""
    m = {"head.weight": "head.weight", "head.bias": "head.bias"}
    for i in range(n_layers):
        m[f"features.layers.{i}.weight"] = f"convs.{i}.lin.weight"
        m[f"features.layers.{i}.bias"] = f"convs.{i}.bias"
    return m


# ---- PyG input conversion ------------------------------------------------------------------------------------------
def to_pyg(x: Tensor, m: int, prenorm: bool) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Padded node samples (B, M, M + F) -> (node features (N, F), edge_index (2, E), edge_weight (E,) | None,
    centre indices (B,)) of the disjoint union of the B subgraphs' real nodes. Real nodes: positive diagonal of
    D^-1/2 (A + I) D^-1/2 (padding rows and columns are zero). normalize: off-diagonal nonzeros as edges, GCNConv
    adds the self-loops and the normalisation; prenorm: every nonzero with its normalised value as edge_weight."""
    a, h = x[..., :m], x[..., m:]
    real = torch.diagonal(a, dim1=-2, dim2=-1) > 0                             # (B, M)
    gid = torch.cumsum(real.flatten(), 0).view_as(real) - 1                    # global node id of each real node
    nz = a != 0
    if not prenorm:
        nz &= ~torch.eye(m, dtype=torch.bool, device=x.device)
    b, i, j = nz.nonzero(as_tuple=True)
    edge_index = torch.stack([gid[b, j], gid[b, i]])                           # source j -> target i (Â symmetric)
    weight = a[b, i, j] if prenorm else None
    return h[real], edge_index, weight, gid[:, 0]


# ---- one meta-batch, the way metarepro's methods run it ---------------------------------------------------------
def adapt(fwd: Callable[[Params, tuple], Tensor], params: Params, inp: tuple, y: Tensor, steps: int,
          create_graph: bool, detach: bool) -> Params:
    for _ in range(steps):
        loss = F.cross_entropy(fwd(params, inp), y)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph)
        params = {k: v - INNER_LR * g for (k, v), g in zip(params.items(), grads)}
        if detach:
            params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    return params


def run_mode(mode: str, model: nn.Module, fwd: Callable, inputs: list[tuple[tuple, Tensor, tuple, Tensor]]) -> None:
    """inputs: per task (support input, y_support, query input, y_query)."""
    model.zero_grad(set_to_none=True)
    theta = dict(model.named_parameters())
    for sup, ys, qry, yq in inputs:
        if mode == "eval":
            p0 = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
            fast = adapt(fwd, p0, sup, ys, EVAL_STEPS, False, True)
            with torch.no_grad():
                fwd(fast, qry)
        else:
            fast = adapt(fwd, theta, sup, ys, TRAIN_STEPS, mode == "second_order", False)
            (F.cross_entropy(fwd(fast, qry), yq) / len(inputs)).backward()


def dense_inputs(tasks) -> list:
    return [((t.x_support,), t.y_support, (t.x_query,), t.y_query) for t in tasks]


def pyg_inputs(tasks, m: int, prenorm: bool) -> list:
    return [(to_pyg(t.x_support, m, prenorm), t.y_support, to_pyg(t.x_query, m, prenorm), t.y_query)
            for t in tasks]


# ---- helpers --------------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summary(xs: list[float]) -> dict:
    q = np.percentile(np.asarray(xs), [25, 50, 75])
    return {"median": float(q[1]), "q25": float(q[0]), "q75": float(q[2]), "min": float(min(xs))}


def meta_grad(model: nn.Module, fwd: Callable, inputs: list) -> dict[str, Tensor]:
    run_mode("second_order", model, fwd, inputs)
    return {k: v.grad.detach().clone() for k, v in model.named_parameters()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-dir", default="/tmp/gnnbench/sc")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--meta-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--atol", type=float, default=1e-5)
    ap.add_argument("--out", default="benchmarks/out/gnn_backend.json")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.manual_seed(args.seed)

    data_dir = Path(args.data_dir)
    if not (data_dir / "meta.json").exists():
        print(f"preparing {DATASET} into {data_dir}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "metarepro", "prepare", "--dataset", DATASET, "--out", str(data_dir)],
                       check=True)
    episodes = datasets.episodes(DATASET, {}, str(data_dir), "train", WAYS, SHOTS, QUERIES, args.seed)
    n_batches = args.warmup + args.repeats
    batches = [[episodes.episode(r * args.meta_batch + k) for k in range(args.meta_batch)] for r in range(n_batches)]
    t0 = batches[0][0]
    m, width = t0.x_support.shape[1:]
    feats = width - m
    real_nodes = [int((torch.diagonal(t.x_support[..., :m], dim1=-2, dim2=-1) > 0).sum(-1).float().mean())
                  for b in batches for t in b]

    dense = GNN((m, width), WAYS, hidden=HIDDEN, kind="gcn")
    n_params = sum(p.numel() for p in dense.parameters())
    dense_fwd = lambda p, inp: functional_call(dense, p, inp)                      # noqa: E731
    backends: dict[str, tuple[nn.Module, Callable, Callable]] = {"dense": (dense, dense_fwd, dense_inputs)}
    check: dict = {}

    if torch_geometric is None:
        print("torch_geometric is not installed (pip install torch_geometric): timing the dense path only",
              file=sys.stderr)
    else:
        nm = name_map(len(HIDDEN))
        dense_sd = dense.state_dict()
        for name, prenorm in (("pyg", False), ("pyg_prenorm", True)):
            model = PygGCN(feats, HIDDEN, WAYS, prenorm)
            model.load_state_dict({nm[k]: v.clone() for k, v in dense_sd.items()})
            fwd = (lambda mod: (lambda p, inp: functional_call(mod, p, inp)))(model)
            conv = (lambda pn: (lambda tasks: pyg_inputs(tasks, m, pn)))(prenorm)
            backends[name] = (model, fwd, conv)

        # ---- agreement: logits and second-order meta-gradients --------------------------------------------------
        check_tasks = [t for b in batches[:2] for t in b]
        d_in = dense_inputs(check_tasks)
        d_grad = meta_grad(dense, dense_fwd, d_in[: args.meta_batch])
        gscale = max(float(g.abs().max()) for g in d_grad.values())
        for name in ("pyg", "pyg_prenorm"):
            model, fwd, conv = backends[name]
            p_in = conv(check_tasks)
            with torch.no_grad():
                diff = max(float((dense_fwd(dict(dense.named_parameters()), di[s])
                                  - fwd(dict(model.named_parameters()), pi[s])).abs().max())
                           for di, pi in zip(d_in, p_in) for s in (0, 2))
            p_grad = meta_grad(model, fwd, p_in[: args.meta_batch])
            gdiff = max(float((d_grad[k] - p_grad[nm[k]]).abs().max()) for k in d_grad)
            check[name] = {"logits_max_abs_diff": diff, "meta_grad_max_abs_diff": gdiff,
                           "meta_grad_max_abs": gscale}
            print(f"check {name}: logits max |diff| {diff:.2e}, second-order meta-grad max |diff| {gdiff:.2e} "
                  f"(max |grad| {gscale:.2e})", file=sys.stderr)
            if diff > args.atol:
                raise SystemExit(f"{name}: logits differ from the dense GNN by {diff:.3e} > {args.atol}")
            if gdiff > 1e-4 * gscale:
                raise SystemExit(f"{name}: meta-gradients differ from the dense GNN by {gdiff:.3e}")

    # ---- paired timing --------------------------------------------------------------------------------------
    names = list(backends)
    times = {mode: {n: [] for n in names} for mode in MODES}
    conv_times = {mode: {n: [] for n in names if n != "dense"} for mode in MODES}
    load_before = os.getloadavg()
    wall0 = time.perf_counter()
    for r in range(n_batches):
        tasks = batches[r]
        order = names[r % len(names):] + names[: r % len(names)]
        for mode in MODES:
            for n in order:
                model, fwd, conv = backends[n]
                s = time.perf_counter()
                inputs = conv(tasks)
                c = time.perf_counter()
                run_mode(mode, model, fwd, inputs)
                e = time.perf_counter()
                if r >= args.warmup:
                    times[mode][n].append((e - c) * 1e3)
                    if n != "dense":
                        conv_times[mode][n].append((c - s) * 1e3)
    wall = time.perf_counter() - wall0
    load_after = os.getloadavg()

    # ---- summaries --------------------------------------------------------------------------------------------
    results: dict = {}
    for mode in MODES:
        res = {"dense_ms": summary(times[mode]["dense"])}
        for n in names[1:]:
            comp = times[mode][n]
            total = [a + b for a, b in zip(comp, conv_times[mode][n])]
            res[f"{n}_compute_ms"] = summary(comp)
            res[f"{n}_conversion_ms"] = summary(conv_times[mode][n])
            res[f"{n}_total_ms"] = summary(total)
            res[f"ratio_{n}_compute_over_dense"] = summary([a / b for a, b in zip(comp, times[mode]["dense"])])
            res[f"ratio_{n}_total_over_dense"] = summary([a / b for a, b in zip(total, times[mode]["dense"])])
        results[mode] = res

    out = {
        "benchmark": "gnn_backend",
        "setting": {"dataset": DATASET, "ways": WAYS, "shots": SHOTS, "queries": QUERIES, "max_nodes": int(m),
                    "features": int(feats), "mean_real_nodes_per_subgraph": float(np.mean(real_nodes)),
                    "hidden": list(HIDDEN), "params": n_params, "meta_batch": args.meta_batch,
                    "inner_lr": INNER_LR, "train_inner_steps": TRAIN_STEPS, "eval_inner_steps": EVAL_STEPS,
                    "repeats": args.repeats, "warmup": args.warmup, "threads": args.threads,
                    "unit": "milliseconds per meta-batch", "seed": args.seed},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "torch_geometric": getattr(torch_geometric, "__version__", None),
                        "numpy": np.__version__, "cpu": cpu_model(), "cpu_count": os.cpu_count(),
                        "platform": platform.platform(),
                        "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                        "loadavg_before": list(load_before), "loadavg_after": list(load_after)},
        "check": check,
        "results": results,
        "raw_ms": {"compute": times, "conversion": conv_times},
        "timing_wall_s": wall,
    }
    if torch_geometric is not None:
        try:
            import torch_geometric.typing as tgt
            out["environment"]["pyg_extensions"] = {"pyg_lib": tgt.WITH_PYG_LIB,
                                                    "torch_scatter": tgt.WITH_TORCH_SCATTER,
                                                    "torch_sparse": tgt.WITH_TORCH_SPARSE}
        except Exception:                       # noqa: BLE001
            pass

    print(f"{'mode':13s} {'dense':>8s} " + " ".join(f"{n + ' ' + k:>20s}" for n in names[1:]
                                                     for k in ("compute", "conv", "total", "tot/dense")))
    for mode in MODES:
        res = results[mode]
        row = f"{mode:13s} {res['dense_ms']['median']:8.2f} "
        for n in names[1:]:
            cols = (f"{n}_compute_ms", f"{n}_conversion_ms", f"{n}_total_ms", f"ratio_{n}_total_over_dense")
            row += " ".join(f"{res[c]['median']:20.2f}" for c in cols) + " "
        print(row)
    print(f"(ms per meta-batch of {args.meta_batch} tasks, medians of {args.repeats} paired repeats; "
          f"load {load_before[0]:.1f} -> {load_after[0]:.1f})")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
