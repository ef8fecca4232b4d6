"""Meta-SGD against hand-written computations of the inner step and the meta-gradients to theta and alpha (1e-6)."""
import numpy as np
import pytest
import torch
from torch import nn

from metarepro import methods
from metarepro.addons.outer import meta_step
from metarepro.methods.base import Task
from metarepro.models.conv4 import Conv4

try:  # pytest's rootdir import mode puts tests/unit on sys.path
    from .tiny import Linear1D, random_image_tasks, regression_task
except ImportError:
    from tiny import Linear1D, random_image_tasks, regression_task


def _hand_metasgd(w, b, aw, ab, x, y, u, v):
    """theta' = theta - alpha * g on MSE; query loss; meta-gradients to theta (2nd and 1st order) and to alpha."""
    x, y, u, v = (a.ravel() for a in (x, y, u, v))
    r = w * x + b - y
    g = np.array([2 * np.mean(r * x), 2 * np.mean(r)])                   # support gradient at theta
    A = np.diag([aw, ab])
    w1, b1 = np.array([w, b]) - A @ g
    q = w1 * u + b1 - v
    loss_q = np.mean(q ** 2)
    grad_q = np.array([2 * np.mean(q * u), 2 * np.mean(q)])             # dL_q/dtheta'
    hess = 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])  # Hessian of L_s
    theta_second = (np.eye(2) - A @ hess).T @ grad_q                     # dtheta'/dtheta = I - A H
    theta_first = grad_q
    alpha_grad = -g * grad_q                                              # dtheta'/dalpha = -diag(g)
    return (w1, b1), loss_q, theta_second, theta_first, alpha_grad


def _learner(w, b, aw, ab, **kw):
    learner = methods.build("metasgd", Linear1D(w, b), "regression", **kw)
    with torch.no_grad():
        learner.alpha["w"].fill_(aw)
        learner.alpha["b"].fill_(ab)
    return learner


@pytest.mark.parametrize("first_order", [False, True])
def test_one_step_and_meta_gradients_to_theta_and_alpha(first_order):
    w, b, aw, ab = 0.7, -0.2, 0.05, 0.13      # distinct per-parameter rates: alpha is not a scalar
    (x, y, u, v), task = regression_task()
    learner = _learner(w, b, aw, ab, first_order=first_order)
    learner.train()
    (w1, b1), loss_q, second, first, alpha_grad = _hand_metasgd(w, b, aw, ab, x, y, u, v)

    adapted = learner.adapt(task)
    assert adapted.params["w"].item() == pytest.approx(w1, abs=1e-6)
    assert adapted.params["b"].item() == pytest.approx(b1, abs=1e-6)

    loss, _ = learner.meta_loss(task)
    assert loss.item() == pytest.approx(loss_q, abs=1e-6)
    loss.backward()
    got_theta = np.array([learner.model.w.grad.item(), learner.model.b.grad.item()])
    np.testing.assert_allclose(got_theta, first if first_order else second, atol=1e-6, rtol=0)
    got_alpha = np.array([learner.alpha["w"].grad.item(), learner.alpha["b"].grad.item()])
    np.testing.assert_allclose(got_alpha, alpha_grad, atol=1e-6, rtol=0)   # same in first and second order
    if not first_order:
        assert np.abs(second - first).max() > 1e-3


def test_meta_step_updates_theta_and_alpha_together():
    w, b, aw, ab = 0.7, -0.2, 0.05, 0.13
    (x, y, u, v), task = regression_task()
    learner = _learner(w, b, aw, ab)
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    meta_step(learner, [task], opt)
    _, _, g_theta, _, g_alpha = _hand_metasgd(w, b, aw, ab, x, y, u, v)
    assert learner.model.w.item() == pytest.approx(w - 0.1 * g_theta[0], abs=1e-6)
    assert learner.model.b.item() == pytest.approx(b - 0.1 * g_theta[1], abs=1e-6)
    assert learner.alpha["w"].item() == pytest.approx(aw - 0.1 * g_alpha[0], abs=1e-6)
    assert learner.alpha["b"].item() == pytest.approx(ab - 0.1 * g_alpha[1], abs=1e-6)


def test_classification_step_is_elementwise_alpha_times_softmax_gradient():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    W0, c0 = lin.weight.detach().numpy().copy(), lin.bias.detach().numpy().copy()
    learner = methods.build("metasgd", lin, "classification")
    aW = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]); ac = np.array([0.7, 0.8])
    with torch.no_grad():
        learner.alpha["weight"].copy_(torch.tensor(aW)); learner.alpha["bias"].copy_(torch.tensor(ac))
    xs = torch.randn(4, 3, dtype=torch.float64); ys = torch.tensor([0, 1, 1, 0])
    learner.eval()
    adapted = learner.adapt(Task(xs, ys, xs, ys))
    X = xs.numpy()
    logits = X @ W0.T + c0
    p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    d = (p - np.eye(2)[ys.numpy()]) / len(X)                 # dCE/dlogits, mean reduction
    np.testing.assert_allclose(adapted.params["weight"].detach().numpy(), W0 - aW * (d.T @ X), atol=1e-6)
    np.testing.assert_allclose(adapted.params["bias"].detach().numpy(), c0 - ac * d.sum(0), atol=1e-6)


def test_alpha_init_shapes_registration_and_names():
    torch.manual_seed(0)
    model = Conv4((1, 28, 28), 5, filters=4)
    learner = methods.build("metasgd", model, "classification", init_lr=0.01)
    for name, p in model.named_parameters():
        a = learner.lr(name)
        assert a.shape == p.shape and torch.all(a == 0.01)
    ids = {id(p) for p in learner.parameters()}
    assert all(id(a) in ids for a in learner.alpha.values())
    assert "alpha.features__0__0__weight" in learner.state_dict()
    ranged = methods.build("metasgd", Conv4((1, 28, 28), 5, filters=4), "classification", init_lr_range=[0.005, 0.1])
    vals = torch.cat([a.flatten() for a in ranged.alpha.values()])
    assert vals.min() >= 0.005 and vals.max() <= 0.1 and vals.std() > 0.01


def test_smoke_conv4_trains_and_state_dict_round_trips():
    torch.manual_seed(0)
    learner = methods.build("metasgd", Conv4((1, 28, 28), 5, filters=4), "classification", init_lr=0.01)
    alpha0 = learner.alpha["head__weight"].detach().clone()
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    learner.train()
    for i in range(3):
        stats = meta_step(learner, random_image_tasks(2, queries=3, seed=i), opt)
        assert np.isfinite(stats["loss"])
    assert not torch.equal(alpha0, learner.alpha["head__weight"])   # alpha is meta-learned
    learner.eval()
    task = random_image_tasks(1, queries=3, seed=9)[0]
    scores = learner.evaluate_task(task, 2)
    torch.manual_seed(1)
    clone = methods.build("metasgd", Conv4((1, 28, 28), 5, filters=4), "classification", init_lr=0.5)
    clone.load_state_dict(learner.state_dict())
    clone.eval()
    assert clone.evaluate_task(task, 2) == scores
    for k, v in learner.state_dict().items():
        assert torch.equal(v, clone.state_dict()[k]), k
