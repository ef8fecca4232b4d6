"""Ours-vs-paper tables (Markdown + CSV) from eval.json files and config/paper_results.csv: aggregation over
seeds, paired comparisons with MAML, matching published rows, rendering.

Torch-free on purpose: reports run in the Snakemake environment. Inputs are read by report/inputs.py, the
statistics (CIs, paired t-test, Wilcoxon via scipy.stats) live in metarepro/stats.py.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np


from ..addon_cards import ADDON_CARDS, ADDON_LABELS, TEST_HOOKS
from ..cards import cards
from ..config import MethodName
from ..dataset_cards import (DATASET_CARDS, DATASET_LABELS, DATASET_ORDER, FULL_IMAGES_PER_CLASS,
                             GRAPH as GRAPH_DATASETS, REGRESSION)
from ..stats import (MIN_CLAIM_SEEDS, SINGLE_SEED, Comparison, Paired, ci_span, compare_seeds, mean_ci95, paired_test,
                     seed_mean_ci95)
from ..utils import MetareproError, write_text_atomic
from .inputs import (EVAL_REQUIRED, PAPER_COLUMNS, RUN_REQUIRED, STANDARD_IMAGE_SIZE, PaperRow,
                     load_eval, load_paper_results, read_run_config)

# re-exported: the report modules and tests read inputs through this module too
__all__ = ["EVAL_REQUIRED", "PAPER_COLUMNS", "RUN_REQUIRED", "PaperRow", "load_eval",
           "load_paper_results", "read_run_config", "make_table", "method_label", "aggregate", "build_rows",
           "render_markdown", "render_csv", "numerics_note", "paired_test", "mean_ci95", "seed_mean_ci95", "Paired"]

# Our method name -> the label the papers (and config/paper_results.csv's `method` column) use: each method card's.
METHOD_LABELS: dict[str, str] = {n: c.label for n, c in cards().items()}
# Method variants (`<method>@<tag>`, metarepro.config.VARIANT_SEP) named after the paper's own row labels, so the
# ablation rows meet their published numbers; config/paper.yaml gives each the switches its label says
# (tests/unit/test_paper_protocols.py checks them). Other variants are labelled "<method label> (<tag>)".
VARIANT_LABELS: dict[str, str] = {
    "pamela@maml": "MAML",                                  # q_mode none, no skip: MAML in PAMELA's code
    "pamela@q_shared": "MAML + single Q (multi-step)",      # one Q for all steps, no skip
    "pamela@q_per_step": "MAML + per-step Q_j",             # Q_j per step, no skip
    "pamela@skip": "MAML + P^w skip",                       # scalar inner lr, P^w skip
    "pamela@window": "PAMELA, window skips (our earlier reading)",   # Q_j + P^w, skip_mode window
    "mamlpp@maml": "MAML",                                  # every MAML++ fix off
    "mamlpp@bn": "MAML + BNRS + BNWB",                      # per-step batch norm only
    "mamlpp@lslr": "MAML + LSLR",
    "mamlpp@ca": "MAML + CA",
    "mamlpp@msl": "MAML + MSL",
    "mamlpp@da": "MAML + DA",                               # derivative-order annealing only
    "matchingnet@fce": "Matching Networks FCE",
    "sharp_maml@up": "Sharp-MAML (up)",                    # SAM in the outer loop only
    "sharp_maml@low": "Sharp-MAML (low)",                  # SAM in the inner loop only
    "sharp_maml@both": "Sharp-MAML (both)",
    "mtl@ft": "FT (pretrained backbone meta-learned)",     # MTL's ablation: no SS, every backbone weight
    "mtl@theta": "theta only (no meta-learning)",          # the head trained per task on the pretrained features
    "maml@more": "More-MAML (+2 conv layers)",              # CML's parameter-matched controls
    "maml@branch": "MAML, multi-branch",
    "sharp_maml@cmlp": "Sharp-MAML (up, CML protocol)",    # the protocol tag below, on the "up" variant
    "pamela@cmlp": "PAMELA, Q_j only (CML protocol: 1 inner step, no skip)",   # P^w cannot act in one step
    "amfs@fo": "AMFS, first order",                         # no gradient through the kernel solve
    "amfs@mu": "AMFS + gradient-norm term (mu)",           # the regulariser ablation rows
    "amfs@gamma": "AMFS + information term (gamma)",
}
# Tags that name a protocol rather than switches: `maml@cmlp` is MAML run at CML's protocol (config/paper.yaml,
# beside MAML at its own paper's protocol under the plain name); labelled "<method label> (<protocol>)".
PROTOCOL_TAGS: dict[str, str] = {"cmlp": "CML protocol"}
NOISE_TAG = "noise"        # `<method>@noise+cml` with `addons: {cml: {control: noise}}`: CML's noise-matched control
# Add-ons compose with a base method by name (`maml+cml`, `pamela+ht`); the papers write "MAML++ + CML". Their labels,
# and those of the test-time hooks' rows (`maml+cml_dagger`: "MAML + CML†"), are the add-on cards'; a name without a
# card (written by hand) is printed in capitals.
MODIFIER_LABELS: dict[str, str] = ADDON_LABELS
# What the add-ons' papers leave open and we chose (the code's docstrings say the same at more length), printed under
# every table with a run that uses the add-on: the add-on cards' `choices`.
ADDON_CHOICES: dict[str, str] = {n: c.choices for n, c in ADDON_CARDS.items() if c.choices}
# The add-ons with a noise-matched control, and the names of their test-time rows: `<method>@noise+cml` with
# `addons: {cml: {control: noise}}` is CML's control, labelled after the add-on's card
_NOISE_CONTROLLED: dict[str, str] = {**{c.name: c.name for c in ADDON_CARDS.values() if c.noise_control},
                                     **{c.test_name: c.name for c in ADDON_CARDS.values()
                                        if c.noise_control and c.test_name}}
# The paper csv labels a few methods differently from our canonical label (one label -> extra aliases).
PAPER_ALIASES: dict[str, tuple[str, ...]] = {"Matching Networks": ("Matching Network",),
                                              "Matching Networks FCE": ("Matching Network FCE",)}

# Labels whose published rows are named differently and must not take the parenthesised-variant match (plain "MTL"
# would also take "MTL (SS + HT)"): only these paper methods match (MTL paper, Tables 1-2 and its ablation).
PAPER_EXACT: dict[str, tuple[str, ...]] = {
    "MTL": ("MTL (SS)",), "MTL + HT": ("MTL (SS + HT)",),
    "FT (pretrained backbone meta-learned) + HT": ("MAML deep + HT (FT, ResNet-12 pre)",),
    "theta only (no meta-learning)": ("update theta only (no meta-learning)",)}

# paired comparisons are made against this method: the method card that sets `reference`
REFERENCE_METHOD = next(n for n, c in cards().items() if c.reference)
DASH = "—"


# ----------------------------------------------------------------------------- aggregation

def method_label(method: str) -> str:
    """`maml` -> "MAML"; `mamlpp+cml` -> "MAML++ + CML"; `pamela@q_shared` -> its VARIANT_LABELS entry,
    `pamela@other` -> "PAMELA (other)"; `maml~train5` -> "MAML (5-shot meta-training)" (the Meta-SGD paper's
    label for a model tested at other shots than trained); unknown names are kept as they are."""
    name = MethodName.read(method)
    if name.train_shots is not None:
        return f"{method_label(str(name.with_train_shots(None)))} ({name.train_shots}-shot meta-training)"
    mods = name.addons
    controlled = [m for m in mods if m in _NOISE_CONTROLLED]
    if name.tag == NOISE_TAG and controlled:
        # a term's noise-matched control (CML's): the term trains, the learner gets noise of its gradient's norm
        rest = MethodName(name.base, addons=tuple(m for m in mods if m not in _NOISE_CONTROLLED))
        term = ADDON_CARDS[_NOISE_CONTROLLED[controlled[0]]]
        scored = [m for m in controlled if m == term.test_name]
        return (method_label(str(rest)) + f" + noise of {term.label}'s norm (control)"
                + (f", scored by {term.test_scorer} ({term.test_label})" if scored else ""))
    if name.variant in VARIANT_LABELS:
        label = VARIANT_LABELS[name.variant]
    else:
        label = (METHOD_LABELS.get(name.base, name.base)
                 + (f" ({PROTOCOL_TAGS.get(name.tag, name.tag)})" if name.tag else ""))
    return " + ".join([label] + [MODIFIER_LABELS.get(m, m.upper()) for m in mods])


def backbone_label(run: dict) -> str:
    args = run.get("backbone_args") or {}
    name = str(run.get("backbone", "?"))
    if args.get("filters"):
        name += f"-{args['filters']}"
    if args.get("hidden"):
        name += "-" + "-".join(str(h) for h in args["hidden"])
    return name


def setting_label(dataset: str, ways: int | None, shots: int) -> str:
    return f"{shots}-shot" if dataset in REGRESSION else f"{ways}-way {shots}-shot"


def _sort_key_method(method: str) -> tuple:
    base = MethodName.read(method).base   # variants and add-on runs sort beside their method
    order = list(METHOD_LABELS)
    return (order.index(base) if base in order else len(order), method)


def _join_unique(values: Iterable[Any]) -> str:
    return ", ".join(dict.fromkeys(str(v) for v in values))


def _steps(ev: dict) -> dict[int, dict]:
    return {int(k): v for k, v in (ev.get("by_step") or {}).items()}


@dataclass
class Group:
    """All seeds of one (dataset, ways, shots, method), aggregated."""
    dataset: str
    ways: int
    shots: int
    method: str
    metric: str
    evals: list[dict]
    mean: float = float("nan")
    ci95: float = float("nan")
    ci_over: str = ""
    step1: tuple[float, float] | None = None          # (mean, ci95) after one inner step
    by_step: dict[int, tuple[float, float]] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [int(e["run"]["seed"]) for e in self.evals]

    @property
    def label(self) -> str:
        return method_label(self.method)


def _aggregate_scores(evals: list[dict], per_seed: list[tuple[float, float]],
                      pooled: np.ndarray | None) -> tuple[float, float, str]:
    """One seed: mean/CI over its episodes ("1 seed: episode CI only"). Several: mean of the seed means, t-CI
    across them ("3 seeds × 600 episodes")."""
    episodes = _join_unique(e.get("episodes", "?") for e in evals)
    if len(evals) == 1:
        if pooled is not None and pooled.size >= 2:
            m, c = mean_ci95(pooled)
            return m, c, ci_span(1, pooled.size)
        m, c = per_seed[0]
        return m, c, ci_span(1, episodes)
    m, c = seed_mean_ci95([p[0] for p in per_seed])
    return m, c, ci_span(len(evals), episodes)


def aggregate(evals: list[dict]) -> list[Group]:
    groups: dict[tuple, list[dict]] = {}
    for ev in evals:
        run = ev["run"]
        key = (str(run["dataset"]), int(run["ways"]), int(run["shots"]), str(run["method"]))
        groups.setdefault(key, []).append(ev)
    out = []
    for (dataset, ways, shots, method), evs in groups.items():
        evs = sorted(evs, key=lambda e: int(e["run"]["seed"]))
        seeds = [int(e["run"]["seed"]) for e in evs]
        if len(set(seeds)) != len(seeds):
            dup = [e["_path"] for e in evs if seeds.count(int(e["run"]["seed"])) > 1]
            raise MetareproError(f"the same run (dataset {dataset}, method {method}, {ways}-way {shots}-shot) "
                                 f"appears more than once for one seed: {', '.join(dup)}")
        metrics = {e["metric"] for e in evs}
        if len(metrics) > 1:
            raise MetareproError(f"evaluation files disagree on the metric ({sorted(metrics)}): "
                                 f"{', '.join(e['_path'] for e in evs)}")
        g = Group(dataset, ways, shots, method, metrics.pop(), evs)
        per_seed = []
        for e in evs:
            pe = e.get("per_episode")
            per_seed.append(mean_ci95(pe) if pe and len(pe) >= 2 else (float(e["mean"]), float(e["ci95"])))
        pooled = np.asarray(evs[0]["per_episode"], dtype=float) if evs[0].get("per_episode") else None
        g.mean, g.ci95, g.ci_over = _aggregate_scores(evs, per_seed, pooled)
        steps = sorted(set.intersection(*(set(_steps(e)) for e in evs))) if evs else []
        for s in steps:
            vals = [(float(_steps(e)[s]["mean"]), float(_steps(e)[s].get("ci95", float("nan")))) for e in evs]
            g.by_step[s] = vals[0] if len(vals) == 1 else seed_mean_ci95([v[0] for v in vals])
        g.step1 = g.by_step.get(1)
        out.append(g)
    order = {d: i for i, d in enumerate(DATASET_ORDER)}
    out.sort(key=lambda g: (order.get(g.dataset, len(order)), g.dataset, g.ways, g.shots, _sort_key_method(g.method)))
    return out


def paired_vs_reference(g: Group, ref: Group) -> Comparison | None:
    """Paired comparison g − ref over the training seeds both have (stats.compare_seeds): per seed the mean
    per-episode difference on the same episode set, then the Student-t CI over seeds (one seed: the episode CI,
    labelled as such). Seeds evaluated on different episode sets are left out; None when no seed pairs."""
    by_seed_ref = {int(e["run"]["seed"]): e for e in ref.evals}
    pairs = []
    for e in g.evals:
        r = by_seed_ref.get(int(e["run"]["seed"]))
        if r is None or not e.get("per_episode") or not r.get("per_episode"):
            continue
        if e.get("episode_set") is None or e.get("episode_set") != r.get("episode_set"):
            continue
        if len(e["per_episode"]) != len(r["per_episode"]) or len(e["per_episode"]) < 2:
            continue
        pairs.append((e["per_episode"], r["per_episode"]))
    return compare_seeds(pairs) if pairs else None


# FULL_IMAGES_PER_CLASS (dataset cards): datasets whose mirror (or a user's copy) may be a subset: their prepared
# meta.json tells the images per class of the train split, and a number published on the full dataset is not compared
# with a run on a subset.


@functools.lru_cache(maxsize=None)
def _data_variant(dataset: str, data_dir: str) -> str:
    """"full", "subset (60 images per class)" or "unknown" (no readable meta.json): from the prepared data. A graph
    dataset's meta.json names its variant (e.g. regenerated from a paper's description)."""
    if dataset in GRAPH_DATASETS:
        try:
            return str(json.loads((Path(data_dir) / "meta.json").read_text()).get("variant") or "full")
        except (OSError, ValueError):
            return "unknown"
    if dataset not in FULL_IMAGES_PER_CLASS:
        return "full"
    try:
        meta = json.loads((Path(data_dir) / "meta.json").read_text())
        train = meta["splits"]["train"]
        per_class = int(train["images"]) // max(1, int(train["classes"]))
    except (OSError, ValueError, KeyError, TypeError):
        return "unknown"
    return "full" if per_class >= FULL_IMAGES_PER_CLASS[dataset] else f"subset ({per_class} images per class)"


def run_setup(ev: dict) -> dict:
    """What a published number must share with our run to be compared with it: backbone (family and widths), input
    image size, dataset variant, and the ways and shots of meta-training."""
    run = ev["run"]
    dataset = str(run["dataset"])
    args = run.get("dataset_args") or {}
    inp = args.get("input") or {}
    method = str(run["method"])
    train_shots = MethodName.read(method).train_shots or int(run["shots"])
    bargs = run.get("backbone_args") or {}
    return {"family": str(run.get("backbone", "?")), "backbone": backbone_label(run),
            "extra": ", ".join(k for k in ("extra_blocks", "branch") if bargs.get(k)),
            "image_size": None if dataset in REGRESSION else (inp.get("crop") or args.get("image_size")
                                                              or STANDARD_IMAGE_SIZE.get(dataset)),
            "variant": _data_variant(dataset, str(run.get("data_dir") or f"data/{dataset}")),
            "train_ways": int((run.get("train") or {}).get("ways") or run["ways"]), "train_shots": train_shots}


def setup_differences(setup: dict, p: PaperRow) -> list[str]:
    """How the published row's setup differs from our run's (empty: like for like). A published backbone without
    widths ("conv4") matches any widths of its family: the source does not state them; so does a run of ours whose
    config gives none (the backbone's defaults, e.g. the sinusoid MLP's 40-40)."""
    out = []
    family, _, widths = p.backbone.partition("-")
    ours_widths = setup["backbone"] != setup["family"]
    if family != setup["family"] or (widths and ours_widths and p.backbone != setup["backbone"]):
        out.append(f"{p.backbone}; ours {setup['backbone']}")
    elif setup["extra"]:
        out.append(f"{p.backbone}; ours {setup['backbone']} with {setup['extra']}")
    if setup["image_size"] is not None and p.size is not None and p.size != setup["image_size"]:
        out.append(f"{p.size}×{p.size} images; ours {setup['image_size']}×{setup['image_size']}")
    if p.variant != setup["variant"]:
        out.append(f"{p.variant} dataset; ours {setup['variant']}")
    if p.dataset not in REGRESSION and (p.train_ways or p.ways) != setup["train_ways"]:
        out.append(f"meta-trained {p.train_ways or p.ways}-way; ours {setup['train_ways']}-way")
    if (p.train_shots or p.shots) != setup["train_shots"] and not p.method.endswith("-shot meta-training)"):
        out.append(f"meta-trained at {p.train_shots or p.shots} shots; ours {setup['train_shots']}")
    return out


def match_paper(g: Group, paper: list[PaperRow]) -> list[PaperRow]:
    """Paper rows for the same dataset, shots, ways (not for sinusoid) and metric, whose method is
    our label, an alias of it, or a parenthesised variant of it ("MAML (ResNet-12)")."""
    labels = (g.label,) + PAPER_ALIASES.get(g.label, ())
    out = []
    for p in paper:
        if p.dataset != g.dataset or p.shots != g.shots or p.metric != g.metric:
            continue
        if g.dataset not in REGRESSION and p.ways != g.ways:
            continue
        if g.label in PAPER_EXACT:
            # published rows named otherwise, which must not take the parenthesised-variant match
            if p.method in PAPER_EXACT[g.label]:
                out.append(p)
        elif p.method.endswith("-shot meta-training)"):
            # a published model trained at other shots than tested: only our run trained the same way matches
            if p.method in labels:
                out.append(p)
        elif any(p.method == lab or p.method.startswith(lab + " (") for lab in labels):
            out.append(p)
    return out


# ----------------------------------------------------------------------------- table rows

CSV_COLUMNS = [
    "dataset", "ways", "shots", "setting", "method", "method_label", "backbone", "image_size", "dataset_variant",
    "train_ways", "train_shots", "profile", "iterations",
    "meta_batch", "budget", "metric", "seeds", "episodes", "queries", "episode_set", "eval_inner_steps",
    "ours_mean", "ours_ci95", "ci_over", "ours_step1_mean", "ours_step1_ci95", "compared_at",
    "paper_value", "paper_ci95", "paper_method", "paper_backbone", "paper", "paper_source", "ref",
    "like_for_like", "setup_difference", "diff", "paper_in_ci", "vs_maml_diff", "vs_maml_ci95", "vs_maml_ci_over", "vs_maml_seeds", "vs_maml_n",
    "vs_maml_per_seed", "vs_maml_same_sign", "vs_maml_p_t", "vs_maml_p_wilcoxon", "vs_maml_significant",
    "paired_with", "train_wall_s", "test_wall_s"]


def _fmt(x: float | None, nd: int, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return DASH
    return f"{x:+.{nd}f}" if sign else f"{x:.{nd}f}"


def _fmt_ci(m: float, c: float, nd: int) -> str:
    return _fmt(m, nd) if c is None or math.isnan(c) else f"{m:.{nd}f} ± {c:.{nd}f}"


def _fmt_p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return DASH
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _num(x: Any) -> Any:
    """CSV cell: floats as repr-precision, NaN/None as empty."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return ""
    return x


