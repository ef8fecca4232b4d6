"""Cross-domain table: each method's in-domain accuracy beside its accuracy on another dataset's test classes,
with paired tests between methods on the same target episodes (torch-free).

Inputs are eval.json files (in-domain: the source's own test episodes, and the target-trained runs' if the report
has them) and eval_xdomain_<target>.json files (a run tested on the target's test episodes, `cross_domain` block).
Every cross-domain evaluation of one (target, ways, shots) uses the target's fixed test episodes, which are also
those of runs trained on the target: rows on one target pair episode by episode (checked via `episode_set`).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

from ..utils import MetareproError, write_text_atomic
from .tables import (DASH, DATASET_LABELS, REFERENCE_METHOD, _fmt, _fmt_ci, _fmt_p, _pipe_table, load_eval,
                     mean_ci95, method_label, paired_test, render_csv)

CSV_COLUMNS = ["method", "method_label", "source", "target", "ways", "shots", "profile", "episodes", "episode_set",
               "in_domain_mean", "in_domain_ci95", "cross_domain_mean", "cross_domain_ci95",
               "target_trained_mean", "target_trained_ci95", "vs_target_trained_diff", "vs_target_trained_ci95",
               "vs_target_trained_p_t", "reference", "vs_reference_diff", "vs_reference_ci95", "vs_reference_p_t",
               "vs_reference_p_wilcoxon", "input_shape", "target_image_shape"]


def _label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def _scores(ev: dict) -> list[float]:
    pe = ev.get("per_episode")
    if not pe:
        raise MetareproError(f"{ev['_path']} has no per_episode scores: cross-domain rows need them for paired tests")
    return [float(v) for v in pe]


def build_rows(evals: list[dict]) -> list[dict]:
    """One row per cross-domain evaluation, with the run's in-domain score, the target-trained run of the same
    method (if given), and the paired difference to the reference method on the same target episodes."""
    in_domain: dict[tuple, dict] = {}
    cross: list[dict] = []
    for ev in evals:
        run = ev["run"]
        if ev.get("cross_domain"):
            cross.append(ev)
        elif int(ev.get("test_shots", run["shots"])) == int(run["shots"]):
            in_domain[(run["dataset"], run["method"], int(run["ways"]), int(run["shots"]), int(run["seed"]))] = ev
    if not cross:
        raise MetareproError("no cross-domain evaluation (eval_xdomain_<dataset>.json) among the inputs")
    by_target: dict[tuple, dict[str, dict]] = {}
    for ev in cross:
        run, target = ev["run"], ev["cross_domain"]["target"]
        key = (run["dataset"], target, int(run["ways"]), int(run["shots"]), int(run["seed"]))
        by_target.setdefault(key, {})[run["method"]] = ev
    rows = []
    for (src, dst, ways, shots, seed), methods in sorted(by_target.items()):
        sets = {ev["episode_set"] for ev in methods.values()}
        if len(sets) > 1:
            raise MetareproError(f"cross-domain evaluations {src} -> {dst} {ways}-way {shots}-shot were made on "
                                 f"different episodes ({', '.join(sorted(sets))}): re-run them with one config")
        ref = methods.get(REFERENCE_METHOD)
        for method, ev in sorted(methods.items(), key=lambda kv: (kv[0] != REFERENCE_METHOD, kv[0])):
            own = in_domain.get((src, method, ways, shots, seed))
            trained = in_domain.get((dst, method, ways, shots, seed))
            m, c = mean_ci95(_scores(ev))
            row = {"method": method, "method_label": method_label(method), "source": src, "target": dst,
                   "ways": ways, "shots": shots, "profile": ev["run"].get("profile", ""), "episodes": ev["episodes"],
                   "episode_set": ev["episode_set"], "cross_domain_mean": m, "cross_domain_ci95": c,
                   "input_shape": "x".join(map(str, ev["cross_domain"].get("input_shape", []))),
                   "target_image_shape": "x".join(map(str, ev["cross_domain"].get("target_image_shape", [])))}
            if own is not None:
                row["in_domain_mean"], row["in_domain_ci95"] = mean_ci95(_scores(own))
            if trained is not None and trained.get("episode_set") == ev["episode_set"]:
                row["target_trained_mean"], row["target_trained_ci95"] = mean_ci95(_scores(trained))
                p = paired_test(_scores(ev), _scores(trained))
                row.update(vs_target_trained_diff=p.mean, vs_target_trained_ci95=p.ci95, vs_target_trained_p_t=p.p_t)
            if ref is not None and method != REFERENCE_METHOD:
                p = paired_test(_scores(ev), _scores(ref))
                row.update(reference=REFERENCE_METHOD, vs_reference_diff=p.mean, vs_reference_ci95=p.ci95,
                           vs_reference_p_t=p.p_t, vs_reference_p_wilcoxon=p.p_wilcoxon)
            rows.append(row)
    return rows


def _g(row: dict, key: str) -> float:
    v = row.get(key)
    return float("nan") if v is None else float(v)


def render_markdown(title: str, rows: list[dict]) -> str:
    lines = [f"# {title}", ""]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        lines += [f"## {mine[0]['method_label']}", ""]
        body = []
        for r in mine:
            ci = lambda k: _fmt_ci(_g(r, f"{k}_mean"), _g(r, f"{k}_ci95"), 2)  # noqa: E731
            gap = DASH if r.get("vs_target_trained_diff") is None else (
                f"{_fmt(r['vs_target_trained_diff'], 2, sign=True)} ± {_fmt(r['vs_target_trained_ci95'], 2)} "
                f"(p {_fmt_p(r['vs_target_trained_p_t'])})")
            body.append([f"{_label(r['source'])} → {_label(r['target'])}", f"{r['ways']}-way {r['shots']}-shot",
                         ci("in_domain"), ci("cross_domain"), ci("target_trained"), gap])
        lines += [_pipe_table(["Source → target", "Setting", "In-domain (source test)", "Cross-domain (target test)",
                               "Trained on target (in-domain)", "Cross-domain − trained on target (paired)"], body), ""]
    lines += ["## Methods compared on the same target episodes", ""]
    body = []
    for r in rows:
        if r.get("reference") is None:
            continue
        body.append([f"{_label(r['source'])} → {_label(r['target'])}", f"{r['ways']}-way {r['shots']}-shot",
                     r["method_label"], method_label(r["reference"]),
                     f"{_fmt(r['vs_reference_diff'], 2, sign=True)} ± {_fmt(r['vs_reference_ci95'], 2)}",
                     _fmt_p(r["vs_reference_p_t"]), _fmt_p(r["vs_reference_p_wilcoxon"])])
    lines += [_pipe_table(["Source → target", "Setting", "Method", "vs", "Paired difference (points)", "t-test p",
                           "Wilcoxon p"], body) if body else "(no reference-method run on these targets)", ""]
    shapes = sorted({(r["source"], r["target"], r["input_shape"], r["target_image_shape"]) for r in rows})
    lines += ["## Notes", "",
              "- Accuracy in % over the fixed test episodes (mean ± 1.96 · std / √n). Every cross-domain row of one "
              "target uses that target's fixed test episodes, the same ones runs trained on the target are tested on, "
              "so rows on one target pair episode by episode (t-test and Wilcoxon signed-rank, two-sided).",
              "- Target images are converted to the source model's input (channels: 1→3 repeated, 3→1 BT.601 luma; "
              "size: antialiased bilinear) and normalised with the *source's* training statistics stored in model.pt: "
              + "; ".join(f"{_label(s)} → {_label(t)}: {ti or '?'} → {si or '?'}" for s, t, si, ti in shapes) + ".",
              "- A pair whose target test classes include source training classes (by class name) is refused.",
              f"- Produced by config profile(s) **{', '.join(sorted({str(r['profile']) for r in rows}))}**.", ""]
    return "\n".join(lines)


def make_xdomain_table(eval_paths: Sequence[str | os.PathLike], out_md: str | os.PathLike,
                       title: str) -> tuple[Path, Path]:
    out_md = Path(out_md)
    if out_md.suffix != ".md":
        raise MetareproError(f"table output {out_md} must end in .md (the CSV is written beside it)")
    rows = build_rows([load_eval(p) for p in eval_paths])
    for r in rows:
        for k, v in list(r.items()):
            if isinstance(v, float) and math.isnan(v):
                r[k] = None
    out_csv = out_md.with_suffix(".csv")
    write_text_atomic(out_csv, render_csv(rows, CSV_COLUMNS))
    write_text_atomic(out_md, render_markdown(title, rows))
    return out_md, out_csv
