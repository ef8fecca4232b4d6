"""The add-on kinds' interfaces: task samplers (data.sampling.TaskSampler), meta-gradient aggregators, outer-loss terms.

Add-ons compose with any base method through the outer step (metarepro.addons.outer) and the training loop, never by subclassing a
method: `maml+cml`, `mamlpp+cml+oamfs`, `fomaml+ht` are all the unchanged method plus its add-ons.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..data.sampling import TaskSampler
from ..methods.base import MetaLearner, TaskOutcome


class Aggregator:
    """Combines the per-task gradient vectors of the meta-parameters into the meta-gradient."""

    name = "base"
    # True: meta_step hands `combine` the (T, P) matrix of per-task gradients (tasks are then never stacked).
    # False: meta_step accumulates backward passes of objective / T, the mean (the default, `mean`).
    per_task_gradients = True

    def combine(self, grads: Tensor) -> Tensor:
        """(T, P) per-task gradient vectors -> (P,) meta-gradient."""
        raise NotImplementedError

    def combine_with(self, grads: Tensor, learner_columns: Tensor) -> Tensor:
        """As `combine`, told which of the P columns are the learner's own meta-parameters (the rest belong to
        outer-loss terms such as CML's co-learner). An aggregator that weighs tasks by their gradients overrides
        it to weigh by the learner's columns only; the default ignores the split."""
        return self.combine(grads)


class OuterTerm(nn.Module):
    """An extra outer-loss term with its own parameters: objective_i = L_query_i + weight * term(outcome_i).

    Its parameters join the meta-optimizer (param group with learning rate `lr`), are saved in checkpoints and in
    model.pt under "addons", and are dropped at test time: evaluation builds the base method only, so inference
    costs exactly what the base method costs.
    """

    name = "base"
    # True: a control run. The term's own parameters learn as usual, but its gradient on the learner's parameters
    # is replaced, per meta-step, by isotropic Gaussian noise of the same norm, on the parameters that gradient
    # reaches less the backbone's head: the feature extractor (metarepro.addons.outer)
    noise_control = False
    tap: str | None = None      # the backbone submodule whose query-pass output the term reads (TaskOutcome.features)
    # The test-time hook: True when the term can also predict the query labels from the tapped features
    # (`predict(features, task) -> logits`); evaluation then scores it beside the base method (eval.json
    # key its card's `eval_key` names, CML's dagger) without naming the add-on
    predicts_at_test = False

    def __init__(self, weight: float, lr: float) -> None:
        # no defaults: an add-on's settings come from its card (metarepro.addons.make fills them in)
        super().__init__()
        if weight < 0:
            raise ValueError(f"{self.name}: weight must be >= 0, got {weight}")
        self.weight, self.lr = float(weight), float(lr)

    def forward(self, outcome: TaskOutcome) -> Tensor:   # a scalar; for a stack the sum over its tasks
        raise NotImplementedError


__all__ = ["Aggregator", "MetaLearner", "OuterTerm", "TaskOutcome", "TaskSampler"]