def _budget(evals: list[dict]) -> tuple[str, str, str, str]:
    prof = _join_unique(e["run"].get("profile", "?") for e in evals)
    if all(e["run"].get("pretrained") and (e.get("checkpoint") or {}).get("iteration") == 0 for e in evals):
        # baselines on the pretrain stage's backbone: nothing was meta-trained, whatever `train` says
        return "0", "0", prof, f"pretrained classifier, no meta-training ({prof})"
    its = _join_unique(e["run"].get("train", {}).get("iterations", "?") for e in evals)
    mb = _join_unique(e["run"].get("train", {}).get("meta_batch", "?") for e in evals)
    tw = _join_unique(e["run"].get("train", {}).get("ways", "") for e in evals)
    ways = f", {tw}-way" if tw and tw != _join_unique(e["run"].get("ways") for e in evals) else ""
    ens = _join_unique(e["run"].get("train", {}).get("ensemble", "") for e in evals)
    return its, mb, prof, f"{its} it × {mb} tasks{ways}" + (f", top-{ens} ensemble" if ens else "") + f" ({prof})"


def _mean_of(values: Iterable[Any]) -> float | None:
    xs = [float(v) for v in values if isinstance(v, (int, float))]
    return sum(xs) / len(xs) if xs else None


def _fmt_wall(row: dict) -> str:
    """"12.5 + 1.3" (minutes of meta-training + test), or — where a time is missing."""
    t, e = row.get("train_wall_s"), row.get("test_wall_s")
    return DASH if t is None or e is None else f"{t / 60:.1f} + {e / 60:.1f}"


