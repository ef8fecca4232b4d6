"""The outer step: one meta-update of any method on a meta-batch, where the add-on seams meet.

Kept apart from the methods (metarepro.methods.base), as learn2learn keeps its algorithms apart from the loop
that trains them: a method says how it adapts to a task and what its outer objective is (`adapt`, `outcome`,
`forward_with`, and whether a meta-batch can run as one stacked task, `can_stack`); this module turns a
meta-batch into the meta-gradient and the update:

1. every task (or one stack of equal-shape tasks) gives a TaskOutcome, with the query features that the
   outer-loss terms tap;
2. its objective is the method's query loss plus sum_k weight_k * term_k(outcome) (e.g. CML's co-learner);
3. the aggregator combines the per-task gradients of the objectives (the mean aggregator: a backward per task that
   accumulates, which keeps one task's second-order graph in memory at a time; aggregators with
   `per_task_gradients` get the (T, P) matrix of per-task gradient vectors instead);
4. a term's noise control swaps the term's gradient on the learner for Gaussian noise of its norm; the gradient
   diagnostics log norms and cosines of the terms' shares;
5. the update: skipped when a gradient is not finite, else clipped (when asked) and applied by the optimizer.

A method that needs the meta-gradient at more than one point (Sharp-MAML's perturbed weights) does so through
its `outer_gradient` hook; one that keeps a meta-iteration counter (MAML++) advances it in `end_meta_step`.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..methods.base import MetaLearner, StepStats, finite_grads, tap_outputs
from ..task import Task

__all__ = ["meta_step", "meta_gradient", "apply_meta_gradient"]


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    """The Euclidean norm of several tensors taken as one vector."""
    return torch.sqrt(sum((t * t).sum() for t in tensors))


def meta_step(learner: MetaLearner, tasks: list[Task], optimizer: torch.optim.Optimizer,
              grad_clip: float | None = None, aggregator: Any = None, terms: Sequence[Any] = (),
              diagnostics: bool = False) -> StepStats:
    """One outer update of `learner` on a meta-batch (steps 1-5 above). Returns the logged stats (means over the
    tasks) with `.tasks`: one detached TaskResult per task, in order, which the training loop hands to the task
    sampler. `diagnostics`: also log the gradient diagnostics (train.diagnostics_every)."""
    optimizer.zero_grad(set_to_none=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]  # meta-parameters, terms' included
    stats = learner.outer_gradient(lambda: meta_gradient(learner, tasks, params, aggregator, terms, diagnostics),
                                   params)
    stats = apply_meta_gradient(learner, stats, params, optimizer, grad_clip)
    learner.end_meta_step()
    return stats


def meta_gradient(learner: MetaLearner, tasks: list[Task], params: list[Tensor], aggregator: Any = None,
                  terms: Sequence[Any] = (), diagnostics: bool = False) -> StepStats:
    """Steps 1-4: fill `.grad` of `params` (zeroed beforehand) with the meta-gradient of the meta-batch at the
    learner's current weights; return the stats."""
    per_task = aggregator is not None and aggregator.per_task_gradients
    taps = sorted({t.tap for t in terms if getattr(t, "tap", None)})
    stack = (learner.can_stack(tasks) and not per_task
             and not (taps and not getattr(learner.model, "stacked_taps", True)))
    batches = [Task.stack(tasks)] if stack else tasks
    stats, grads, used = StepStats(), [], set()
    # the terms' shares of the learner's gradient, kept apart for the noise control and the diagnostics (only
    # then is the learner's own share of `params` looked up: meta_step runs every iteration of every method)
    split_terms = [t for t in terms if not per_task and (t.noise_control or diagnostics)]
    own: list[Tensor] = []
    if split_terms or diagnostics:
        mine = {id(p) for p in learner.parameters()}
        own = [p for p in params if id(p) in mine]
    split = {t.name: [torch.zeros_like(p) for p in own] for t in split_terms}
    reached: dict[str, set[int]] = {t.name: set() for t in split_terms}   # own[i] that a term's gradient reaches
    for batch in batches:
        with tap_outputs(learner.model, taps) as features:
            o = learner.outcome(batch)
        o.features.update(features)
        objective = o.loss
        for term in terms:
            extra = term(o)                     # summed over a stack's tasks, like o.loss
            stats.add(f"{term.name}_loss", float(extra.detach()) / len(tasks))
            if term.name in split:
                share = term.weight * extra / len(tasks)
                g = torch.autograd.grad(share, own, retain_graph=True, allow_unused=True)
                for i, (acc, gi) in enumerate(zip(split[term.name], g)):
                    if gi is not None:
                        acc += gi
                        reached[term.name].add(i)
                if term.noise_control:          # the term's own parameters still learn from it
                    share.backward(inputs=list(term.parameters()), retain_graph=True)
                    continue
            objective = objective + term.weight * extra
        if per_task:
            g = torch.autograd.grad(objective, params, allow_unused=True)
            used.update(i for i, gi in enumerate(g) if gi is not None)
            grads.append(torch.cat([(gi if gi is not None else torch.zeros_like(p)).reshape(-1)
                                    for gi, p in zip(g, params)]))
        else:
            (objective / len(tasks)).backward()
        metric = learner.metric(o.output, batch.y_query)   # a stack's: over all its (equal-size) tasks
        stats.add("loss", float(o.loss.detach()) / len(tasks))
        stats.add("metric", metric if batch.n_tasks else metric / len(tasks))
        stats.tasks.extend(o.results(learner))
    for term in terms:
        if term.name in split and term.noise_control:
            _noise_control(learner, own, split[term.name], reached[term.name])
    if per_task:
        mine = {id(p) for p in learner.parameters()}
        learner_columns = torch.cat([torch.full((p.numel(),), id(p) in mine, dtype=torch.bool, device=p.device)
                                     for p in params])
        combined = aggregator.combine_with(torch.stack(grads), learner_columns)      # (T, P) -> (P,)
        offset = 0
        for i, p in enumerate(params):   # a parameter no task's objective reached keeps grad None, as in backward
            p.grad = combined[offset:offset + p.numel()].view_as(p).clone() if i in used else None
            offset += p.numel()
    if diagnostics:
        _log_gradient_diagnostics(learner, stats, own, split, terms)
    return stats


