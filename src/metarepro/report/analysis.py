"""CML's analysis figures (Shin et al. 2024), each from a report's run directories (config.yaml, train_log.csv,
eval.json); a run that lacks what a figure reads is left out of it with a note, and a figure with no such run
is an error naming the setting that records it.

- cml_noise: CML against its noise-matched control (`<method>@noise+cml` with `addons: {cml: {control: noise}}`)
  and the base method: validation accuracy over meta-training and test accuracy with 95% CIs;
- cml_cosine: the cosine similarity between the learner's and the co-learner's meta-gradients on the feature
  extractor psi over meta-training (train.diagnostics_every);
- grad_norms: the norm of the feature extractor's meta-gradient over meta-training, base method vs CML
  (train.diagnostics_every);
- cka: linear CKA between the query features before and after adaptation (evaluation.analysis_episodes);
- tsne: scikit-learn's t-SNE of one test episode's adapted query features, one panel per run
  (evaluation.analysis_episodes).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..formats import EVAL_FILE
from ..addon_cards import ADDON_CARDS
from ..utils import MetareproError
from .figures import _run_label, _save, load_run_dir
from .inputs import load_eval
from .tables import method_label

log = logging.getLogger("metarepro.report")


def _runs(run_dirs: Sequence[str | os.PathLike]) -> list[tuple[Path, dict, pd.DataFrame, dict | None]]:
    out = []
    for d in run_dirs:
        cfg, df = load_run_dir(d)
        ev_path = Path(d) / EVAL_FILE
        ev = load_eval(ev_path) if ev_path.exists() else None     # checked: a malformed file is named
        out.append((Path(d), cfg, df, ev))
    return out


def _with(runs, ok, what: str, setting: str, kind: str):
    found = [r for r in runs if ok(r)]
    for r in runs:
        if not ok(r):
            log.info("%s: %s has no %s; left out", kind, r[0], what)
    if not found:
        raise MetareproError(f"figure --kind {kind}: none of the {len(runs)} runs records {what}; "
                             f"set {setting} in their experiment")
    return found


def _short(cfg: dict) -> str:
    return f"{method_label(str(cfg['method']))}, {cfg['shots']}-shot"


def _is_control(cfg: dict) -> bool:
    """A run of an outer-loss term's noise-matched control (its card's `noise_control` setting, CML's)."""
    blocks = cfg.get("addons") or {}
    return any(c.noise_control and all((blocks.get(c.name) or {}).get(k) == v for k, v in c.noise_control.items())
               for c in ADDON_CARDS.values())


def _series(runs, column: str, kind: str, title: str, ylabel: str, out, log_y: bool = False) -> Path:
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(9, 5))
    palette = sns.color_palette("colorblind", len(runs))
    for (_, cfg, df, _), color in zip(runs, palette):
        s = df[["iteration", column]].copy()
        s[column] = pd.to_numeric(s[column], errors="coerce")
        s = s.dropna()
        ax.plot(s["iteration"], s[column], color=color, alpha=0.3, linewidth=0.8)
        w = max(1, len(s) // 15)
        ax.plot(s["iteration"], s[column].rolling(w, min_periods=1).mean(), color=color, linewidth=1.8,
                label=_run_label(cfg))
    if log_y:
        ax.set_yscale("log")
    ax.set(title=title + " (faint: logged; solid: moving average)", xlabel="meta-iteration", ylabel=ylabel)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, out, [str(c.get("profile", "unknown")) for _, c, _, _ in runs])


def figure_cml_cosine(run_dirs, out) -> Path:
    # the noise control's co-learner gradient never reaches the learner: its cosine is not CML's, so it is left out
    runs = _with(_runs(run_dirs), lambda r: "cml_cos_features" in r[2].columns and not _is_control(r[1])
                 and pd.to_numeric(r[2]["cml_cos_features"], errors="coerce").notna().any(),
                 "co-learner gradient diagnostics", "train.diagnostics_every (on a +cml run)", "cml_cosine")
    return _series(runs, "cml_cos_features", "cml_cosine",
                   "Cosine similarity of the learner's and the co-learner's meta-gradients on the feature extractor",
                   "cos(g_learner, g_co-learner) on psi", out)


def figure_grad_norms(run_dirs, out) -> Path:
    runs = _with(_runs(run_dirs), lambda r: "grad_norm_features" in r[2].columns
                 and pd.to_numeric(r[2]["grad_norm_features"], errors="coerce").notna().any(),
                 "feature-extractor gradient norms", "train.diagnostics_every", "grad_norms")
    return _series(runs, "grad_norm_features", "grad_norms",
                   "Norm of the feature extractor's meta-gradient", "||meta-gradient on psi||", out, log_y=True)


