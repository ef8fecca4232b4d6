"""Complexity table (Markdown + CSV): parameters, meta-train time per iteration, adaptation time and
peak memory per method, as in PAMELA's complexity comparison with MAML (Rajasegaran et al. 2020).

Torch-free like the rest of the report stage. Reads, for each run directory, the eval.json written by
`metarepro evaluate` and the config.yaml (config + provenance) written by `metarepro metatrain`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..formats import CONFIG_FILE, EVAL_FILE
from ..cards import cards
from ..config import ADDON_KINDS, MethodName
from ..dataset_cards import REGRESSION
from ..utils import MetareproError, write_text_atomic
from ..stats import seed_mean_ci95
from .inputs import _is_number, load_eval, read_run_config
from .tables import render_csv as tables_render_csv
from .tables import (DASH, DATASET_LABELS, DATASET_ORDER, REFERENCE_METHOD, _join_unique, _pipe_table,
                     _sort_key_method, backbone_label, method_label, setting_label)

RUN_KEYS = ("dataset", "method", "ways", "shots", "seed")
EVAL_NUMBERS = ("parameters", "adapt_time_per_task_s", "peak_memory_mb")      # written by evaluate.py
PROVENANCE_NUMBERS = ("wall_time_s", "peak_memory_mb")                        # written by train.write_outputs
CSV_COLUMNS = [
    "dataset", "ways", "shots", "setting", "method", "method_label", "backbone", "profile", "seeds",
    "parameters", "meta_trained_parameters", "reference_method", "parameters_vs_reference",
    "parameters_vs_reference_pct", "paper_vs_maml", "metric",
    "test_mean", "test_ci95",
    "train_iterations", "train_wall_time_s", "train_s_per_iteration", "val_every", "val_episodes",
    "adapt_ms_per_task", "eval_episodes", "curve_episodes", "eval_inner_steps",
    "train_peak_memory_mb", "eval_peak_memory_mb", "eval_peak_gpu_memory_mb", "train_device", "eval_device"]


@dataclass(frozen=True)
class RunCost:
    """The complexity numbers of one run (one seed)."""
    run_dir: str
    dataset: str
    ways: int
    shots: int
    method: str
    seed: int
    backbone: str
    profile: str
    parameters: int
    iterations: int                # meta-iterations actually run (0: nothing was meta-trained)
    train_wall_time_s: float
    train_peak_memory_mb: float
    val_every: Any
    val_episodes: Any
    adapt_time_per_task_s: float
    eval_episodes: Any
    curve_episodes: Any
    eval_inner_steps: Any
    eval_peak_memory_mb: float
    eval_peak_gpu_memory_mb: float | None
    train_device: str
    eval_device: str
    metric: str = "accuracy"
    meta_trained_parameters: int | None = None   # + the add-ons' own parameters (CML's co-learner); None: unknown
    test_mean: float = float("nan")     # the run's test score (eval.json mean), for parameters against accuracy

    @property
    def s_per_iteration(self) -> float | None:
        return self.train_wall_time_s / self.iterations if self.iterations > 0 else None


def _load_run_config(path: Path) -> dict:
    """config.yaml of a finished training job, checked; any problem raises MetareproError naming the file."""
    cfg = read_run_config(path)
    if not isinstance(cfg, dict):
        raise MetareproError(f"run config {path} is malformed: expected a mapping, got {type(cfg).__name__}")
    problems = [f"missing key '{k}'" for k in RUN_KEYS if k not in cfg]
    train, prov = cfg.get("train"), cfg.get("provenance")
    if not (isinstance(train, dict) and _is_number(train.get("iterations"))):
        problems.append("missing number 'train.iterations'")
    if not isinstance(prov, dict):
        problems.append("missing 'provenance' (written by `metarepro metatrain` when the job finishes)")
    else:
        problems += [f"missing number 'provenance.{k}'" for k in PROVENANCE_NUMBERS if not _is_number(prov.get(k))]
    if problems:
        raise MetareproError(f"run config {path} is malformed: " + "; ".join(problems))
    return cfg


def _iterations(cfg: dict) -> int:
    """Meta-iterations the job actually ran. config.yaml keeps the configured `train.iterations`, but
    train.py skips the loop for methods with nothing to meta-train and then records best_iteration 0
    (a trained run's best checkpoint is at iteration >= 1)."""
    prov = cfg["provenance"]
    if _is_number(prov.get("iterations")):
        return int(prov["iterations"])
    if prov.get("best_iteration") == 0:
        return 0
    return int(cfg["train"]["iterations"])


def load_run_cost(run_dir: str | os.PathLike) -> RunCost:
    run_dir = Path(run_dir)
    ev = load_eval(run_dir / EVAL_FILE)
    cfg_path = run_dir / CONFIG_FILE
    cfg = _load_run_config(cfg_path)
    missing = [k for k in EVAL_NUMBERS if not _is_number(ev.get(k))]
    if missing:
        raise MetareproError(f"evaluation file {ev['_path']} is malformed: missing number(s) {missing} "
                             "(re-run `metarepro evaluate` for this run)")
    mismatch = [k for k in RUN_KEYS if str(ev["run"][k]) != str(cfg[k])]
    if mismatch:
        raise MetareproError(f"{ev['_path']} and {cfg_path} describe different runs (they differ in {mismatch})")
    prov, evaluation = cfg["provenance"], cfg.get("evaluation") or {}
    gpu = ev.get("peak_gpu_memory_mb")
    return RunCost(
        run_dir=str(run_dir), dataset=str(cfg["dataset"]), ways=int(cfg["ways"]), shots=int(cfg["shots"]),
        method=str(cfg["method"]), seed=int(cfg["seed"]), backbone=backbone_label(cfg),
        profile=str(cfg.get("profile", "unknown")), parameters=int(ev["parameters"]), iterations=_iterations(cfg),
        train_wall_time_s=float(prov["wall_time_s"]), train_peak_memory_mb=float(prov["peak_memory_mb"]),
        val_every=cfg["train"].get("val_every", ""), val_episodes=cfg["train"].get("val_episodes", ""),
        adapt_time_per_task_s=float(ev["adapt_time_per_task_s"]), eval_episodes=ev.get("episodes", ""),
        curve_episodes=ev.get("curve_episodes", evaluation.get("curve_episodes", ev.get("episodes", ""))),
        eval_inner_steps=ev.get("inner_steps", ""), eval_peak_memory_mb=float(ev["peak_memory_mb"]),
        eval_peak_gpu_memory_mb=float(gpu) if _is_number(gpu) else None,
        train_device=str(prov.get("device", "")), eval_device=str(ev.get("device", "")),
        metric=str(ev.get("metric", "accuracy")),
        test_mean=float(ev["mean"]) if _is_number(ev.get("mean")) else float("nan"),
        meta_trained_parameters=_meta_trained_parameters(ev, str(cfg["method"])))


def _meta_trained_parameters(ev: dict, method: str) -> int | None:
    """eval.json's `meta_trained_parameters`; for an evaluation written before it existed, `parameters` when the
    method has no outer-loss term of its own (nothing is dropped at test), else unknown (None)."""
    if _is_number(ev.get("meta_trained_parameters")):
        return int(ev["meta_trained_parameters"])
    terms = [a for a in MethodName.parse(method).addons if ADDON_KINDS.get(a) == "term"]
    return None if terms else int(ev["parameters"])


# ----------------------------------------------------------------------------- rows

def _mean(values: Sequence[float | None]) -> float | None:
    """Mean over seeds; None when any seed lacks the value (e.g. 0 meta-iterations)."""
    if not values or any(v is None for v in values):
        return None
    return float(sum(values) / len(values))


def _parameters(cs: Sequence[RunCost]) -> float:
    """The seeds' parameter count: the same for every seed of a method, else their mean."""
    counts = {c.parameters for c in cs}
    return counts.pop() if len(counts) == 1 else float(sum(c.parameters for c in cs) / len(cs))


def _test_score(cs: Sequence[RunCost]) -> dict:
    """The test score beside the costs: one seed's mean with its episode CI is in the main table; here the mean
    (over seeds: the mean of the seeds' means, CI over seeds as in the main tables)."""
    means = [c.test_mean for c in cs]
    if len(means) == 1:
        return {"test_mean": means[0], "test_ci95": None}
    m, ci = seed_mean_ci95(means)
    return {"test_mean": m, "test_ci95": ci}


def build_rows(costs: Sequence[RunCost]) -> list[dict]:
    """One dict per (dataset, ways, shots, method), CSV_COLUMNS keys, means over seeds, sorted as the
    main tables. The reference is MAML in the same setting and backbone: the `maml` run if the report has
    one, else a variant labelled "MAML" (e.g. `pamela@maml`, MAML in PAMELA's code)."""
    groups: dict[tuple, list[RunCost]] = {}
    for c in costs:
        groups.setdefault((c.dataset, c.ways, c.shots, c.method), []).append(c)
    for key, cs in groups.items():
        seeds = [c.seed for c in cs]
        if len(set(seeds)) != len(seeds):
            raise MetareproError(f"the same run ({key[0]}, {key[3]}, {key[1]}-way {key[2]}-shot) appears more "
                                 f"than once for one seed: {', '.join(c.run_dir for c in cs)}")
    rows = []
    for (dataset, ways, shots, method), cs in groups.items():
        cs = sorted(cs, key=lambda c: c.seed)
        gpu = [c.eval_peak_gpu_memory_mb for c in cs]
        rows.append({
            "dataset": dataset, "ways": "" if dataset in REGRESSION else ways, "shots": shots,
            "setting": setting_label(dataset, ways, shots), "method": method, "method_label": method_label(method),
            "paper_vs_maml": _paper_ratio(method),
            "backbone": _join_unique(c.backbone for c in cs), "profile": _join_unique(c.profile for c in cs),
            "seeds": " ".join(str(c.seed) for c in cs), "parameters": _parameters(cs),
            "meta_trained_parameters": _mean([c.meta_trained_parameters for c in cs]),
            "metric": _join_unique(c.metric for c in cs), **_test_score(cs),
            "train_iterations": _join_unique(c.iterations for c in cs),
            "train_wall_time_s": _mean([c.train_wall_time_s for c in cs]),
            "train_s_per_iteration": _mean([c.s_per_iteration for c in cs]),
            "val_every": _join_unique(c.val_every for c in cs), "val_episodes": _join_unique(c.val_episodes for c in cs),
            "adapt_ms_per_task": _mean([1000.0 * c.adapt_time_per_task_s for c in cs]),
            "eval_episodes": _join_unique(c.eval_episodes for c in cs),
            "curve_episodes": _join_unique(c.curve_episodes for c in cs),
            "eval_inner_steps": _join_unique(c.eval_inner_steps for c in cs),
            "train_peak_memory_mb": _mean([c.train_peak_memory_mb for c in cs]),
            "eval_peak_memory_mb": _mean([c.eval_peak_memory_mb for c in cs]),
            "eval_peak_gpu_memory_mb": _mean(gpu) if any(g is not None for g in gpu) else None,
            "train_device": _join_unique(c.train_device for c in cs if c.train_device),
            "eval_device": _join_unique(c.eval_device for c in cs if c.eval_device),
            "_key": (dataset, ways, shots, _join_unique(c.backbone for c in cs)),
        })
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    rows.sort(key=lambda r: (order.get(r["dataset"], len(order)), r["dataset"], r["_key"][1], r["shots"],
                             _sort_key_method(r["method"])))
    refs = {r["_key"]: r for r in rows if r["method"] == REFERENCE_METHOD}
    for r in rows:   # no `maml` run in that setting: the first variant labelled "MAML"
        if r["method_label"] == "MAML":
            refs.setdefault(r["_key"], r)
    for r in rows:
        ref = refs.get(r["_key"])
        r["_is_ref"] = ref is r
        r["reference_method"] = ref["method"] if ref else ""
        if ref and ref["parameters"]:
            r["parameters_vs_reference"] = r["parameters"] - ref["parameters"]
            r["parameters_vs_reference_pct"] = 100.0 * (r["parameters"] - ref["parameters"]) / ref["parameters"]
        else:
            r["parameters_vs_reference"] = r["parameters_vs_reference_pct"] = None
    rows.sort(key=lambda r: (order.get(r["dataset"], len(order)), r["dataset"], r["_key"][1], r["shots"],
                             not r["_is_ref"]))   # stable: the reference leads its setting
    return rows


# ----------------------------------------------------------------------------- rendering

def _fmt(x: float | None, nd: int) -> str:
    return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:,.{nd}f}"


