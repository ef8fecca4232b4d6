"""MAML / FO-MAML against hand-written computations of one inner step and the meta-gradient (to 1e-6)."""
import numpy as np
import pytest
import torch
from torch import nn

from metarepro.addons.outer import meta_step
from metarepro.methods import build
from metarepro.methods.base import Task

try:  # pytest's rootdir import mode puts tests/unit on sys.path
    from .tiny import Linear1D, regression_task
except ImportError:
    from tiny import Linear1D, regression_task


def _hand_maml(w, b, alpha, x, y, u, v):
    """One inner SGD step on MSE, query loss, and the exact first/second-order meta-gradients."""
    x, y, u, v = (a.ravel() for a in (x, y, u, v))
    r = w * x + b - y
    gw, gb = 2 * np.mean(r * x), 2 * np.mean(r)
    w1, b1 = w - alpha * gw, b - alpha * gb
    q = w1 * u + b1 - v
    loss_q = np.mean(q ** 2)
    grad_q = np.array([2 * np.mean(q * u), 2 * np.mean(q)])          # dL_q/d(w', b')
    hess = 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])  # Hessian of L_s
    second = (np.eye(2) - alpha * hess) @ grad_q                      # chain rule through the step
    return (w1, b1), loss_q, second, grad_q


@pytest.mark.parametrize("method,first_order", [("maml", False), ("fomaml", True)])
def test_one_step_and_meta_gradient_match_hand_computation(method, first_order):
    w, b, alpha = 0.7, -0.2, 0.05
    (x, y, u, v), task = regression_task()
    learner = build(method, Linear1D(w, b), "regression", inner_lr=alpha, inner_steps=1)
    learner.train()
    (w1, b1), loss_q, second, first = _hand_maml(w, b, alpha, x, y, u, v)

    adapted = learner.adapt(task)
    assert adapted.params["w"].item() == pytest.approx(w1, abs=1e-6)
    assert adapted.params["b"].item() == pytest.approx(b1, abs=1e-6)

    loss, _ = learner.meta_loss(task)
    assert loss.item() == pytest.approx(loss_q, abs=1e-6)
    loss.backward()
    expected = first if first_order else second
    got = np.array([learner.model.w.grad.item(), learner.model.b.grad.item()])
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    if not first_order:  # the second-order term must actually matter in this example
        assert np.abs(second - first).max() > 1e-3


def test_meta_step_averages_tasks_and_applies_adam():
    w, b, alpha = 0.7, -0.2, 0.05
    (x, y, u, v), task = regression_task()
    task2 = Task(task.x_query, task.y_query, task.x_support, task.y_support)
    learner = build("maml", Linear1D(w, b), "regression", inner_lr=alpha)
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    meta_step(learner, [task, task2], opt)
    g1 = _hand_maml(w, b, alpha, x, y, u, v)[2]
    g2 = _hand_maml(w, b, alpha, u, v, x, y)[2]
    g = (g1 + g2) / 2
    assert learner.model.w.item() == pytest.approx(w - 0.1 * g[0], abs=1e-6)
    assert learner.model.b.item() == pytest.approx(b - 0.1 * g[1], abs=1e-6)


def test_classification_inner_step_matches_softmax_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    W0, c0 = lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()
    xs = torch.randn(4, 3, dtype=torch.float64); ys = torch.tensor([0, 1, 1, 0])
    learner = build("maml", lin, "classification", inner_lr=0.4)
    learner.eval()
    adapted = learner.adapt(Task(xs, ys, xs, ys))
    X = xs.numpy()
    logits = X @ W0.T + c0
    p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    d = (p - np.eye(2)[ys.numpy()]) / len(X)                 # dCE/dlogits, mean reduction
    np.testing.assert_allclose(adapted.params["weight"].detach().numpy(), W0 - 0.4 * d.T @ X, atol=1e-6)
    np.testing.assert_allclose(adapted.params["bias"].detach().numpy(), c0 - 0.4 * d.sum(0), atol=1e-6)


def test_evaluation_does_not_touch_meta_parameters_and_reports_every_step():
    (x, y, u, v), task = regression_task()
    learner = build("maml", Linear1D(0.7, -0.2), "regression", inner_lr=0.05, eval_inner_steps=4)
    learner.eval()
    scores = learner.evaluate_task(task)
    assert len(scores) == 5 and scores[0] == pytest.approx(np.mean((0.7 * u.ravel() - 0.2 - v.ravel()) ** 2))
    assert learner.model.w.grad is None and learner.model.w.item() == 0.7


def test_final_only_evaluation_scores_the_last_step_like_the_full_curve():
    _, task = regression_task()
    learner = build("maml", Linear1D(0.7, -0.2), "regression", inner_lr=0.05, eval_inner_steps=4)
    learner.eval()
    full = learner.evaluate_task(task)
    assert learner.evaluate_task(task, every_step=False) == [full[-1]]
    assert learner.evaluate_task(task, steps=0, every_step=False) == [full[0]]


def test_score_task_gives_the_query_score_and_the_support_loss_after_adaptation():
    (x, y, u, v), task = regression_task()
    learner = build("maml", Linear1D(0.7, -0.2), "regression", inner_lr=0.05, eval_inner_steps=2)
    learner.eval()
    q0, s0 = learner.score_task(task, steps=0)
    assert q0 == pytest.approx(np.mean((0.7 * u.ravel() - 0.2 - v.ravel()) ** 2))
    assert s0 == pytest.approx(np.mean((0.7 * x.ravel() - 0.2 - y.ravel()) ** 2))
    q2, s2 = learner.score_task(task)
    adapted = learner.adapt(task, 2)
    w, b = adapted.params["w"].item(), adapted.params["b"].item()
    assert q2 == pytest.approx(learner.evaluate_task(task)[-1])
    assert s2 == pytest.approx(np.mean((w * x.ravel() + b - y.ravel()) ** 2)) and s2 < s0