def figure_cml_noise(run_dirs, out) -> Path:
    runs = _with(_runs(run_dirs), lambda r: r[3] is not None, EVAL_FILE, "(evaluate the runs)", "cml_noise")
    if not any(_is_control(c) for _, c, _, _ in runs):
        raise MetareproError("figure --kind cml_noise: no run is a noise-matched control "
                             "(a '<method>@noise+cml' run with addons: {cml: {control: noise}})")
    sns.set_theme(style="whitegrid", context="notebook")
    fig, (ax_val, ax_test) = plt.subplots(1, 2, figsize=(13, 5))
    palette = sns.color_palette("colorblind", len(runs))
    labels, means, cis = [], [], []
    for (_, cfg, df, ev), color in zip(runs, palette):
        val = df.dropna(subset=["val_mean"])      # accuracies are in percent already
        ax_val.plot(val["iteration"], val["val_mean"], marker="o", color=color, label=_run_label(cfg))
        labels.append(_short(cfg))
        means.append(ev["mean"])
        cis.append(ev["ci95"])
    ax_val.set(title="Validation accuracy over meta-training", xlabel="meta-iteration", ylabel="accuracy (%)")
    ax_val.legend(fontsize="small")
    ax_test.bar(range(len(runs)), means, yerr=cis, color=palette, capsize=4)
    ax_test.set_xticks(range(len(runs)), labels, rotation=20, ha="right")
    ax_test.set(title="Test accuracy (mean ± 95% CI, same episodes)", ylabel="accuracy (%)",
                ylim=(max(0.0, min(means) - 3 * max(cis) - 5), min(100.0, max(means) + 2 * max(cis) + 2)))
    fig.suptitle("CML vs Gaussian noise of the same norm on the meta-gradient", fontsize="x-large")
    fig.tight_layout()
    return _save(fig, out, [str(c.get("profile", "unknown")) for _, c, _, _ in runs])


def _analysed(run_dirs, kind: str):
    return _with(_runs(run_dirs), lambda r: r[3] is not None and "analysis" in r[3], "representation analysis",
                 "evaluation.analysis_episodes", kind)


def figure_cka(run_dirs, out) -> Path:
    runs = _analysed(run_dirs, "cka")
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(max(8, 2.8 * len(runs)), 5))
    palette = sns.color_palette("colorblind", len(runs))
    vals = [r[3]["analysis"]["cka"] for r in runs]
    means, cis = [v["mean"] for v in vals], [v["ci95"] for v in vals]
    ax.bar(range(len(runs)), means, yerr=cis, color=palette, capsize=4)
    for i, (m, c) in enumerate(zip(means, cis)):
        ax.annotate(f"{m:.3f}", (i, m + c), ha="center", va="bottom", fontsize="small")
    ax.set_xticks(range(len(runs)), [_short(c) for _, c, _, _ in runs], rotation=15, ha="right", fontsize="small")
    n = runs[0][3]["analysis"]["episodes"]
    low = max(0.0, min(m - c for m, c in zip(means, cis)) - 0.05)
    ax.set(ylim=(low, 1.0 + 0.02 * (1 - low)), ylabel=f"linear CKA, mean ± 95% CI over {n} test episodes",
           title="CKA of the query features before and after adaptation (1 = unchanged; axis zoomed)")
    fig.tight_layout()
    return _save(fig, out, [str(c.get("profile", "unknown")) for _, c, _, _ in runs])


def figure_tsne(run_dirs, out) -> Path:
    runs = _analysed(run_dirs, "tsne")
    sns.set_theme(style="white", context="notebook")
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 4.5), squeeze=False)
    for ax, (_, cfg, _, ev) in zip(axes[0], runs):
        t = ev["analysis"]["tsne"]
        xy, y = np.asarray(t["xy"]), np.asarray(t["labels"])
        for c in np.unique(y):
            ax.scatter(xy[y == c, 0], xy[y == c, 1], s=14, label=f"class {c}")
        ax.set(title=_short(cfg), xticks=[], yticks=[])
        ax.title.set_fontsize("small")
    axes[0][0].legend(fontsize="x-small")
    fig.suptitle("t-SNE of adapted query features (test episode 0)", fontsize="x-large")
    fig.tight_layout()
    return _save(fig, out, [str(c.get("profile", "unknown")) for _, c, _, _ in runs])


ANALYSIS_FIGURES = {"cml_noise": figure_cml_noise, "cml_cosine": figure_cml_cosine, "grad_norms": figure_grad_norms,
                    "cka": figure_cka, "tsne": figure_tsne}