def build_rows(evals: list[dict], paper: list[PaperRow]) -> tuple[list[dict], list[PaperRow]]:
    """One dict per table line (CSV_COLUMNS keys) and the paper rows cited, in citation order."""
    groups = aggregate(evals)
    refs: dict[tuple, Group] = {(g.dataset, g.ways, g.shots): g for g in groups if g.method == REFERENCE_METHOD}
    by_name = {(g.dataset, g.ways, g.shots, g.method): g for g in groups}

    def reference(g: Group) -> Group | None:
        """MAML, except for a run with add-ons (`boil+cml`, `maml@noise+cml`): it is paired with its base run, the
        same name without the add-ons (else without the tag too), when the table has that run in its setting."""
        method = MethodName.read(g.method)
        if method.addons:
            for name in (method.variant, method.base):
                if (g.dataset, g.ways, g.shots, name) in by_name:
                    return by_name[(g.dataset, g.ways, g.shots, name)]
        return refs.get((g.dataset, g.ways, g.shots))
    cited: list[PaperRow] = []
    rows = []
    for g in groups:
        its, mb, prof, budget = _budget(g.evals)
        sinus = g.dataset in REGRESSION
        ref = reference(g)
        pair = paired_vs_reference(g, ref) if ref is not None and ref is not g else None
        # sinusoid paper numbers are one-inner-step MSEs (Meta-SGD Table 1): compare with by_step[1]
        cmp_mean, cmp_ci = (g.step1 if (sinus and g.step1) else (g.mean, g.ci95))
        base = {
            "dataset": g.dataset, "ways": "" if sinus else g.ways, "shots": g.shots,
            "setting": setting_label(g.dataset, g.ways, g.shots), "method": g.method, "method_label": g.label,
            "backbone": _join_unique(backbone_label(e["run"]) for e in g.evals), "profile": prof,
            "iterations": its, "meta_batch": mb, "budget": budget, "metric": g.metric,
            "seeds": " ".join(map(str, g.seeds)), "episodes": _join_unique(e.get("episodes", "?") for e in g.evals),
            "queries": _join_unique((e["run"].get("evaluation") or {}).get("queries", "?") for e in g.evals),
            "episode_set": _join_unique(e.get("episode_set", "?") for e in g.evals),
            "eval_inner_steps": _join_unique(e.get("inner_steps", max(_steps(e), default="?")) for e in g.evals),
            "ours_mean": g.mean, "ours_ci95": g.ci95, "ci_over": g.ci_over,
            "ours_step1_mean": g.step1[0] if g.step1 else None, "ours_step1_ci95": g.step1[1] if g.step1 else None,
            "compared_at": ("1 inner step" if sinus and g.step1 else "final inner step"),
            # the comparison's CI spans the seeds both runs have (one seed: the episodes, and no claim); the
            # Wilcoxon p is the episode-paired one of a single seed (over 3 seeds its smallest p is 0.25)
            "vs_maml_diff": pair.mean if pair else None, "vs_maml_ci95": pair.ci95 if pair else None,
            "vs_maml_ci_over": pair.span if pair else "", "vs_maml_seeds": pair.seeds if pair else None,
            "vs_maml_n": pair.episodes if pair else None,
            "vs_maml_per_seed": " ".join(f"{x:.6g}" for x in pair.per_seed) if pair else "",
            "vs_maml_same_sign": pair.same_sign if pair else None,
            "vs_maml_p_t": pair.p if pair else None, "vs_maml_p_wilcoxon": pair.p_wilcoxon if pair else None,
            "vs_maml_significant": pair.significant if pair else "", "_pair": pair,
            "paired_with": ref.method if pair else "", "_paired_label": ref.label if pair else "",
            "_is_ref": ref is g,
            # wall times on the machine that ran them (mean over seeds): meta-training, and this evaluation
            "train_wall_s": _mean_of((e.get("checkpoint") or {}).get("train_wall_time_s") for e in g.evals),
            "test_wall_s": _mean_of(e.get("wall_time_s") for e in g.evals),
        }
        setup = run_setup(g.evals[0])
        base.update(image_size=setup["image_size"] or "", dataset_variant=setup["variant"],
                    train_ways=setup["train_ways"], train_shots=setup["train_shots"])
        matches = match_paper(g, paper) or [None]
        for p in matches:
            row = dict(base)
            if p is None:
                row.update(paper_value=None, paper_ci95=None, paper_method="", paper_backbone="", paper="",
                           paper_source="", ref="", diff=None, paper_in_ci="—", like_for_like="",
                           setup_difference="")
            else:
                if p not in cited:
                    cited.append(p)
                differs = setup_differences(setup, p)
                row.update(paper_value=p.value, paper_ci95=p.ci95, paper_method=p.method,
                           paper_backbone=p.backbone, paper=p.paper, paper_source=p.source,
                           ref=f"[{cited.index(p) + 1}]", like_for_like=not differs,
                           setup_difference="; ".join(differs),
                           _paper_text=p.value_text + (f" ± {p.ci95_text}" if p.ci95_text else ""))
                if differs:
                    # another setup: shown beside ours, never subtracted from it nor tested against our CI
                    row.update(diff=None, paper_in_ci=DASH)
                else:
                    diff = cmp_mean - p.value
                    row.update(diff=diff, paper_in_ci=DASH if math.isnan(cmp_ci) else
                               ("yes" if abs(diff) <= cmp_ci else "no"))
            rows.append(row)
    return rows, cited


