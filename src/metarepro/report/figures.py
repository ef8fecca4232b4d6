"""Report figures: meta-training curves, score vs inner steps, sinusoid fits (Finn et al. 2017, Fig. 2),
Meta-LSTM gate values (Ravi & Larochelle 2017, Fig. 2) and inner-loss variance over meta-training
(Rajasegaran et al. 2020, PAMELA vs MAML).

Torch-free; matplotlib runs headless (Agg). Each PNG records the config profile(s) of its inputs
in its metadata (key "metarepro-profile") so that `report index` can say which profile made it.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")  # headless: Snakemake jobs have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..dataset_cards import REGRESSION  # noqa: E402
from ..formats import CONFIG_FILE, TRAIN_LOG, TRAIN_LOG_PLOTTED  # noqa: E402
from ..utils import MetareproError, atomic_path  # noqa: E402
from .tables import (DATASET_LABELS, DATASET_ORDER, Group, aggregate, load_eval, load_paper_results,  # noqa: E402
                     match_paper, method_label, read_run_config, run_setup, setting_label, setup_differences)

log = logging.getLogger("metarepro.report")

DPI = 150
PROFILE_KEY = "metarepro-profile"
TRAIN_LOG_COLUMNS = TRAIN_LOG_PLOTTED   # of train_log.csv (metarepro.formats)
# filled on validation rows only: mean over the validation episodes of the support loss after the inner
# loop, and its variance across those episodes (older logs lack them)
INNER_LOSS_COLUMNS = ("val_inner_loss", "val_inner_loss_var")
MAX_FIT_PANELS = 5          # tasks per row in the sinusoid figure; more become unreadable


def _metric_label(metric: str, prefix: str = "") -> str:
    text = "accuracy (%)" if metric == "accuracy" else "MSE"
    return f"{prefix} {text}".strip()


def _save(fig, out: str | os.PathLike, profiles: Sequence[str]) -> Path:
    out = Path(out)
    if out.suffix.lower() != ".png":
        raise MetareproError(f"figure output {out} must end in .png")
    meta = {PROFILE_KEY: ", ".join(dict.fromkeys(profiles)) or "unknown", "Software": "metarepro report"}
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png", bbox_inches="tight", metadata=meta)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- curves

def load_run_dir(run_dir: str | os.PathLike) -> tuple[dict, pd.DataFrame]:
    run_dir = Path(run_dir)
    cfg_path, log_path = run_dir / CONFIG_FILE, run_dir / TRAIN_LOG
    cfg = read_run_config(cfg_path)
    if not isinstance(cfg, dict) or not all(k in cfg for k in ("dataset", "method", "ways", "shots", "seed")):
        raise MetareproError(f"run config {cfg_path} is malformed: needs dataset, method, ways, shots, seed")
    try:
        log = pd.read_csv(log_path)
    except OSError as exc:
        raise MetareproError(f"cannot read training log {log_path}: {exc.strerror or exc}") from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise MetareproError(f"training log {log_path} is not a readable CSV: {exc}") from exc
    missing = [c for c in TRAIN_LOG_COLUMNS if c not in log.columns]
    if missing:
        raise MetareproError(f"training log {log_path} lacks columns {missing}; has {list(log.columns)}")
    for c in TRAIN_LOG_COLUMNS:
        log[c] = pd.to_numeric(log[c], errors="coerce")
    return cfg, log


def _run_label(cfg: dict) -> str:
    return (f"{method_label(str(cfg['method']))}, {setting_label(cfg['dataset'], cfg['ways'], cfg['shots'])}, "
            f"seed {cfg['seed']}")


def figure_curves(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike,
                  paper: str | os.PathLike | None = None) -> Path:
    """Meta-training loss and validation metric vs iteration; one row per dataset and setting (1-shot and 5-shot
    apart), one line per run, one colour per method across the figure, one legend per row beside its panels. With
    `paper` (config/paper_results.csv), each run's published test number is a dashed line in the run's colour on the
    validation panel (matched as in the tables: dataset, ways, shots, metric, method label, and only where the
    setup is the same). Runs with neither a
    training loss nor a validation score are left out; a run with no meta-training but a validation of its initial
    weights (e.g. MTL's theta only) is one point at iteration 0."""
    runs = [load_run_dir(d) for d in run_dirs]
    published = load_paper_results(paper) if paper else []
    if not runs:
        raise MetareproError("figure --kind curves needs at least one run directory")
    runs = [(c, log) for c, log in runs if log["meta_loss"].notna().any() or log["val_mean"].notna().any()] or runs
    order = DATASET_ORDER + sorted({c["dataset"] for c, _ in runs})
    rows = sorted({(c["dataset"], int(c["ways"]), int(c["shots"])) for c, _ in runs},
                  key=lambda k: (order.index(k[0]), k[1], k[2]))
    methods = list(dict.fromkeys(str(c["method"]) for c, _ in runs))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    sns.set_theme(style="whitegrid", context="notebook")
    # a third, blank column per row holds that row's legend, so long method lists never cover the curves
    fig, axes = plt.subplots(len(rows), 3, figsize=(17, 3.8 * len(rows)), squeeze=False,
                             gridspec_kw={"width_ratios": [1.0, 1.0, 0.8]})
    for (ds, ways, shots), (ax_loss, ax_val, ax_legend) in zip(rows, axes):
        metric = "mse" if ds in REGRESSION else "accuracy"
        these = [(c, log) for c, log in runs if (c["dataset"], int(c["ways"]), int(c["shots"])) == (ds, ways, shots)]
        several = {m for m in methods if sum(str(c["method"]) == m for c, _ in these) > 1}
        for cfg, log in these:
            method = str(cfg["method"])
            color = palette[method]
            label = method_label(method) + (f", seed {cfg['seed']}" if method in several else "")
            tr = log.dropna(subset=["meta_loss"])
            if len(tr):
                window = max(1, len(tr) // 50)
                smooth = tr["meta_loss"].rolling(window, min_periods=1).mean()
                ax_loss.plot(tr["iteration"], tr["meta_loss"], color=color, alpha=0.2, linewidth=0.8)
                ax_loss.plot(tr["iteration"], smooth, color=color, linewidth=1.6, label=label)
            val = log.dropna(subset=["val_mean"])
            if len(val):
                ax_val.plot(val["iteration"], val["val_mean"], color=color, marker="o", linewidth=1.6, label=label)
                ci = val["val_ci95"].fillna(0.0)
                ax_val.fill_between(val["iteration"], val["val_mean"] - ci, val["val_mean"] + ci,
                                    color=color, alpha=0.2)
            seen = set()
            for p in match_paper(Group(ds, ways, shots, method, metric, []), published):
                if setup_differences(run_setup({"run": cfg}), p):
                    continue        # another setup (backbone, image size, dataset variant, training shots)
                if p.value not in seen:
                    seen.add(p.value)
                    ax_val.axhline(p.value, color=color, linestyle="--", linewidth=1.2,
                                   label=f"{method_label(method)}: published {p.value_text} ({p.paper})")
        name = f"{DATASET_LABELS.get(ds, ds)} {setting_label(ds, ways, shots)}"
        ax_loss.set(title=f"{name}: meta-training loss", xlabel="meta-iteration", ylabel="meta loss (query set)")
        ax_val.set(title=f"{name}: validation", xlabel="meta-iteration", ylabel=_metric_label(metric, "validation"))
        handles: dict[str, Any] = {}
        for ax in (ax_loss, ax_val):
            for h, lab in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(lab, h)
        ax_legend.axis("off")
        if handles:
            ax_legend.legend(handles.values(), handles.keys(), fontsize="small", loc="center left", frameon=False)
    fig.suptitle("Meta-training curves: loss (faint: raw, solid: moving average), validation (mean ± 95% CI)"
                 + ("; dashed: published test score" if published else ""), fontsize="large")
    fig.tight_layout()
    return _save(fig, out, [str(c.get("profile", "unknown")) for c, _ in runs])


# ----------------------------------------------------------------------------- inner-loss variance

def _inner_loss_rows(run_dir: str | os.PathLike, log_df: pd.DataFrame) -> pd.DataFrame:
    """The validation rows that carry the inner-loss statistics; an error naming the log if there are none."""
    path = Path(run_dir) / TRAIN_LOG
    missing = [c for c in INNER_LOSS_COLUMNS if c not in log_df.columns]
    if missing:
        raise MetareproError(f"training log {path} lacks columns {missing} (written by training since the inner-loss "
                             f"statistics were added; re-run meta-training for this run); has {list(log_df.columns)}")
    log_df = log_df.copy()
    for c in INNER_LOSS_COLUMNS:
        log_df[c] = pd.to_numeric(log_df[c], errors="coerce")
    rows = log_df.dropna(subset=["val_inner_loss_var"])
    if rows.empty:
        raise MetareproError(f"training log {path} has no filled 'val_inner_loss_var' value (it is filled on "
                             "validation rows only)")
    return rows


def figure_loss_variance(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Variance across validation episodes of the support loss after the inner loop, and the validation score,
    vs meta-iteration (PAMELA vs MAML, Rajasegaran et al. 2020); one row per dataset/setting, one line per run.
    Runs with 0 meta-iterations (baselines) have no curve and are skipped."""
    runs = []
    for d in run_dirs:
        cfg, log_df = load_run_dir(d)
        if not (log_df["iteration"] > 0).any():
            log.info("loss_variance: skipping %s (%s): no meta-training iterations", d, _run_label(cfg))
            continue
        runs.append((cfg, _inner_loss_rows(d, log_df)))
    if not runs:
        raise MetareproError("figure --kind loss_variance needs at least one meta-trained run directory "
                             f"(given: {', '.join(map(str, run_dirs)) or 'none'})")
    order = DATASET_ORDER + sorted({c["dataset"] for c, _ in runs})
    settings = sorted({(c["dataset"], int(c["ways"]), int(c["shots"])) for c, _ in runs},
                      key=lambda k: (order.index(k[0]), k[1], k[2]))
    methods = list(dict.fromkeys(str(c["method"]) for c, _ in runs))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods))))   # one color per method
    styles = ["-", "--", ":", "-."]                                                # seeds of one method
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(len(settings), 2, figsize=(12, 4 * len(settings)), squeeze=False)
    for (ds, ways, shots), (ax_var, ax_val) in zip(settings, axes):
        these = [(c, v) for c, v in runs if (c["dataset"], int(c["ways"]), int(c["shots"])) == (ds, ways, shots)]
        lines_of: dict[str, int] = {}
        for cfg, val in these:
            method = str(cfg["method"])
            style = styles[lines_of.get(method, 0) % len(styles)]
            lines_of[method] = lines_of.get(method, 0) + 1
            kw = dict(color=palette[method], linestyle=style, marker="o", markersize=3, linewidth=1.6,
                      label=_run_label(cfg))
            ax_var.plot(val["iteration"], val["val_inner_loss_var"], **kw)
            score = val.dropna(subset=["val_mean"])
            ax_val.plot(score["iteration"], score["val_mean"], **kw)
        variances = pd.concat([v["val_inner_loss_var"] for _, v in these])
        if (variances > 0).all():
            ax_var.set_yscale("log")
        title = f"{DATASET_LABELS.get(ds, ds)} {setting_label(ds, ways, shots)}"
        ax_var.set(title=f"{title}: inner-loss variance across validation tasks", xlabel="meta-iteration",
                   ylabel="support-loss variance after the inner loop")
        ax_val.set(title=f"{title}: validation", xlabel="meta-iteration",
                   ylabel=_metric_label("mse" if ds in REGRESSION else "accuracy", "validation"))
        for ax in (ax_var, ax_val):
            ax.legend(fontsize="small")
    fig.suptitle("Inner-loss variance and validation score during meta-training", fontsize="x-large")
    fig.tight_layout()
    return _save(fig, out, [str(c.get("profile", "unknown")) for c, _ in runs])


# ----------------------------------------------------------------------------- inner steps

def figure_inner_steps(eval_paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Test metric (mean ± 95% CI band) vs number of inner steps; one panel per dataset/setting."""
    evals = [load_eval(p) for p in eval_paths]
    for ev in evals:
        if not ev.get("by_step"):
            raise MetareproError(f"evaluation file {ev['_path']} has no 'by_step' scores to plot")
    groups = aggregate(evals)
    panels: dict[tuple, list] = {}
    for g in groups:
        panels.setdefault((g.dataset, g.ways, g.shots), []).append(g)
    methods = list(dict.fromkeys(g.method for g in groups))
    palette = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    sns.set_theme(style="whitegrid", context="notebook")
    ncol = min(3, len(panels))
    nrow = math.ceil(len(panels) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.5 * ncol, 4.2 * nrow), squeeze=False)
    for ax, ((ds, ways, shots), gs) in zip(axes.flat, panels.items()):
        last = max((max(g.by_step) for g in gs), default=0) or 1
        for g in gs:
            steps = sorted(g.by_step)
            mean = np.array([g.by_step[s][0] for s in steps])
            ci = np.nan_to_num(np.array([g.by_step[s][1] for s in steps], dtype=float))
            seeds = f"{len(g.evals)} seed{'s' if len(g.evals) > 1 else ''}"
            if steps == [0]:
                # no inner steps (a closed-form solve such as I-AMFS's, or a metric method): a dashed level
                # across the panel, so it reads against the stepped methods at every step count
                ax.hlines(mean[0], 0, last, colors=[palette[g.method]], linestyles="--",
                          label=f"{g.label} ({seeds}; no inner steps)")
                ax.fill_between([0, last], mean[0] - ci[0], mean[0] + ci[0], color=palette[g.method], alpha=0.12)
                continue
            sns.lineplot(x=steps, y=mean, ax=ax, marker="o", color=palette[g.method], label=f"{g.label} ({seeds})",
                         errorbar=None)
            ax.fill_between(steps, mean - ci, mean + ci, color=palette[g.method], alpha=0.2)
        metric = gs[0].metric
        ax.set(title=f"{DATASET_LABELS.get(ds, ds)} {setting_label(ds, ways, shots)}",
               xlabel="inner gradient steps at test time", ylabel=_metric_label(metric, "test"))
        if metric == "mse":
            ax.set_yscale("log")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    fig.suptitle("Test score vs inner steps (mean ± 95% CI)", fontsize="x-large")
    fig.tight_layout()
    return _save(fig, out, [str(e["run"].get("profile", "unknown")) for e in evals])


# ----------------------------------------------------------------------------- sinusoid fits

def _check_fits(ev: dict) -> list[dict]:
    fits = ev.get("fits")
    if not isinstance(fits, list) or not fits:
        raise MetareproError(f"evaluation file {ev['_path']} has no 'fits' (only sinusoid evaluations record them)")
    for i, f in enumerate(fits):
        ok = isinstance(f, dict) and all(k in f for k in ("x_support", "y_support", "x_grid", "y_true", "y_pred"))
        ok = ok and isinstance(f["y_pred"], dict) and len(f["x_grid"]) == len(f["y_true"]) \
            and all(len(v) == len(f["x_grid"]) for v in f["y_pred"].values()) \
            and len(f["x_support"]) == len(f["y_support"])
        if not ok:
            raise MetareproError(f"evaluation file {ev['_path']} is malformed: fits[{i}] needs x_support, "
                                 f"y_support, x_grid, y_true and y_pred {{step: values on x_grid}} of equal lengths")
    return fits


def figure_sinusoid_fits(eval_paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Finn et al. 2017 Fig. 2: ground truth, support points, and predictions before and after
    inner steps; one panel per fixed task, one row per method (the lowest seed of each)."""
    evals = [load_eval(p) for p in eval_paths]
    if not evals:
        raise MetareproError("figure --kind sinusoid_fits needs at least one eval.json")
    rows = []
    for g in aggregate(evals):
        ev = g.evals[0]
        rows.append((g, ev, _check_fits(ev)[:MAX_FIT_PANELS]))
    ncol = max(len(f) for _, _, f in rows)
    all_steps = sorted({int(s) for _, _, fits in rows for f in fits for s in f["y_pred"]})
    colors = dict(zip(all_steps, sns.color_palette("viridis", len(all_steps))))
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(len(rows), ncol, figsize=(4.2 * ncol, 3.4 * len(rows)), squeeze=False,
                             sharey="row")
    for r, (g, ev, fits) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r, c]
            if c >= len(fits):
                ax.set_visible(False)
                continue
            f = fits[c]
            ax.plot(f["x_grid"], f["y_true"], color="crimson", linewidth=2, label="ground truth")
            for step in sorted(f["y_pred"], key=int):
                s = int(step)
                ax.plot(f["x_grid"], f["y_pred"][step], color=colors[s], linestyle="--" if s == 0 else "-",
                        linewidth=1.5, label="pre-update" if s == 0 else f"after {s} step{'s' if s > 1 else ''}")
            ax.scatter(f["x_support"], f["y_support"], marker="^", s=50, color="black", zorder=5,
                       label=f"{len(f['x_support'])} support points")
            task = ", ".join(f"{k} {f[k]:.2f}" for k in ("amplitude", "phase") if isinstance(f.get(k), (int, float)))
            ax.set_title(f"{g.label} ({g.shots}-shot, seed {ev['run']['seed']})" + (f"\n{task}" if task else ""),
                         fontsize="medium")
            ax.set_xlabel("x")
            if c == 0:
                ax.set_ylabel("y")
        handles, labels = axes[r, 0].get_legend_handles_labels()
        axes[r, len(fits) - 1].legend(handles, labels, fontsize="small", loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle("Sinusoid regression: fits before and after inner gradient steps", fontsize="x-large")
    fig.tight_layout()
    return _save(fig, out, [str(e["run"].get("profile", "unknown")) for e in evals])


# ----------------------------------------------------------------------------- Meta-LSTM gates

GATES = (("input", "input gate σ(i_t): the learned learning rate"),
         ("forget", "forget gate σ(f_t): the learned shrinkage"))


def _check_gates(ev: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """eval.json "gates" -> {gate: (mean (steps,), ci95 (steps,))}; a missing or malformed entry names the file."""
    gates = ev.get("gates")
    if not isinstance(gates, dict):
        raise MetareproError(f"evaluation file {ev['_path']} has no 'gates' (only Meta-LSTM evaluations record "
                             "them; re-run its evaluation if it predates them)")
    out = {}
    for gate, _ in GATES:
        g = gates.get(gate)
        ok = isinstance(g, dict) and isinstance(g.get("mean"), list) and isinstance(g.get("ci95"), list) \
            and len(g["mean"]) == len(g["ci95"]) > 0
        if not ok:
            raise MetareproError(f"evaluation file {ev['_path']} is malformed: gates.{gate} needs 'mean' and "
                                 "'ci95' lists of equal, non-zero length (one value per inner step)")
        out[gate] = (np.asarray(g["mean"], dtype=float), np.nan_to_num(np.asarray(g["ci95"], dtype=float)))
    return out


def figure_gates(eval_paths: Sequence[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Ravi & Larochelle 2017 Fig. 2: Meta-LSTM's input and forget gate values (mean over all parameter
    coordinates, then mean ± 95% CI over the curve episodes) vs inner step; one line per run (e.g. 1- vs 5-shot)."""
    evals = [load_eval(p) for p in eval_paths]
    if not evals:
        raise MetareproError("figure --kind gates needs at least one eval.json of a Meta-LSTM run")
    runs = [(ev, _check_gates(ev)) for ev in evals]
    runs.sort(key=lambda r: ((DATASET_ORDER + [r[0]["run"]["dataset"]]).index(r[0]["run"]["dataset"]),
                             r[0]["run"]["shots"], r[0]["run"]["seed"], str(r[0]["run"]["method"])))
    settings = [(ev["run"]["dataset"], ev["run"]["shots"]) for ev, _ in runs]
    palette = sns.color_palette("colorblind", len(runs))
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, len(GATES), figsize=(6 * len(GATES), 4.2), squeeze=False)
    for (ev, gates), color in zip(runs, palette):
        r = ev["run"]
        label = f"{r['shots']}-shot, {DATASET_LABELS.get(r['dataset'], r['dataset'])}"
        if settings.count((r["dataset"], r["shots"])) > 1:        # several seeds or variants of one setting
            label += f", {method_label(str(r['method']))}, seed {r['seed']}"
        episodes = ev["gates"].get("episodes")
        label += f" ({episodes} episodes)" if isinstance(episodes, int) else ""
        for ax, (gate, _) in zip(axes[0], GATES):
            mean, ci = gates[gate]
            steps = np.arange(1, len(mean) + 1)                    # the gate of inner step t writes theta_t
            sns.lineplot(x=steps, y=mean, ax=ax, marker="o", color=color, label=label, errorbar=None)
            ax.fill_between(steps, mean - ci, mean + ci, color=color, alpha=0.2)
    for ax, (_, title) in zip(axes[0], GATES):
        ax.set(title=title, xlabel="inner step t", ylabel="mean gate value over parameters")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize="small")
    fig.suptitle("Meta-LSTM gate values over inner steps (mean ± 95% CI over test episodes)", fontsize="x-large")
    fig.tight_layout()
    return _save(fig, out, [str(e["run"].get("profile", "unknown")) for e in evals])


FIGURES = {"curves": figure_curves, "inner_steps": figure_inner_steps, "sinusoid_fits": figure_sinusoid_fits,
           "gates": figure_gates, "loss_variance": figure_loss_variance}


def read_png_profile(path: str | os.PathLike) -> str | None:
    """The profile recorded in a PNG written by this module (its tEXt chunk), or None."""
    import struct

    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    pos = 8
    while pos + 8 <= len(data):
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if ctype == b"tEXt" and b"\x00" in body:
            key, value = body.split(b"\x00", 1)
            if key.decode("latin-1") == PROFILE_KEY:
                return value.decode("latin-1")
        if ctype == b"IEND":
            break
        pos += 12 + length
    return None