def _noise_control(learner: MetaLearner, own: list[Tensor], share: list[Tensor], reached: set[int]) -> None:
    """The control: in place of a term's gradient, Gaussian noise of the norm that gradient had, on what it reaches
    on the feature side: the learner's parameters it reaches, less the backbone's head (which a co-learner on the
    features reaches only through the inner loop's second-order terms); drawn from torch's global RNG, which
    checkpoints save, so a resumed run is the same."""
    head = {id(p) for p in learner.model.head.parameters()}
    idx = sorted(i for i in reached if id(own[i]) not in head)
    noise = [torch.randn_like(own[i]) for i in idx]
    scale = _norm([share[i] for i in idx]) / _norm(noise).clamp_min(1e-30) if idx else 0.0
    for i, z in zip(idx, noise):
        p = own[i]
        p.grad = z * scale if p.grad is None else p.grad + z * scale


def _log_gradient_diagnostics(learner: MetaLearner, stats: StepStats, own: list[Tensor],
                              split: dict[str, list[Tensor]], terms: Sequence[Any]) -> None:
    """grad_norm_features: the norm of the meta-gradient on psi (all objectives); per term, the norm of its share
    on psi and the cosine similarity of that share with the rest (the query loss's share)."""
    feats = {id(p) for p in learner.feature_parameters()}
    idx = [i for i, p in enumerate(own) if id(p) in feats]
    total = [own[i].grad if own[i].grad is not None else torch.zeros_like(own[i]) for i in idx]
    stats["grad_norm_features"] = float(_norm(total))
    for term in terms:
        if term.name not in split:
            continue
        share = [split[term.name][i] for i in idx]
        # the query loss's share: the total less this term's (under the noise control the total holds noise
        # instead, so the rest is the learner's own gradient plus that noise)
        rest = [t - s for t, s in zip(total, share)] if not term.noise_control else total
        a = torch.cat([g.reshape(-1) for g in share])
        b = torch.cat([g.reshape(-1) for g in rest])
        stats[f"{term.name}_grad_norm_features"] = float(a.norm())
        stats[f"{term.name}_cos_features"] = float(F.cosine_similarity(a, b, dim=0, eps=1e-30))


def apply_meta_gradient(learner: MetaLearner, stats: StepStats, params: list[Tensor],
                        optimizer: torch.optim.Optimizer, grad_clip: float | None) -> StepStats:
    """Step 5: the update from the gradients in `.grad`: skipped when one is not finite, else clipped (when asked)
    and applied by the optimizer."""
    if not finite_grads(params):
        # an inner loop diverged on some task of the batch (inf/NaN loss): skip the update instead of writing
        # NaN into every meta-parameter; the training loop counts and logs skipped steps
        optimizer.zero_grad(set_to_none=True)
        stats["skipped"] = 1.0
        return stats
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(learner.parameters(), grad_clip)
    optimizer.step()
    return stats