# ----------------------------------------------------------------------------- rendering

def _nd(metric: str) -> int:
    return 2 if metric == "accuracy" else 3


def _pipe_table(header: list[str], body: list[list[str]]) -> str:
    def esc(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(map(esc, r)) + " |" for r in body]
    return "\n".join(lines)


def claim_cells(c: Comparison | None, nd: int) -> list[str]:
    """A comparison's cells, as every table prints them: paired Δ ± CI, seeds with Δ's sign, p over seeds (none for
    one seed), and whether it is significant with what its CI spans."""
    if c is None:
        return [DASH, DASH, DASH, DASH]
    return [f"{c.mean:+.{nd}f} ± {c.ci95:.{nd}f}", c.same_sign_text, DASH if c.seeds < 2 else _fmt_p(c.p),
            ("yes" if c.significant else "no") + f" ({c.span})"]


def _md_cells(row: dict, sinus: bool, wall_time: bool = False) -> list[str]:
    nd = _nd(row["metric"])
    ours = _fmt_ci(row["ours_mean"], row["ours_ci95"], nd)
    paper_txt = row.get("_paper_text", DASH)
    method = row["method_label"]
    if row["paper_method"] and row["paper_method"] != row["method_label"]:
        paper_txt += f" [{row['paper_method']}]"
    other = DASH
    if row.get("setup_difference"):
        # a published number of another setup: its own column, naming the difference, never "ours − paper"
        other, paper_txt = f"{paper_txt} ({row['setup_difference']})", DASH
    if row["_is_ref"]:
        vs, same, p, holds = "reference", DASH, DASH, DASH
    else:
        vs, same, p, holds = claim_cells(row.get("_pair"), nd)
        if vs != DASH and row["paired_with"] != REFERENCE_METHOD:
            vs += f" (vs {row['_paired_label']})"
    source = f"{row['paper']} {row['ref']}" if row["paper"] else DASH
    cells = [DATASET_LABELS.get(row["dataset"], row["dataset"]), row["setting"], method, row["backbone"],
             row["budget"]] + ([_fmt_wall(row)] if wall_time else [])
    if sinus:
        s1 = (_fmt_ci(row["ours_step1_mean"], row["ours_step1_ci95"], nd)
              if row["ours_step1_mean"] is not None else DASH)
        cells += [s1, f"{ours} (K={row['eval_inner_steps']})"]
    else:
        cells += [ours]
    cells += [row["ci_over"], paper_txt, row["paper_backbone"] or DASH, source, _fmt(row["diff"], nd, sign=True),
              row["paper_in_ci"], other, vs, same, p, holds]
    return cells


