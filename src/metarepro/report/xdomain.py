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

from ..classes import concept_overlap, describe_overlap, split_class_names
from ..stats import MIN_CLAIM_SEEDS, Comparison, ci_span, compare_seeds, seed_mean_ci95
from ..utils import MetareproError, write_text_atomic
from .tables import (DATASET_LABELS, REFERENCE_METHOD, _fmt_ci, _pipe_table, claim_cells, load_eval, mean_ci95,
                     method_label, render_csv)

CSV_COLUMNS = ["method", "method_label", "source", "target", "ways", "shots", "profile", "seeds", "episodes",
               "episode_set", "ci_over", "in_domain_mean", "in_domain_ci95", "cross_domain_mean", "cross_domain_ci95",
               "target_trained_mean", "target_trained_ci95", "vs_target_trained_diff", "vs_target_trained_ci95",
               "vs_target_trained_seeds", "vs_target_trained_same_sign", "vs_target_trained_p_t",
               "vs_target_trained_significant", "reference", "vs_reference_diff", "vs_reference_ci95",
               "vs_reference_seeds", "vs_reference_same_sign", "vs_reference_p_t", "vs_reference_p_wilcoxon",
               "vs_reference_significant", "input_shape", "target_image_shape", "overlap_classes", "overlap_of",
               "overlap_named", "without_overlap_mean", "without_overlap_ci95", "without_overlap_classes"]


def _label(dataset: str) -> str:
    return DATASET_LABELS.get(dataset, dataset)


def _scores(ev: dict) -> list[float]:
    pe = ev.get("per_episode")
    if not pe:
        raise MetareproError(f"{ev['_path']} has no per_episode scores: cross-domain rows need them for paired tests")
    return [float(v) for v in pe]


def _over_seeds(evs: list[dict]) -> tuple[float, float]:
    """One seed: mean ± the episode CI. Several: mean of the seed means ± the t-CI across them."""
    if len(evs) == 1:
        return mean_ci95(_scores(evs[0]))
    return seed_mean_ci95([mean_ci95(_scores(e))[0] for e in evs])


def _overlap(ev: dict) -> dict:
    """The target test classes the source trained on (by WordNet concept): the evaluation's record, else (files
    written before it recorded them) from the shipped split files."""
    cd = ev["cross_domain"]
    if cd.get("overlap") is not None:
        return cd["overlap"]
    src, dst = ev["run"]["dataset"], cd["target"]
    train, test = split_class_names(src, "train"), split_class_names(dst, "test")
    if train is None or test is None:
        return {"count": None, "of": None, "classes": {}, "named": "unknown (no split file names the classes)"}
    shared = concept_overlap(src, train, dst, test)
    return {"count": len(shared), "of": len(test), "classes": shared, "named": describe_overlap(dst, shared, src)}


def _put(row: dict, prefix: str, c: Comparison) -> None:
    row.update({f"{prefix}_diff": c.mean, f"{prefix}_ci95": c.ci95, f"{prefix}_seeds": c.seeds,
                f"{prefix}_same_sign": c.same_sign, f"{prefix}_p_t": c.p, f"{prefix}_significant": c.significant,
                f"_{prefix}": c})


def build_rows(evals: list[dict]) -> list[dict]:
    """One row per (method, source → target, setting) over its training seeds: the run's in-domain score, its score
    on the target's test episodes, the target-trained run of the same method (if given) and the paired difference
    to the reference method on the same target episodes; every comparison per seed, then over the seeds."""
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
    by_target: dict[tuple, dict[str, dict[int, dict]]] = {}
    for ev in cross:
        run, target = ev["run"], ev["cross_domain"]["target"]
        key = (run["dataset"], target, int(run["ways"]), int(run["shots"]))
        by_target.setdefault(key, {}).setdefault(run["method"], {})[int(run["seed"])] = ev
    rows = []
    for (src, dst, ways, shots), methods in sorted(by_target.items()):
        sets = {ev["episode_set"] for seeds in methods.values() for ev in seeds.values()}
        if len(sets) > 1:
            raise MetareproError(f"cross-domain evaluations {src} -> {dst} {ways}-way {shots}-shot were made on "
                                 f"different episodes ({', '.join(sorted(sets))}): re-run them with one config")
        ref = methods.get(REFERENCE_METHOD, {})
        for method, seeds in sorted(methods.items(), key=lambda kv: (kv[0] != REFERENCE_METHOD, kv[0])):
            evs = [seeds[s] for s in sorted(seeds)]
            first = evs[0]
            m, c = _over_seeds(evs)
            row = {"method": method, "method_label": method_label(method), "source": src, "target": dst,
                   "ways": ways, "shots": shots, "profile": first["run"].get("profile", ""),
                   "seeds": " ".join(map(str, sorted(seeds))), "episodes": first["episodes"],
                   "episode_set": first["episode_set"], "ci_over": ci_span(len(evs), first["episodes"]),
                   "cross_domain_mean": m, "cross_domain_ci95": c,
                   "input_shape": "x".join(map(str, first["cross_domain"].get("input_shape", []))),
                   "target_image_shape": "x".join(map(str, first["cross_domain"].get("target_image_shape", [])))}
            ov = _overlap(first)
            row.update(overlap_classes=ov["count"], overlap_of=ov["of"], overlap_named=ov["named"])
            without = [e["without_overlap"] for e in evs if (e.get("without_overlap") or {}).get("per_episode")]
            if len(without) == len(evs):
                row["without_overlap_mean"], row["without_overlap_ci95"] = _over_seeds(without)
                row["without_overlap_classes"] = without[0]["classes"]
            own = [in_domain[k] for s in sorted(seeds) if (k := (src, method, ways, shots, s)) in in_domain]
            if own:
                row["in_domain_mean"], row["in_domain_ci95"] = _over_seeds(own)
            trained = {s: in_domain[k] for s in sorted(seeds) if (k := (dst, method, ways, shots, s)) in in_domain
                       and in_domain[k].get("episode_set") == first["episode_set"]}
            if trained:
                row["target_trained_mean"], row["target_trained_ci95"] = _over_seeds(list(trained.values()))
                _put(row, "vs_target_trained",
                     compare_seeds([(_scores(seeds[s]), _scores(t)) for s, t in trained.items()]))
            common = [s for s in sorted(seeds) if s in ref]
            if method != REFERENCE_METHOD and common:
                cmp = compare_seeds([(_scores(seeds[s]), _scores(ref[s])) for s in common])
                row["reference"] = REFERENCE_METHOD
                _put(row, "vs_reference", cmp)
                row["vs_reference_p_wilcoxon"] = cmp.p_wilcoxon
            rows.append(row)
    return rows