def _fmt_params(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.1f}"


def fmt_ratio(pct: float | None, delta: float | None) -> str:
    """"+12.34% (+4,000)"; differences too small for two decimals show as "<+0.01%" (with the count)."""
    if pct is None or delta is None:
        return DASH
    if pct != 0 and abs(pct) < 0.005:
        text = f"<{'+' if pct > 0 else '−'}0.01%"
    else:
        text = f"{pct:+.2f}%"
    return f"{text} ({delta:+,.0f})"


def _paper_ratio(method: str) -> str:
    """The paper's parameters vs MAML (its method card's `paper_parameters`) for the plain method or an add-on run
    on it; variants (`@tag`) change the switches it counts, so they get none."""
    name = MethodName.parse(method)
    if name.tag or name.base not in cards():
        return ""
    return cards()[name.base].paper_parameters.get("vs_maml", "")


HEADER = ["Dataset", "Setting", "Method", "Backbone", "Parameters", "vs MAML", "Paper: vs MAML", "Meta-trained parameters", "Test score",
          "Meta-train s / iteration",
          "Adaptation ms / task", "Test inner steps", "Train peak memory (MB)", "Eval peak memory (MB)", "Eval device"]


def _md_cells(r: dict) -> list[str]:
    ratio = "reference" if r["_is_ref"] else fmt_ratio(r["parameters_vs_reference_pct"], r["parameters_vs_reference"])
    if r["_is_ref"] and r["method"] != REFERENCE_METHOD:
        ratio = f"reference ({r['method']})"
    return [DATASET_LABELS.get(r["dataset"], r["dataset"]), r["setting"], r["method_label"], r["backbone"],
            _fmt_params(r["parameters"]), ratio, r["paper_vs_maml"] or DASH,
            DASH if r["meta_trained_parameters"] is None else _fmt_params(r["meta_trained_parameters"]),
            _fmt_score(r), _fmt(r["train_s_per_iteration"], 3),
            _fmt(r["adapt_ms_per_task"], 1), _fmt_steps(r["eval_inner_steps"]),
            _fmt(r["train_peak_memory_mb"], 0), _fmt(r["eval_peak_memory_mb"], 0), r["eval_device"] or DASH]


