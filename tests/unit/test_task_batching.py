"""A meta-batch run as one stacked task (MetaLearner.task_batching, the sinusoid MLP's per-task weights) gives
the same meta-gradient, loss and metric as the per-task loop, for every method that opts in."""
import numpy as np
import pytest
import torch

from metarepro.addons.outer import meta_step
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
    stats = meta_step(learner, tasks, opt)
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
    from metarepro.models.task_layers import TaskLinear
    lin = TaskLinear(3, 2)
    W, b = torch.randn(4, 2, 3), torch.randn(4, 2)
    x = torch.randn(4, 5, 3)
    out = torch.func.functional_call(lin, {"weight": W, "bias": b}, (x,))
    for t in range(4):
        torch.testing.assert_close(out[t], torch.nn.functional.linear(x[t], W[t], b[t]))


# ---- Conv-4: grouped convolutions, per-task batch norm (the Omniglot protocol's meta-batch of 32 small tasks) ----
def _image_tasks(n=5, queries=2):
    from tiny import random_image_tasks  # tests/unit/tiny.py
    return [Task(*(getattr(t, f).double() if t.x_support.dtype.is_floating_point and f.startswith("x") else
                   getattr(t, f) for f in ("x_support", "y_support", "x_query", "y_query")))
            for t in random_image_tasks(n, queries, seed=3, size=16)]


def _conv_meta_grads(method, args, tasks, stack, terms=()):
    from metarepro.models.conv4 import Conv4
    torch.manual_seed(0)
    learner = build(method.split("@")[0], Conv4((1, 16, 16), 5, filters=4).double(), "classification",
                    **args).double()
    learner.train()
    learner.model.stack_tasks = stack
    assert learner.can_stack(tasks) == stack
    opt = torch.optim.SGD(learner.parameters(), lr=0.0)
    stats = meta_step(learner, tasks, opt, terms=terms)
    return stats, {k: p.grad.clone() for k, p in learner.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("case", sorted(CASES))
def test_stacked_conv4_meta_batch_equals_the_per_task_loop(case):
    """Per-task weights through grouped convolutions and per-task batch-norm statistics give each task's own
    meta-gradient (float64, 1e-6), loss, accuracy and per-class accuracies."""
    tasks = _image_tasks()
    args = {k: (0.1 if k == "inner_lr" else v) for k, v in CASES[case].items()}
    s_loop, g_loop = _conv_meta_grads(case, args, tasks, stack=False)
    s_stack, g_stack = _conv_meta_grads(case, args, tasks, stack=True)
    assert set(g_loop) == set(g_stack) and len(g_loop) > 0
    for k in g_loop:
        np.testing.assert_allclose(g_stack[k].numpy(), g_loop[k].numpy(), rtol=1e-6, atol=1e-9, err_msg=k)
    assert s_stack["loss"] == pytest.approx(s_loop["loss"], rel=1e-9)
    # accuracy is a float32 mean of 0/1 hits: over all T*N queries at once vs per task, equal up to its rounding
    assert s_stack["metric"] == pytest.approx(s_loop["metric"], rel=1e-6)
    assert [(r.loss, r.class_accuracy) for r in s_stack.tasks] == \
        [(pytest.approx(r.loss, rel=1e-9), r.class_accuracy) for r in s_loop.tasks]


def test_stacked_conv4_forward_normalises_each_task_with_its_own_statistics():
    from metarepro.models.conv4 import Conv4
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 5, filters=3).double()
    params = {k: v.detach().unsqueeze(0).repeat(4, *[1] * v.dim()) + 0.1 * torch.randn(4, *v.shape).double()
              for k, v in model.named_parameters()}
    # tasks on very different scales: shared statistics would mix them
    x = torch.randn(4, 6, 1, 16, 16).double() * torch.tensor([1.0, 10.0, 0.1, 3.0]).double().view(4, 1, 1, 1, 1)
    out = torch.func.functional_call(model, params, (x,))
    assert out.shape == (4, 6, 5)
    for t in range(4):
        one = torch.func.functional_call(model, {k: v[t] for k, v in params.items()}, (x[t],))
        torch.testing.assert_close(out[t], one, rtol=1e-10, atol=1e-10)


def test_conv4_stacking_is_off_with_running_statistics_or_tapped_features():
    """Running statistics cannot be kept per task, and a co-learner reads (T, N, ...) features: both loop."""
    from metarepro import addons
    from metarepro.models.conv4 import Conv4
    tasks = _image_tasks(3)
    plain = build("maml", Conv4((1, 16, 16), 5, filters=4), "classification")
    assert not plain.can_stack(tasks)                      # Conv-4 loops unless asked (train.stack_tasks)
    plain.model.stack_tasks = True
    assert plain.can_stack(tasks)
    running = build("maml", Conv4((1, 16, 16), 5, filters=4, bn_running_stats=True), "classification")
    running.model.stack_tasks = True
    assert not running.can_stack(tasks)

    def grads(stack):
        torch.manual_seed(0)
        learner = build("maml", Conv4((1, 16, 16), 5, filters=4).double(), "classification", inner_lr=0.1).double()
        learner.model.stack_tasks = stack
        term = addons.make("cml", learner, (1, 16, 16), 5).double()
        opt = torch.optim.SGD(list(learner.parameters()) + list(term.parameters()), lr=0.0)
        meta_step(learner, tasks, opt, terms=[term])
        return [p.grad.clone() for p in list(learner.parameters()) + list(term.parameters())]
    for a, b in zip(grads(True), grads(False)):
        assert torch.equal(a, b)          # the same per-task loop both times
