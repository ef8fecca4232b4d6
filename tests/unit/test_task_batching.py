"""A meta-batch run as one stacked task (MetaLearner.task_batching, the sinusoid MLP's per-task weights) gives
the same meta-gradient, loss and metric as the per-task loop, for every method that opts in."""
import numpy as np
import pytest
import torch

from metarepro.data.sinusoid import SinusoidTasks
from metarepro.methods import build
from metarepro.methods.base import Task
from metarepro.models.mlp import MLP

CASES = {
    "maml": dict(inner_lr=0.01, inner_steps=2),
    "fomaml": dict(inner_lr=0.01, inner_steps=2),
    "metasgd": dict(init_lr_range=[0.005, 0.1]),
    "mamlpp": dict(inner_lr=0.01, inner_steps=3, derivative_order_annealing=False),   # MSL weights, LSLR
    "mamlpp@first_order_phase": dict(inner_lr=0.01, inner_steps=3),                   # DA: first order at epoch 0
    "pamela": dict(inner_lr=0.01, inner_steps=4, q_mode="per_step", skip=True, skip_window=2),
    "pamela@shared": dict(inner_lr=0.01, inner_steps=3, q_mode="shared", skip=False),
}


def _tasks(n=6, shots=5):
    gen = SinusoidTasks()
    rng = np.random.default_rng(0)
    return [gen.task(rng, shots, 7) for _ in range(n)]


def _meta_grads(method, args, tasks, stack):
    torch.manual_seed(0)
    learner = build(method.split("@")[0], MLP((1,), 1).double(), "regression", **args).double()
    learner.train()
    learner.task_batching = stack
    tasks = [Task(*(getattr(t, f).double() for f in ("x_support", "y_support", "x_query", "y_query")))
             for t in tasks]
    assert learner.can_stack(tasks) == stack
    opt = torch.optim.SGD(learner.parameters(), lr=0.0)      # lr 0: keeps the weights, exposes .grad
    stats = learner.meta_step(tasks, opt)
    return stats, {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stacked_meta_batch_equals_the_per_task_loop(case):
    tasks = _tasks()
    s_loop, g_loop = _meta_grads(case, CASES[case], tasks, stack=False)
    s_stack, g_stack = _meta_grads(case, CASES[case], tasks, stack=True)
    assert set(g_loop) == set(g_stack) and len(g_loop) > 0
    for k in g_loop:
        np.testing.assert_allclose(g_stack[k].numpy(), g_loop[k].numpy(), rtol=1e-6, atol=1e-9, err_msg=k)
    assert s_stack["loss"] == pytest.approx(s_loop["loss"], rel=1e-9)
    assert s_stack["metric"] == pytest.approx(s_loop["metric"], rel=1e-9)


def test_stacking_is_skipped_when_it_does_not_apply():
    tasks = _tasks(3)
    learner = build("maml", MLP((1,), 1), "regression", inner_lr=0.01)
    assert learner.can_stack(tasks)
    assert not learner.can_stack(tasks[:1])                               # nothing to batch
    assert not learner.can_stack(tasks[:2] + _tasks(1, shots=3))          # unequal shapes
    assert not build("metalstm", MLP((1,), 1), "regression").can_stack(tasks)   # method does not opt in


def test_task_linear_with_per_task_weights_matches_linear_per_task():
    from metarepro.models.mlp import TaskLinear
    lin = TaskLinear(3, 2)
    W, b = torch.randn(4, 2, 3), torch.randn(4, 2)
    x = torch.randn(4, 5, 3)
    out = torch.func.functional_call(lin, {"weight": W, "bias": b}, (x,))
    for t in range(4):
        torch.testing.assert_close(out[t], torch.nn.functional.linear(x[t], W[t], b[t]))