def _fmt_steps(steps: Any) -> str:
    """The test-time inner steps behind `Adaptation ms / task` (several values when seeds differ)."""
    return DASH if steps in (None, "") else str(steps)


def _fmt_score(r: dict) -> str:
    if r["test_mean"] is None or math.isnan(r["test_mean"]):
        return DASH
    nd = 2 if r["metric"] == "accuracy" else 3
    unit = "%" if r["metric"] == "accuracy" else " MSE"
    text = f"{r['test_mean']:.{nd}f}{unit}"
    return text + (f" ± {r['test_ci95']:.{nd}f}" if r.get("test_ci95") is not None else "")


def render_markdown(title: str, rows: list[dict]) -> str:
    parts = [f"# {title}", ""]
    if rows:
        parts += [_pipe_table(HEADER, [_md_cells(r) for r in rows]), ""]
    else:
        parts += ["_No runs were given._", ""]
    profiles = _join_unique(p for r in rows for p in r["profile"].split(", "))
    devices = _join_unique(d for r in rows for d in r["eval_device"].split(", ") if d) or "unknown"
    multi = any(" " in r["seeds"] for r in rows)
    parts += [
        "## Notes", "",
        "- **Machine-independent:** `Parameters` is every parameter of the meta-learner (all meta-learned "
        "parameters: network initialisation plus each method's own, e.g. PAMELA's Q_j and P^w, Meta-SGD's "
        "learning rates), from eval.json `parameters`. `vs MAML` is the difference to MAML in the same dataset, "
        "setting and backbone (the `maml` run, else the variant labelled MAML, e.g. `pamela@maml`), in percent "
        "and in parameters; `—` when the report has no such MAML run. `Meta-trained parameters` adds what "
        "meta-training learns beyond the inference model, the add-ons' own parameters (CML's co-learner, dropped "
        "at test), from eval.json `meta_trained_parameters`: the count to hold parameter-matched controls to.",
        "- **Paper: vs MAML** is the parameter ratio to MAML that the method's paper states or defines, on the "
        "paper's backbone (method card `paper_parameters`; `—` where the paper gives none): "
        + "; ".join(f"{c.label} {c.paper_parameters['vs_maml']} ({c.paper_parameters['source']})"
                    for c in cards().values() if c.paper_parameters) + ".",
        "- **Machine-dependent:** the times and memory come from whatever machine ran each job (eval.json "
        f"`device`; here: {devices}) and are comparable only between rows run on the same machine. "
        "`Meta-train s / iteration` = the training job's wall time (config.yaml `provenance.wall_time_s`, summed "
        "over resumed segments) / the meta-iterations it ran; it includes the periodic validation (every "
        "`val_every` iterations on `val_episodes` episodes, see the CSV) and checkpoint writes; `—` for methods "
        "with nothing to meta-train (0 iterations). `Adaptation ms / task` = evaluation wall time / test episodes "
        "(eval.json `adapt_time_per_task_s`): the inner loop on the support set (`Test inner steps` gradient "
        "steps; 0 for closed-form and metric methods) plus scoring the query set once, "
        "and, on the first `curve_episodes` episodes (CSV), scoring after every inner step; it also includes "
        "building each episode. `Train/Eval peak memory` is the job's peak resident host memory (ru_maxrss: "
        "Python, libraries and data included), not GPU memory; GPU peaks of evaluation, where recorded, are in "
        "the CSV (`eval_peak_gpu_memory_mb`).",
        "- **Test score** is the run's test mean (accuracy % or MSE; its 95% CI and paired tests are in the main "
        "table), so that parameters can be read against accuracy, e.g. for CML's parameter-matched controls.",
        f"- **Seeds.** {'Values are means over the seeds listed in the CSV.' if multi else 'One seed per row.'} "
        f"Produced by config profile(s) **{profiles or '?'}**.",
    ]
    return "\n".join(parts) + "\n"


def render_csv(rows: list[dict]) -> str:
    return tables_render_csv(rows, CSV_COLUMNS)


def make_complexity_table(run_dirs: Sequence[str | os.PathLike], out_md: str | os.PathLike,
                          title: str) -> tuple[Path, Path]:
    """Write `out_md` and the CSV beside it (same stem); return both paths."""
    out_md = Path(out_md)
    if out_md.suffix != ".md":
        raise MetareproError(f"table output {out_md} must end in .md (the CSV is written beside it)")
    if not run_dirs:
        raise MetareproError("the complexity table needs at least one run directory")
    rows = build_rows([load_run_cost(d) for d in run_dirs])
    out_csv = out_md.with_suffix(".csv")
    write_text_atomic(out_csv, render_csv(rows))
    write_text_atomic(out_md, render_markdown(title, rows))
    return out_md, out_csv
