"""Evaluation on fixed test episodes: mean, 95% CI and per-episode scores after 0..K inner steps.

The episodes are a pure function of (dataset, split, ways, shots, evaluation seed), so every method
is evaluated on identical episodes (see `episode_set` in eval.json) and can be compared pair-wise.

- At the run's shots -> eval.json. At other shots (`shots`) -> eval_{shots}shot.json, on the fixed episodes a
  `shots`-shot run is tested on, so the two compare pair-wise (e.g. Li et al.'s 5-shot-trained sinusoid models
  tested with 10 and 20 points).
- Cross-domain (`target`, prepared in `target_dir`) -> eval_xdomain_{target}.json: the same episodes that runs
  trained on the target are tested on, converted to the run's input shape and channels and normalised with the
  run's own training statistics (stored in model.pt). The target test classes that the source trained on (same or
  hypernym-related WordNet concept, metarepro.classes) are recorded; refused, naming them, when the two datasets
  are cut from one image collection. With `drop_overlap`, the episodes are scored again drawn only from the other
  test classes ("without_overlap").
- An outer-loss term with a test-time hook (`predicts_at_test`, e.g. CML's co-learner) is scored beside the base
  method on the same adapted learner (eval.json's entry named by the add-on card's `eval_key`); evaluation never
  names the add-on.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from . import addons
from .addon_cards import card as addon_card
from . import data as datasets
from . import numerics
from .formats import EVAL_FILE, MODEL_FILE
from .loop import progress_bar
from .methods.base import tap_outputs
from .runtime import load_learner
from .stats import mean_ci95 as mean_ci
from .classes import concept_overlap, describe_overlap, overlap_error, same_collection
from .utils import (MetareproError, git_revision, peak_memory_mb, resolve_device, set_determinism, set_threads,
                    write_json_atomic)

log = logging.getLogger("metarepro.evaluate")

TEST_SPLIT = "test"
N_FITS = 3          # sinusoid tasks drawn for the Finn et al. Fig. 2-style plot
FIT_STEPS = (0, 1, 10)


@dataclass
class Scores:
    """What scoring the test episodes gives: the final score per episode, the score after every inner step on the
    first `curve_episodes`, the test-time hook's score per episode (None without one), the method's per-step
    internals, and the wall time of the base method's scoring and of the hook's, apart."""
    final: np.ndarray
    by_step: np.ndarray
    hook: np.ndarray | None
    diagnostics: list[dict]
    wall: float
    hook_wall: float


def evaluate(run_dir: str | Path, threads: int = 1, progress: bool = True, device: str = "auto",
             shots: int | None = None, target: str | None = None, target_dir: str | None = None,
             target_options: dict | None = None, drop_overlap: bool = False) -> Path:
    """Evaluate the run in `run_dir` on its fixed test episodes -> run_dir/eval.json; with `shots` other than the
    run's, on the fixed `shots`-shot episodes -> eval_{shots}shot.json; with `target` (a dataset prepared in
    `target_dir`, options `target_options`), cross-domain on the target's test episodes ->
    eval_xdomain_{target}.json, and with `drop_overlap` also without the target classes the source trained on.
    See the module docstring."""
    run_dir = Path(run_dir)
    if shots is not None and shots < 1:
        raise MetareproError(f"--shots must be >= 1, got {shots}")
    if target is not None and (shots is not None or not target_dir):
        raise MetareproError("a cross-domain evaluation (--target) needs --target-data and takes no --shots")
    set_threads(threads)
    # strict numerics reach evaluation too: deterministic algorithms, as in meta-training (eval.json records it)
    if numerics.strict_requested():
        set_determinism(True)
    device = resolve_device(device)
    learner, run, state = load_learner(run_dir / MODEL_FILE, device)
    members = ensemble_members(learner, state)
    hook = test_time_term(learner, run, state, device)
    ev = run.evaluation
    if ev.get("analysis_episodes") and not getattr(learner, "gradient_based", False):
        raise MetareproError(f"evaluation.analysis_episodes: method {run.method!r} has no inner loop whose "
                             "adaptation could be analysed (gradient-based methods only)")
    k = run.shots if shots is None else int(shots)
    dataset, dataset_args, data_dir, model_input, xdomain = run.dataset, run.dataset_args, run.data_dir, None, None
    if target is not None:
        xdomain = cross_domain_input(run, state, target, str(target_dir))
        dataset, dataset_args, data_dir = target, dict(target_options or {}), str(target_dir)
        model_input = (tuple(xdomain["input_shape"]), xdomain["normalization"])
    seed = datasets.eval_seed(ev["seed"], dataset, TEST_SPLIT, run.ways, k)
    eps = datasets.episodes(dataset, dataset_args, data_dir, TEST_SPLIT, run.ways, k, ev["queries"], seed, model_input)
    steps = learner.eval_inner_steps
    desc = f"eval {run.method} {run.dataset}" + (f"->{target}" if target else "") + f" {run.ways}w{k}s"
    scores = score_episodes(learner, members, hook, eps, ev, steps, device, progress_bar(range(ev["episodes"]),
                                                                                          desc, progress))
    result = summarize(learner, run, state, eps, k, steps, scores, hook, device)
    n_analysis = min(int(ev.get("analysis_episodes") or 0), ev["episodes"])
    if n_analysis:
        result["analysis"] = representation_analysis(learner, eps, n_analysis, steps, device)
    if datasets.get(run.dataset).task_type == "regression":     # the true curves beside the predictions
        result["fits"] = sinusoid_fits(learner.cpu(), eps, max(steps, max(FIT_STEPS)))
    if xdomain is not None:
        result["cross_domain"] = xdomain
        if drop_overlap:
            result["without_overlap"] = _score_without_overlap(learner, members, xdomain, result, dataset,
                                                               dataset_args, data_dir, run.ways, k, ev, seed,
                                                               model_input, steps, device)
        out = run_dir / f"eval_xdomain_{target}.json"
    else:
        out = run_dir / (EVAL_FILE if k == run.shots else f"eval_{k}shot.json")
    write_json_atomic(out, result)
    log.info("%s: %s %.4f +- %.4f over %d %d-shot episodes of %s (%d inner steps)", run_dir, result["metric"],
             result["mean"], result["ci95"], ev["episodes"], k, dataset, steps)
    return out


def score_episodes(learner: Any, members: list[Any], hook: Any, eps: Any, ev: dict, steps: int, device: str,
                   episodes: Iterable[int]) -> Scores:
    """Adapt to and score each test episode (`episodes`: their indices, e.g. behind a progress bar). The score
    after every inner step (the accuracy/MSE-vs-steps curve) is recorded on the first `curve_episodes` episodes,
    the headline score after the last step on all of them."""
    n_curve = min(int(ev.get("curve_episodes", ev["episodes"])), ev["episodes"])
    t0 = time.perf_counter()
    by_step = np.full((n_curve, steps + 1), np.nan)
    final = np.zeros(ev["episodes"])
    hooked = np.zeros(ev["episodes"]) if hook is not None else None
    hook_wall = 0.0
    diagnostics: list[dict] = []     # the method's per-step internals (Meta-LSTM: gates) on the curve episodes
    for i in episodes:
        task = eps.episode(i).to(device)
        # the test-time hook (CML's co-learner) reads the feature map of the scored query pass (the last forward of
        # the block), so it scores the very adaptation the base method is scored on, without adapting a second
        # time (an ensemble's hook adapts its own copy: hook_score)
        single = not members
        with learner.record_diagnostics() if single and i < n_curve else contextlib.nullcontext() as diag, \
                tap_outputs(learner.model, [hook.tap] if single and hook is not None else []) as tapped:
            scores = episode_scores(learner, members, task, steps, every_step=i < n_curve)
        if i < n_curve:
            by_step[i] = scores
            if diag is not None:
                diagnostics.append(diag)
        final[i] = scores[-1]
        if hooked is not None:
            t_hook = time.perf_counter()
            if members:
                hooked[i] = hook_score(learner, hook, task, steps)
            else:
                with torch.no_grad():
                    hooked[i] = learner.metric(hook.predict(tapped[hook.tap], task), task.y_query)
            hook_wall += time.perf_counter() - t_hook
    if hasattr(episodes, "close"):
        episodes.close()
    # the base method's own test time: the hook's scoring (the co-learner head; for an ensemble another
    # adaptation) is timed apart, so that X + CML's inference cost compares with X's
    return Scores(final, by_step, hooked, diagnostics, time.perf_counter() - t0 - hook_wall, hook_wall)


def summarize(learner: Any, run: Any, state: dict, eps: Any, k: int, steps: int, scores: Scores, term: Any,
              device: str) -> dict[str, Any]:
    """eval.json's content (metarepro.formats.EVAL_REQUIRED and the rest) from the scored episodes; `term`: the
    outer-loss term with a test-time hook, or None."""
    ev, final, hook = run.evaluation, scores.final, scores.hook
    mean, ci = mean_ci(final)
    n_params = learner.parameter_count()      # what runs at test (MAML++'s replaced batch-norm weights left out)
    result: dict[str, Any] = {
        "run": run.to_dict(),
        "metric": "accuracy" if learner.task_type == "classification" else "mse",
        "split": TEST_SPLIT,
        "test_shots": k,            # = run.shots unless evaluated at other shots (eval_{k}shot.json)
        "episodes": int(ev["episodes"]),
        "queries": int(ev["queries"]),
        "episode_set": eps.fingerprint(ev["episodes"]),
        "inner_steps": steps,
        "mean": mean,
        "ci95": ci,
        "std": float(final.std(ddof=1)) if len(final) > 1 else 0.0,
        "per_episode": final.tolist(),
        # by_step[j]: after j inner steps, over the first `curve_episodes` episodes (the last step's entry
        # equals `mean` when curve_episodes == episodes)
        "curve_episodes": len(scores.by_step),
        "by_step": {str(j): dict(zip(("mean", "ci95"), mean_ci(scores.by_step[:, j]))) for j in range(steps + 1)},
        "wall_time_s": scores.wall,
        "adapt_time_per_task_s": scores.wall / max(1, ev["episodes"]),
        "peak_memory_mb": peak_memory_mb(),
        "peak_gpu_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None,
        "device": device,
        "numerics": numerics.describe(),    # CPU, ISA in use, library versions, strict-mode settings
        "git_revision": git_revision(),
        "checkpoint": {"iteration": state["best_iteration"], "val_mean": state["val_mean"],
                       "val_ci95": state["val_ci95"], "train_wall_time_s": state["wall_time_s"]},
        # what inference uses, and what meta-training learned: the add-ons' own parameters too (CML's co-learner,
        # dropped at test), for tables of parameters against accuracy
        "parameters": n_params,
        "meta_trained_parameters": n_params + (sum(p.numel() for p in term.parameters()) if term is not None else 0),
    }
    if hook is not None:
        # the test-time hook's score (CML's dagger): the same adapted learner's query features classified by the
        # outer-loss term instead of the head
        m, c = mean_ci(hook)
        result[addon_card(term.name).eval_key] = {"mean": m, "ci95": c,
                                                  "std": float(hook.std(ddof=1)) if len(hook) > 1 else 0.0,
                                                  "per_episode": hook.tolist(), "wall_time_s": scores.hook_wall}
    if state.get("ensemble") and len(state["ensemble"]) > 1:
        result["ensemble"] = [{"iteration": m["iteration"], "val_mean": m["val_mean"]} for m in state["ensemble"]]
    result.update(summarize_diagnostics(scores.diagnostics))
    return result


def representation_analysis(learner: Any, eps: Any, n: int, steps: int, device: str) -> dict[str, Any]:
    """The representation analyses of CML's paper on the first `n` test episodes, from the backbone's `features`
    output (the pooled vector the head reads) on each query set:
    - cka: linear CKA (metarepro.stats.linear_cka) between the features before adaptation and after the `steps`
      inner steps, per episode, with mean and 95% CI: 1 = adaptation left the representation as it was;
    - tsne: episode 0's adapted query features mapped to 2-D by scikit-learn's t-SNE (PCA init, fixed seed), with
      their labels."""
    from sklearn.manifold import TSNE

    from .stats import linear_cka
    cka, first = [], None
    for i in range(n):
        task = eps.episode(i).to(device)
        feats = {}
        for j, adapted in enumerate(learner.adapt_trajectory(task, steps, create_graph=False)):
            if j in (0, steps):
                with torch.no_grad(), tap_outputs(learner.model, ["features"]) as found:
                    adapted(task.x_query)
                feats[j] = found["features"].flatten(1).double().cpu().numpy()
        cka.append(linear_cka(feats[0], feats[steps]))
        if first is None:
            first = (feats[steps], task.y_query.cpu().numpy())
    x, y = first
    labels = [int(v) for v in y] if learner.task_type == "classification" else [0] * len(x)   # regression: one colour
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", random_state=0).fit_transform(x)
    m, c = mean_ci(np.asarray(cka))
    return {"episodes": n, "features": "features",
            "cka": {"mean": m, "ci95": c, "per_episode": [float(v) for v in cka]},
            "tsne": {"episode": 0, "xy": np.round(xy, 4).tolist(), "labels": labels}}


def test_time_term(learner: Any, run: Any, state: dict, device: str) -> Any:
    """The run's trained outer-loss term that has a test-time hook (`predicts_at_test`, e.g. CML's co-learner,
    scored as CML's dagger), from model.pt's `addons`; None when the run has none."""
    if not state.get("addons"):
        return None
    spec = datasets.get(run.dataset)
    extras = addons.build(run, learner, datasets.input_shape(run.dataset, run.data_dir, run.dataset_args),
                          1 if spec.task_type == "regression" else run.ways)
    extras.terms.load_state_dict(state["addons"])
    term = next((t for t in extras.terms if t.predicts_at_test), None)
    return term.to(device).eval() if term is not None else None


def hook_score(learner: Any, term: Any, task: Any, steps: int) -> float:
    """A test-time hook's query metric: adapt as the base method does, then predict from the adapted learner's
    tapped query features with the term (CML's dagger: the co-learner predicting at test time)."""
    adapted = learner.adapt(task, steps, create_graph=False)
    with torch.no_grad(), tap_outputs(learner.model, [term.tap]) as found:
        adapted(task.x_query)
        return learner.metric(term.predict(found[term.tap], task), task.y_query)


def ensemble_members(learner: Any, state: dict) -> list[Any]:
    """The learners of a test-time ensemble (train.ensemble > 1: model.pt's `ensemble`, the best validation
    checkpoints, best first), each in eval mode; [] for a single model."""
    entries = state.get("ensemble") or []
    if len(entries) < 2:
        return []
    members = []
    for e in entries:
        m = copy.deepcopy(learner)
        m.load_state_dict(e["state"])
        members.append(m.eval())
    return members


def ensemble_scores(members: list[Any], task: Any, steps: int, every_step: bool = True) -> list[float]:
    """An ensemble's query metric after 0..steps inner steps (or the last only): each member adapts on its own
    and the members' query outputs are averaged before scoring (logits for classification, as MAML++'s official
    evaluation averages its top models' predictions; predictions for regression)."""
    total: list | None = None
    for m in members:
        outs = []
        for learner in m.adapt_trajectory(task, steps, create_graph=False):
            if every_step or learner.step == steps:
                with torch.no_grad():
                    outs.append(learner(task.x_query))
        total = outs if total is None else [a + b for a, b in zip(total, outs)]
    assert total is not None
    return [members[0].metric(o / len(members), task.y_query) for o in total]


def episode_scores(learner: Any, members: list[Any], task: Any, steps: int, every_step: bool = True) -> list[float]:
    """One test episode's query metric after 0..steps inner steps (or the last only): the ensemble's where the
    run has one (`members`), else the learner's."""
    if members:
        return ensemble_scores(members, task, steps, every_step=every_step)
    return learner.evaluate_task(task, steps, every_step=every_step)


def _score_without_overlap(learner: Any, members: list, xdomain: dict, result: dict, dataset: str,
                           dataset_args: dict, data_dir: str, ways: int, k: int, ev: dict, seed: int,
                           model_input: Any, steps: int, device: str) -> dict[str, Any]:
    """The same number of episodes, same seed, drawn only from the target test classes the source did not train
    on: the cross-domain score with the concept overlap dropped (nothing to drop: `result`'s own episodes)."""
    if not xdomain["overlap"]["count"]:
        return {"classes": xdomain["overlap"]["of"], "dropped": 0, "episodes": int(ev["episodes"]),
                "episode_set": result["episode_set"], "mean": result["mean"], "ci95": result["ci95"],
                "per_episode": result["per_episode"]}
    names = datasets.class_names(data_dir, TEST_SPLIT)
    gone = [names.index(c) for c in xdomain["overlap"]["classes"]]
    left = len(names) - len(gone)
    if left < ways:
        return {"classes": left, "dropped": len(gone), "episodes": 0,
                "note": f"only {left} test classes left after dropping {len(gone)}: fewer than {ways} ways"}
    eps = datasets.episodes(dataset, dataset_args, data_dir, TEST_SPLIT, ways, k, ev["queries"], seed, model_input,
                            exclude=gone)
    final = np.zeros(ev["episodes"])
    for i in range(ev["episodes"]):
        final[i] = episode_scores(learner, members, eps.episode(i).to(device), steps, every_step=False)[-1]
    m, c = mean_ci(final)
    return {"classes": left, "dropped": len(gone), "episodes": int(ev["episodes"]),
            "episode_set": eps.fingerprint(ev["episodes"]), "mean": m, "ci95": c, "per_episode": final.tolist()}


def cross_domain_input(run: Any, state: dict, target: str, target_dir: str) -> dict[str, Any]:
    """How the target's test images reach the run's model: its input shape and normalisation (from model.pt,
    else recomputed from the source's prepared data), after checking that the pair is allowed. Everything is
    checked before any episode is scored."""
    if datasets.get(target).generated or datasets.get(run.dataset).generated:
        raise MetareproError(f"cross-domain evaluation needs image datasets; got {run.dataset} -> {target}")
    if target == run.dataset:
        raise MetareproError(f"cross-domain target {target!r} is the run's own dataset: that is eval.json")
    test_names = datasets.class_names(target_dir, TEST_SPLIT)
    shared = concept_overlap(run.dataset, datasets.class_names(run.data_dir, "train"), target, test_names)
    if shared and same_collection(run.dataset, target):
        raise MetareproError(overlap_error(run.dataset, target, shared))
    shape = state.get("input_shape") or list(datasets.input_shape(run.dataset, run.data_dir, run.dataset_args))
    norm = state["normalization"] if "normalization" in state else datasets.normalization(run.dataset, run.data_dir)
    return {"source": run.dataset, "target": target, "input_shape": list(shape),
            "target_image_shape": list(datasets.input_shape(target, target_dir)),
            "normalization": norm, "normalization_from": f"{run.dataset} train split (the run's own)",
            "conversion": "channels 1->3 repeat / 3->1 BT.601 luma; antialiased bilinear resize to input_shape",
            # the target test classes the source trained on: same WordNet concept or hypernym-related
            "overlap": {"count": len(shared), "of": len(test_names), "classes": shared,
                        "named": describe_overlap(target, shared, run.dataset)}}


def summarize_diagnostics(per_episode: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Episodes' record_diagnostics dicts -> eval.json entries, one per group (e.g. "gates"): a per-step
    series becomes {"mean": [...], "ci95": [...]} over the episodes, a {name: series} mapping the per-step
    mean of each name; "episodes" says how many episodes they summarize. No episodes: no entries."""
    out: dict[str, dict[str, Any]] = {}
    for group, first in (per_episode[0].items() if per_episode else ()):
        entry: dict[str, Any] = {}
        for key, value in first.items():
            if isinstance(value, Mapping):
                entry[key] = {name: np.mean([d[group][key][name] for d in per_episode], axis=0).tolist()
                              for name in value}
            else:
                a = np.array([d[group][key] for d in per_episode], dtype=np.float64)   # (episodes, steps)
                stats = [mean_ci(a[:, j]) for j in range(a.shape[1])]
                entry[key] = {"mean": [m for m, _ in stats], "ci95": [c for _, c in stats]}
        entry["episodes"] = len(per_episode)
        out[group] = entry
    return out


def sinusoid_fits(learner, eps, steps: int) -> list[dict]:
    """For a regression dataset (its episodes know the true curve: `eps.tasks.curve`), predictions on a dense grid before and after 1..steps inner steps for a few fixed test tasks."""
    fits = []
    for i in range(N_FITS):
        task = eps.episode(i)
        amp, phase = task.info["amplitude"], task.info["phase"]
        xg, yg = eps.tasks.curve(amp, phase, frequency=task.info.get("frequency", 1.0))
        grid = torch.as_tensor(xg, dtype=torch.float32).view(-1, 1)
        preds = {}
        for learner_j in learner.adapt_trajectory(task, steps, create_graph=False):
            if learner_j.step in FIT_STEPS or learner_j.step == steps:
                with torch.no_grad():
                    preds[str(learner_j.step)] = learner_j(grid).view(-1).tolist()
        fits.append({"amplitude": amp, "phase": phase, "x_support": task.x_support.view(-1).tolist(),
                     "y_support": task.y_support.view(-1).tolist(), "x_grid": xg.tolist(), "y_true": yg.tolist(),
                     "y_pred": preds})
    return fits