def _header(metric: str, sinus: bool, wall_time: bool = False) -> list[str]:
    unit = "accuracy %" if metric == "accuracy" else "MSE"
    ours = ([f"Ours, 1 step ({unit})", f"Ours, K steps ({unit})"] if sinus else [f"Ours ({unit})"])
    return (["Dataset", "Setting", "Method", "Backbone", "Budget"]
            + (["Wall time (min, train + test)"] if wall_time else []) + ours
            + ["CI spans", "Paper (same setup)", "Paper backbone", "Source", "Ours − paper", "Paper in our CI",
               "Published, other setup (not compared)", "vs MAML (paired Δ ± CI; add-on runs vs their base)", "Seeds with Δ's sign", "p (t over seeds)",
               "Significant (Δ's CI spans)"])


def choices_notes(methods: Iterable[str]) -> list[str]:
    """One note line per method or add-on in `methods` (run names) whose papers leave choices open: ours."""
    bases: dict[str, None] = {}
    addons: dict[str, None] = {}
    for name in methods:
        method = MethodName.read(name)
        bases[method.base] = None
        addons.update(dict.fromkeys(method.addons))
    out = [f"- **Our choices, {METHOD_LABELS[b]}.** {cards()[b].choices}"
           for b in bases if b in METHOD_LABELS and cards()[b].choices]
    out += [f"- **Our choices, {MODIFIER_LABELS.get(a, a)}.** {ADDON_CHOICES[a]}" for a in addons if a in ADDON_CHOICES]
    return out