def _g(row: dict, key: str) -> float:
    v = row.get(key)
    return float("nan") if v is None else float(v)


def render_markdown(title: str, rows: list[dict]) -> str:
    lines = [f"# {title}", "", "## Target test classes the source trained on (by WordNet concept)", ""]
    pairs = {(r["source"], r["target"]): r for r in rows}
    lines += [_pipe_table(["Source → target", "Target test classes the source trained on", "Which (source classes)"],
                          [[f"{_label(s)} → {_label(t)}",
                            "?" if r["overlap_classes"] is None else f"{r['overlap_classes']} of {r['overlap_of']}",
                            r["overlap_named"] or "none"] for (s, t), r in sorted(pairs.items())]), ""]
    dropped = any(r.get("without_overlap_mean") is not None for r in rows)
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        lines += [f"## {mine[0]['method_label']}", ""]
        body = []
        for r in mine:
            ci = lambda k: _fmt_ci(_g(r, f"{k}_mean"), _g(r, f"{k}_ci95"), 2)  # noqa: E731
            body.append([f"{_label(r['source'])} → {_label(r['target'])}", f"{r['ways']}-way {r['shots']}-shot",
                         ci("in_domain"), ci("cross_domain")] + ([ci("without_overlap")] if dropped else [])
                        + [ci("target_trained"), r["ci_over"]] + claim_cells(r.get("_vs_target_trained"), 2))
        lines += [_pipe_table(["Source → target", "Setting", "In-domain (source test)", "Cross-domain (target test)"]
                              + (["Cross-domain without the overlap"] if dropped else [])
                              + ["Trained on target (in-domain)", "CI spans",
                                 "Cross-domain − trained on target (paired Δ ± CI)", "Seeds with Δ's sign",
                                 "p (t over seeds)", "Significant (Δ's CI spans)"], body), ""]
    lines += ["## Methods compared on the same target episodes", ""]
    body = []
    for r in rows:
        if r.get("reference") is None:
            continue
        body.append([f"{_label(r['source'])} → {_label(r['target'])}", f"{r['ways']}-way {r['shots']}-shot",
                     r["method_label"], method_label(r["reference"])] + claim_cells(r.get("_vs_reference"), 2))
    lines += [_pipe_table(["Source → target", "Setting", "Method", "vs", "Paired difference (points)",
                           "Seeds with Δ's sign", "p (t over seeds)", "Significant (Δ's CI spans)"], body)
              if body else "(no reference-method run on these targets)", ""]
    shapes = sorted({(r["source"], r["target"], r["input_shape"], r["target_image_shape"]) for r in rows})
    lines += ["## Notes", "",
              "- Accuracy in % over the fixed test episodes. Rows from several training seeds: the mean of the "
              "per-seed means ± the 95% Student-t interval t(0.975, s−1) · std / √s across them (`CI spans`: \"3 "
              "seeds × 600 episodes\"); a row marked \"1 seed: episode CI only\" has mean ± 1.96 · std / √n over "
              "its episodes, which measures the test sample and not the training run, and supports no finding.",
              "- Every cross-domain row of one target uses that target's fixed test episodes, the same ones runs "
              "trained on the target are tested on, for every training seed. A comparison is paired per seed on "
              "those episodes (the mean per-episode difference), then its mean ± the Student-t 95% CI over the seeds "
              "and the one-sample t-test p (scipy.stats.ttest_1samp); `Seeds with Δ's sign` is the share of seeds "
              f"whose difference has the sign of the mean. `Significant` needs {MIN_CLAIM_SEEDS} or more seeds and a "
              "CI that excludes 0; one seed shows the episode CI and no p.",
              "- Target images are converted to the source model's input (channels: 1→3 repeated, 3→1 BT.601 luma; "
              "size: antialiased bilinear) and normalised with the *source's* training statistics stored in model.pt: "
              + "; ".join(f"{_label(s)} → {_label(t)}: {ti or '?'} → {si or '?'}" for s, t, si, ti in shapes) + ".",
              "- Class overlap is by WordNet concept (WordNet 3.0): miniImageNet's and tieredImageNet's classes are "
              "WordNet ids, CIFAR-100's map through the shipped table `src/metarepro/data/concepts/cifar100_wordnet.csv`, "
              "every CUB species is a bird; a target test class overlaps a source training class when their concepts "
              "are equal or one is a hypernym of the other (\"bus\" covers \"school bus\"). Such pairs are evaluated "
              "and the overlap named above; only a pair cut from one image collection that shares classes "
              "(CIFAR-FS ↔ FC100) is refused. `Cross-domain without the overlap` (experiments with `drop_overlap: "
              "true`) scores the same number of episodes drawn only from the other target test classes.",
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
