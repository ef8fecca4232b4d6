"""The seams every method plugs into: Task, Learner, MetaLearner (adapt / outcome / forward_with).

The training loop (metarepro.train) and evaluation (metarepro.evaluate) call only these; they never
branch on a method's name. Inner loops use torch.func.functional_call on a params dict and
torch.autograd.grad, with create_graph only for second-order meta-gradients (no module patching).

How the planned methods fit (sketched against these seams before fixing them):
- Meta-SGD / MAML++ LSLR / PAMELA Q_j: extra nn.Parameters on the MetaLearner; `inner_update` uses them.
- MAML++ per-step BN: `forward(params, x, step)` receives the step index.
- PAMELA P^w skip connections: `adapt_trajectory` keeps the last w parameter sets.
- Meta-LSTM: overrides `adapt_trajectory` (the LSTM writes the update; c_0 = the initialisation).
- MTL: a frozen pretrained `model.features` + meta-learned scale/shift params in the params dict.
- AMFS: overrides `adapt_trajectory` with a closed-form kernel solve.
- Meta-LSTM gate values (its Fig. 2): `record_diagnostics` collects them from the trajectory being scored.
- Add-ons (metarepro.addons) compose with any method through the outer step (metarepro.addons.outer) without
  subclassing it: outer-loss
  terms with their own parameters (CML's co-learner) read each TaskOutcome and its tapped query features,
  gradient aggregators (O-AMFS) combine per-task meta-gradients, and task samplers (the hard-task meta-batch)
  receive every task's TaskResult (loss, metric, per-class accuracy) from the training loop.
- ProtoNet / Matching Nets / nearest neighbour: closed-form "adaptation" (0 inner steps) that yields a
  ClosedFormLearner classifying by the support embeddings (`embed`).
- Fine-tune / nearest-neighbour baselines: `needs_pretrained` (the training loop loads the pretrain stage's
  backbone) and `meta_trainable = False` (nothing to meta-train: the loop runs 0 iterations).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ..task import Task, TaskResult

Params = dict[str, Tensor]

__all__ = ["Task", "TaskResult", "TaskOutcome", "StepStats", "Learner", "ClosedFormLearner", "MetaLearner",
           "tap_outputs", "finite_grads", "Params"]


@dataclass
class TaskOutcome:
    """The outer step's view of one adapted task, or of a stack of tasks (Task.stack): the objective with its
    graph, the adapted learner's query output, and the query features that outer-loss terms tap (filled by
    the outer step, metarepro.addons.outer, keyed by module name: e.g. "features" (T, N, d) for the MLP)."""
    loss: Tensor                     # scalar outer objective; for a stack the sum over its tasks
    output: Tensor                   # query predictions (N, ways) or, stacked, (T, N, ...)
    task: Task
    task_losses: Tensor | None = None    # a stack's per-task losses (T,), with the graph
    features: dict[str, Tensor] = field(default_factory=dict)

    def unstack(self) -> "list[TaskOutcome]":
        """One outcome per task (views into a stack's tensors; the outcome itself for a single task)."""
        if not self.task.n_tasks:
            return [self]
        assert self.task_losses is not None, "a stacked outcome needs its per-task losses"
        t = self.task
        return [TaskOutcome(self.task_losses[i], self.output[i],
                            Task(t.x_support[i], t.y_support[i], t.x_query[i], t.y_query[i],
                                 t.classes[i] if t.classes else ()),
                            None, {k: v[i] for k, v in self.features.items()})
                for i in range(t.n_tasks)]

    def results(self, meta: "MetaLearner") -> list[TaskResult]:
        """The detached per-task numbers, one TaskResult per task (a stack's computed at once, without slicing)."""
        if self.task.n_tasks:
            assert self.task_losses is not None, "a stacked outcome needs its per-task losses"
            out, y = self.output.detach(), self.task.y_query
            losses = self.task_losses.detach().tolist()
            if meta.task_type == "regression":
                metrics = F.mse_loss(out, y, reduction="none").flatten(1).mean(1).tolist()
                return [TaskResult(l, m, None, ()) for l, m in zip(losses, metrics)]
            return [o.results(meta)[0] for o in self.unstack()]
        y, out = self.task.y_query, self.output.detach()
        per_class = None
        if meta.task_type == "classification":
            hit = (out.argmax(-1) == y).float()
            ways = int(y.max()) + 1
            per_class = tuple(float(hit[y == c].mean()) * 100.0 for c in range(ways))
        return [TaskResult(float(self.loss.detach()), meta.metric(out, y), per_class, tuple(self.task.classes))]


class StepStats(dict):
    """A meta-step's logged stats (means over the meta-batch: loss, metric, each term's loss, skipped) and, as
    `.tasks`, the TaskResult of every task in meta-batch order."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: list[TaskResult] = []

    def add(self, key: str, value: float) -> None:
        self[key] = self.get(key, 0.0) + value


@contextlib.contextmanager
def tap_outputs(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, Tensor]]:
    """Record the output of `model`'s submodules `names` (e.g. "features"): the dict holds each one's output of
    the last forward inside the block, i.e. the query pass of an outer step. No names: no hooks at all."""
    found: dict[str, Tensor] = {}
    handles = []
    for name in names:
        def hook(_module: nn.Module, _inputs: Any, output: Tensor, name: str = name) -> None:
            found[name] = output
        handles.append(model.get_submodule(name).register_forward_hook(hook))
    try:
        yield found
    finally:
        for h in handles:
            h.remove()


def finite_grads(params: Iterable[Tensor]) -> bool:
    """Whether every gradient of `params` is finite (no inf/NaN from a diverging inner loop)."""
    grads = [p.grad for p in params if p.grad is not None]
    return bool(torch.stack([torch.isfinite(g).all() for g in grads]).all()) if grads else True


class Learner:
    """A model evaluated at a given set of (adapted) parameters, after `step` inner updates. Its forward passes
    are made at `meta.query_slot(step)` (the step index that per-step layers such as MAML++'s batch norm select)."""

    def __init__(self, meta: "MetaLearner", params: Params, step: int) -> None:
        self.meta, self.params, self.step = meta, params, step

    def __call__(self, x: Tensor) -> Tensor:
        return self.meta.forward_with(self.params, x, self.meta.query_slot(self.step))


class ClosedFormLearner(Learner):
    """A learner adapted in closed form (prototypes, attention over the support set): no parameter dict,
    predictions come from `predict` (x (B, ...) -> logits (B, ways))."""

    def __init__(self, meta: "MetaLearner", predict: Callable[[Tensor], Tensor], step: int = 0) -> None:
        super().__init__(meta, {}, step)
        self.predict = predict

    def __call__(self, x: Tensor) -> Tensor:
        return self.predict(x)


class MetaLearner(nn.Module):
    """Base class. Subclasses set `name` and override `inner_update` (or `adapt_trajectory`)."""

    name = "base"
    # Starts from the pretrain stage's backbone (metarepro.pretrain). Registered methods get this and
    # `meta_trainable` from their cards (method_cards.yaml).
    needs_pretrained = False
    # False: no meta-parameters to learn (baselines); the training loop then runs 0 iterations.
    meta_trainable = True
    # True: the method's inner loop is elementwise in the parameters, so the outer step may run a whole meta-batch
    # as one stacked task (Task.stack) when the backbone accepts per-task weights (`task_batched`, e.g. the
    # sinusoid MLP). Same meta-gradient as the per-task loop up to float rounding, and much faster for tiny MLPs,
    # whose cost is per-op overhead (tests/unit/test_task_batching.py checks the equality for every method).
    task_batching = False
    gradient_based = False      # from the method card (metarepro.methods sets it per class)

    def __init__(self, model: nn.Module, task_type: str = "classification", inner_steps: int = 1,
                 eval_inner_steps: int | None = None, first_order: bool = False) -> None:
        super().__init__()
        if task_type not in ("classification", "regression"):
            raise ValueError(f"task_type must be classification or regression, got {task_type!r}")
        self.model = model
        self.task_type = task_type
        self.inner_steps = int(inner_steps)
        self.eval_inner_steps = int(eval_inner_steps if eval_inner_steps is not None else inner_steps)
        self.first_order = bool(first_order)

    # ---- model evaluation ---------------------------------------------------------------
    def init_params(self) -> Params:
        """The meta-learned initialisation theta (what the inner loop starts from)."""
        return dict(self.model.named_parameters())

    def forward_with(self, params: Params, x: Tensor, step: int = 0) -> Tensor:
        return functional_call(self.model, params, (x,))

    def embed(self, x: Tensor) -> Tensor:
        """The backbone's features without its classifier head: (B, ...) -> (B, feature_dim)."""
        features = getattr(self.model, "features", None)
        if features is None:
            raise TypeError(f"{type(self.model).__name__} has no `features` module: {self.name} needs the "
                            "backbone's embedding (every backbone in metarepro.models has one)")
        return features(x)

    def query_slot(self, updates: int) -> int:
        """The step index `forward_with` gets for the learner after `updates` inner updates (default: `updates`;
        the support pass of inner step j gets j)."""
        return updates

    def embed_task(self, task: Task, joint: bool) -> tuple[Tensor, Tensor | None]:
        """Support features (S, D) and, with `joint`, query features (Q, D) from ONE forward pass of support and
        query together, so batch norm (which normalises with the batch's statistics) sees all S + Q images, as
        Snell et al.'s ProtoNet code does and as MAML's query pass does; a 5-way 1-shot support set alone is a
        batch of 5. Without `joint`: the support alone, and None."""
        if not joint:
            return self.embed(task.x_support), None
        n = len(task.x_support)
        z = self.embed(torch.cat([task.x_support, task.x_query]))
        return z[:n], z[n:]

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        if self.task_type == "classification":
            if out.dim() == 3:
                # a stack of tasks (T, N, ways): the SUM of per-task mean losses (as for regression below)
                return self.task_losses(out, y).sum()
            return F.cross_entropy(out, y)
        if out.dim() == 3:
            # a stack of tasks (T, N, d): the SUM of per-task mean losses, so that gradients w.r.t. per-task
            # parameters (T, ...) are each task's own gradient
            return F.mse_loss(out, y, reduction="none").flatten(1).mean(1).sum()
        return F.mse_loss(out, y)

    def metric(self, out: Tensor, y: Tensor) -> float:
        """Accuracy in percent (classification) or mean squared error (regression)."""
        with torch.no_grad():
            if self.task_type == "classification":
                return float((out.argmax(-1) == y).float().mean()) * 100.0
            return float(F.mse_loss(out, y))

    # ---- inner loop ---------------------------------------------------------------------
    def inner_update(self, params: Params, grads: dict[str, Tensor], step: int) -> Params:
        raise NotImplementedError

    def support_grads(self, params: Params, task: Task, step: int, create_graph: bool) -> dict[str, Tensor]:
        """Gradient of the support loss at `params` (inner step `step`) w.r.t. every parameter that requires
        grad; kept in the graph only for second-order meta-gradients (`create_graph`)."""
        with torch.enable_grad():
            loss = self.loss(self.forward_with(params, task.x_support, step), task.y_support)
            names = [k for k, v in params.items() if v.requires_grad]
            grads = torch.autograd.grad(loss, [params[k] for k in names], create_graph=create_graph)
        if not create_graph:
            grads = tuple(g.detach() for g in grads)
        return dict(zip(names, grads))

    def per_task(self, params: Params, task: Task) -> Params:
        """For a stacked task (Task.stack), one copy of every parameter per task: (T, ...) views of theta."""
        if not task.n_tasks:
            return params
        return {k: v.unsqueeze(0).expand(task.n_tasks, *v.shape) for k, v in params.items()}

    def adapt_trajectory(self, task: Task, steps: int, create_graph: bool) -> Iterator[Learner]:
        """Yield the learner after 0, 1, ..., `steps` inner steps on the support set."""
        params = self.init_params()
        if not create_graph:
            # evaluation / first order: gradients w.r.t. detached copies, no graph to theta
            params = {k: v.detach().requires_grad_(True) for k, v in params.items()} if not self.training \
                else params
        params = self.per_task(params, task)
        yield Learner(self, params, 0)
        for j in range(steps):
            grads = self.support_grads(params, task, j, create_graph)
            params = self.inner_update(params, grads, j)
            if not self.training:
                params = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            yield Learner(self, params, j + 1)

    def adapt(self, task: Task, steps: int | None = None, create_graph: bool | None = None) -> Learner:
        """Inner loop: adapt to the task's support set; returns the adapted learner."""
        steps = self.inner_steps if steps is None else steps
        if create_graph is None:
            create_graph = self.training and not self.first_order
        learner = None
        for learner in self.adapt_trajectory(task, steps, create_graph):
            pass
        assert learner is not None
        return learner

    # ---- outer loop ---------------------------------------------------------------------
    def outcome(self, task: Task) -> TaskOutcome:
        """Adapt to the task's support set and score the query set: the outer objective and what the add-ons read
        (per-task loss, metric, per-class accuracy; the tapped query features are added by the outer step).
        Methods with another outer objective (MAML++'s multi-step loss) override this."""
        learner = self.adapt(task)
        out = learner(task.x_query)
        per_task = self.task_losses(out, task.y_query)
        loss = per_task.sum() if per_task is not None else self.loss(out, task.y_query)   # = self.loss's ops
        return TaskOutcome(loss, out, task, per_task)

    def task_losses(self, out: Tensor, y: Tensor) -> Tensor | None:
        """Per-task losses (T,) of a stacked task's output (T, N, ...), with the graph; None for one task."""
        if out.dim() == 3 and self.task_type == "regression":
            return F.mse_loss(out, y, reduction="none").flatten(1).mean(1)
        if out.dim() == 3:
            return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        return None

    def meta_loss(self, task: Task) -> tuple[Tensor, dict[str, float]]:
        """Outer objective for one task: query loss of the adapted learner (and its logged stats)."""
        o = self.outcome(task)
        return o.loss, {"loss": float(o.loss.detach()), "metric": self.metric(o.output, task.y_query)}

    def replaced_parameters(self) -> set[str]:
        """Names of backbone parameters (model.named_parameters) that the method replaces by its own and never
        runs, e.g. the batch-norm weights that MAML++'s per-step batch norm swaps for its per-step copies."""
        return set()

    def parameter_count(self) -> int:
        """The parameters that run at test: every parameter of the learner less those it replaces."""
        skip = {id(self.model.get_parameter(n)) for n in self.replaced_parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def feature_parameters(self) -> list[Tensor]:
        """The feature extractor psi: the backbone's parameters outside its `head` (every backbone has one)."""
        return [p for n, p in self.model.named_parameters() if not n.startswith("head.")]

    # ---- outer-step hooks (metarepro.addons.outer runs the outer step) ------------------------
    def outer_gradient(self, gradient: Callable[[], "StepStats"], params: list[Tensor]) -> "StepStats":
        """Leave the meta-batch's meta-gradient in `.grad` of `params` and return the logged stats: `gradient()`
        computes it at the current weights. A method that needs it elsewhere (Sharp-MAML's perturbed weights)
        calls `gradient` more than once."""
        return gradient()

    def end_meta_step(self) -> None:
        """Called after each outer update (MAML++ advances its meta-iteration counter)."""

    def finite_grads(self) -> bool:
        """Whether every meta-parameter's gradient is finite (no inf/NaN from a diverging inner loop)."""
        return finite_grads(self.parameters())

    def can_stack(self, tasks: list[Task]) -> bool:
        """Whether the outer step runs `tasks` as one stacked task (see `task_batching`)."""
        model = self.model
        if not (self.task_batching and getattr(model, "task_batched", False) and getattr(model, "stack_tasks", True)
                and len(tasks) > 1):
            return False
        shapes = {tuple(getattr(t, f).shape for f in ("x_support", "y_support", "x_query", "y_query")) for t in tasks}
        return len(shapes) == 1 and not any(t.n_tasks for t in tasks)

    # ---- training-loop hooks (optional) -------------------------------------------------
    def set_iteration(self, iteration: int) -> None:
        """Called with the 0-based meta-iteration before each outer step (schedules, e.g. MAML++)."""

    def param_groups(self, meta_lr: float) -> list[dict]:
        """The meta-optimizer's parameter groups (default: every trainable parameter at the meta lr; MTL gives its
        scaling/shifting a group of its own)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def make_scheduler(self, optimizer: torch.optim.Optimizer, total_iterations: int):
        """Meta-lr scheduler stepped once per meta-iteration, or None for a constant meta lr (default)."""
        return None

    # ---- evaluation ---------------------------------------------------------------------
    @contextlib.contextmanager
    def record_diagnostics(self) -> Iterator[dict[str, dict[str, Any]] | None]:
        """Per-inner-step internals of the last adaptation run inside the block (e.g. Meta-LSTM's gate values),
        so that evaluation records them from the very trajectory it scores instead of adapting twice.

        Yields None (the default: the method has none) or a dict that is filled when the block exits:
        {group: {key: per-step values (steps,), or {name: per-step values}}}, plain floats. evaluate() writes
        each group into eval.json: a series as its per-step mean and 95% CI over episodes, a {name: series}
        mapping as per-step means.
        """
        yield None

    def score_task(self, task: Task, steps: int | None = None) -> tuple[float, float]:
        """(query metric, support-set loss) after `steps` inner steps: what validation records. The support loss
        after adaptation is the "inner loss" whose spread over tasks the loss-variance figure follows."""
        steps = self.eval_inner_steps if steps is None else steps
        learner = self.adapt(task, steps, create_graph=False)
        with torch.no_grad():
            return (self.metric(learner(task.x_query), task.y_query),
                    float(self.loss(learner(task.x_support), task.y_support)))

    def evaluate_task(self, task: Task, steps: int | None = None, every_step: bool = True) -> list[float]:
        """Query metric after 0..steps inner steps (index = number of steps); with `every_step=False` only after
        the last step (a one-element list). Scoring the query set dominates the cost of an evaluation episode
        (e.g. 75 query images against 5 support images), so validation and most test episodes score once."""
        steps = self.eval_inner_steps if steps is None else steps
        scores = []
        for learner in self.adapt_trajectory(task, steps, create_graph=False):
            if every_step or learner.step == steps:
                with torch.no_grad():
                    scores.append(self.metric(learner(task.x_query), task.y_query))
        return scores