def render_markdown(title: str, rows: list[dict], cited: list[PaperRow], paper_path: str,
                    wall_time: bool = False) -> str:
    parts = [f"# {title}", ""]
    if not rows:
        parts += ["_No evaluation results were given._", ""]
    sections: dict[tuple[str, bool], list[dict]] = {}
    for r in rows:
        sections.setdefault((r["metric"], r["dataset"] in REGRESSION), []).append(r)
    for (metric, sinus), rs in sections.items():
        if len(sections) > 1:
            parts += [f"## {'Sinusoid regression (MSE, lower is better)' if sinus else metric.capitalize()}", ""]
        parts += [_pipe_table(_header(metric, sinus, wall_time), [_md_cells(r, sinus, wall_time) for r in rs]), ""]

    notes = ["## Notes", ""]
    episodes = _join_unique(r["episodes"] for r in rows) or "?"
    queries = _join_unique(r["queries"] for r in rows if r["dataset"] not in REGRESSION)
    notes.append(f"- **Protocol.** Each run is evaluated on {episodes} fixed test episodes"
                 + (f" ({queries} query examples per class)" if queries else "")
                 + ", the same episode set for every method of a setting (column `episode_set` of the CSV). "
                 "Accuracy is in percent, MSE on the sinusoid's query points. `Ours` is the score after the "
                 "test-time inner steps (`eval_inner_steps` in the CSV).")
    single = any(r["ci_over"] == SINGLE_SEED for r in rows)
    several = any(r["ci_over"] != SINGLE_SEED for r in rows)
    ci_text = []
    if several:
        ci_text.append("rows from several training seeds: mean of the per-seed means, 95% CI = t(0.975, s−1) · "
                       "std / √s across the s seed means, so it spans training seeds (`CI spans`: \"3 seeds × 600 "
                       "episodes\")")
    if single:
        ci_text.append("rows marked \"1 seed: episode CI only\": 95% CI = 1.96 · std / √n over one run's "
                       "per-episode scores (sample std, n = episodes); it measures the test sample, not the "
                       "training run, which another seed or another CPU moves by as much (such rows support no "
                       "finding)")
    if ci_text:
        notes.append("- **Confidence intervals.** " + "; ".join(ci_text) + " (column `ci_over` of the CSV).")
    profiles = _join_unique(r["profile"] for r in rows)
    by_budget: dict[str, list[str]] = {}
    for r in rows:
        who = f"{DATASET_LABELS.get(r['dataset'], r['dataset'])} {r['setting']} {r['method_label']}"
        if who not in by_budget.setdefault(r["budget"], []):
            by_budget[r["budget"]].append(who)
    budgets = "; ".join(f"{b}: {', '.join(w)}" for b, w in by_budget.items())
    notes.append(f"- **Budget.** Produced by config profile(s) **{profiles or '?'}**; budget = meta-training "
                 f"iterations × tasks per meta-batch (profile). {budgets}. Published results mostly train far "
                 f"longer (MAML: 40k-60k iterations, see `../shared/reference/README.md`), so gaps partly reflect budget.")
    if wall_time:
        notes.append("- **Wall time.** Minutes of meta-training (the whole run, validations included) + minutes of "
                     "this test evaluation, on the machine that ran them (`numerics` in each eval.json names the "
                     "CPU); the profile's jobs ran in parallel, one thread each. Columns `train_wall_s`, "
                     "`test_wall_s` of the CSV.")
    if any(r["dataset"] in REGRESSION for r in rows):
        notes.append("- **Sinusoid.** The published sinusoid numbers (Li et al. 2017, Meta-SGD Table 1) are MSEs "
                     "after one inner step, so `Ours − paper` and `Paper in our CI` use our MSE after 1 inner "
                     "step (`by_step[1]`); `Ours, K steps` is after the final test-time step. Rows labelled "
                     "\"5-shot meta-training\" were meta-trained at 5 shots and tested at 10 or 20.")
    notes.append("- **Like for like.** A published number is found by dataset, ways, shots, metric and method label "
                 "(including the paper's parenthesised variants, e.g. \"MAML (ResNet-12)\"; several matches give one "
                 "line each), and it is compared with ours only when the whole setup is the same: backbone family "
                 "and widths (a source that gives no widths, e.g. \"conv4\", matches any), input image size, "
                 "dataset variant (full or a subset, from the prepared data's meta.json) and the ways and shots "
                 "of meta-training (CSV columns `like_for_like`, `setup_difference`). A number from another setup "
                 "sits in `Published, other setup` with the difference named, as context: it never enters "
                 "`Ours − paper` or `Paper in our CI`.")
    notes.append("- **Paper in our CI.** `yes` when the published mean lies within our 95% CI, `no` otherwise, "
                 "`—` when there is no like-for-like published number or no CI. A published ± may be a std or "
                 "come without a CI (see each source).")
    notes.append("- **Paired comparison vs MAML** (a run with add-ons: vs its base run). On the same test "
                 "episodes, per training seed: the mean per-episode difference (method − reference; for MSE "
                 "negative is better). Over the s seeds both runs have: the mean of those per-seed differences "
                 "± the 95% Student-t interval t(0.975, s−1) · sd / √s, and the two-sided one-sample t-test p "
                 "(scipy.stats.ttest_1samp; the seeds are the unit, Bouthillier et al. 2021). `Seeds with Δ's "
                 "sign` is the share of seeds whose difference has the sign of the mean: the reproducibility of "
                 f"the effect. `Significant` is yes only with at least {MIN_CLAIM_SEEDS} seeds and a CI over them "
                 "that excludes 0. With one seed the ± is the episode CI (1.96 · sd / √n over the per-episode "
                 "differences), no p is shown and nothing is significant. For the sinusoid this uses the "
                 "final-step MSEs.")
    notes += choices_notes(r["method"] for r in rows)
    notes += [f"- **Data, {DATASET_LABELS[d]}.** {DATASET_CARDS[d].note}"
              for d in dict.fromkeys(r["dataset"] for r in rows) if d in DATASET_CARDS and DATASET_CARDS[d].note]
    notes.append(f"- **Sources.** Published numbers come from `{paper_path}` (a copy of "
                 f"`../shared/reference/paper_results.csv`, plus rows that file lacks, each with its source):")
    parts += notes
    for i, p in enumerate(cited, start=1):
        where = setting_label(p.dataset, p.ways, p.shots)
        ci = f" ± {p.ci95_text}" if p.ci95_text else " (no CI given)"
        parts.append(f"  [{i}] {p.paper}: {p.source}. {p.method}, {DATASET_LABELS.get(p.dataset, p.dataset)} "
                     f"{where}, {p.backbone}: {p.value_text}{ci}.")
    if not cited:
        parts.append("  (no published number matched these rows)")
    return "\n".join(parts) + "\n"


def render_csv(rows: list[dict], columns: Sequence[str] = CSV_COLUMNS) -> str:
    """The rows as CSV with `columns` (numbers rounded as in _num, other keys ignored)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _num(r.get(k)) for k in columns})
    return buf.getvalue()


def numerics_note(evals: list[dict]) -> str:
    """A warning when the table's runs were computed under different numerics (CPU ISA, library versions, strict
    mode): their rows are then comparable statistically, not bit for bit. Empty when they agree."""
    from ..numerics import signature

    groups: dict[tuple, list[str]] = {}
    for ev in evals:
        if ev.get("numerics"):      # evaluations from before numerics were recorded: unknown, not "different"
            groups.setdefault(signature(ev["numerics"]), []).append(ev["_path"])
    if len(groups) < 2:
        return ""
    parts = [f"{' / '.join(str(x) for x in sig)} ({len(paths)} runs, e.g. {paths[0]})" for sig, paths in groups.items()]
    return ("\n- **Mixed numerics:** these rows were computed under different CPU code paths or library versions ("
            + "; ".join(parts) + "). Differences between them include floating-point effects, not only the "
            "methods; re-run with `strict_numerics: true` for bit-identical numbers on any AVX2 machine.\n")


def with_colearner_rows(evals: list[dict]) -> list[dict]:
    """Each evaluation plus, for a run with an outer-loss term that predicts at test (CML's co-learner), that term's
    row: the scores under the card's `eval_key` in eval.json (`colearner`: the co-learner predicting on the same
    episodes) as an evaluation of method `<method>+<test_name>` (`maml+cml_dagger`, labelled "MAML + CML†")."""
    out = []
    for ev in evals:
        out.append(ev)
        name = MethodName.read(str(ev["run"]["method"]))
        for hook in [TEST_HOOKS[a] for a in name.addons if a in TEST_HOOKS]:
            co = ev.get(hook.eval_key)
            if not (isinstance(co, dict) and isinstance(co.get("per_episode"), list)):
                continue
            method = str(name.with_addons(hook.test_name if a == hook.name else a for a in name.addons))
            steps = str(ev.get("inner_steps", max(_steps(ev), default=0)))
            out.append({**ev, "run": {**ev["run"], "method": method}, "mean": co["mean"], "ci95": co["ci95"],
                        "std": co.get("std", 0.0), "per_episode": co["per_episode"],
                        "by_step": {steps: {"mean": co["mean"], "ci95": co["ci95"]}}, hook.eval_key: None})
    return out


def make_table(eval_paths: Sequence[str | os.PathLike], out_md: str | os.PathLike, title: str,
               paper_path: str | os.PathLike | None, wall_time: bool = False) -> tuple[Path, Path]:
    """Write `out_md` and the CSV beside it (same stem); return both paths. `wall_time`: a column of each row's
    meta-training + test wall time in the Markdown too (the CSV always has them)."""
    out_md = Path(out_md)
    if out_md.suffix != ".md":
        raise MetareproError(f"table output {out_md} must end in .md (the CSV is written beside it)")
    evals = with_colearner_rows([load_eval(p) for p in eval_paths])
    paper = load_paper_results(paper_path) if paper_path else []
    rows, cited = build_rows(evals, paper)
    out_csv = out_md.with_suffix(".csv")
    write_text_atomic(out_csv, render_csv(rows))
    write_text_atomic(out_md, render_markdown(title, rows, cited, str(paper_path) if paper_path else "(none)",
                                              wall_time)
                      + numerics_note(evals))
    return out_md, out_csv
