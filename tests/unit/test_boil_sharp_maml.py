"""BOIL and Sharp-MAML against hand-written computations of one inner step and the meta-update (to 1e-6)."""
import numpy as np
import pytest
import torch
from torch import nn

from metarepro.addons.outer import meta_step
from metarepro.methods import build
from metarepro.methods.base import Task
from metarepro.methods.sharp_maml import sam_perturbation

try:
    from .test_maml import _hand_maml
    from .tiny import Linear1D, regression_task
except ImportError:
    from test_maml import _hand_maml
    from tiny import Linear1D, regression_task


class BodyHead(nn.Module):
    """y = h_w * (f_w * x + f_b) + h_b: a one-unit body `features` and a one-unit `head`."""

    def __init__(self, fw, fb, hw, hb):
        super().__init__()
        self.features, self.head = nn.Linear(1, 1).double(), nn.Linear(1, 1).double()
        with torch.no_grad():
            self.features.weight.fill_(fw); self.features.bias.fill_(fb)
            self.head.weight.fill_(hw); self.head.bias.fill_(hb)

    def forward(self, x):
        return self.head(self.features(x))


def test_boil_adapts_the_body_and_never_the_head():
    fw, fb, hw, hb, alpha = 0.7, -0.2, 1.3, 0.4, 0.05
    (x, y, u, v), task = regression_task()
    learner = build("boil", BodyHead(fw, fb, hw, hb), "regression", inner_lr=alpha)
    learner.train()
    xr, yr = x.ravel(), y.ravel()
    r = hw * (fw * xr + fb) + hb - yr                       # residuals of the support set
    g_fw, g_fb = 2 * np.mean(r * hw * xr), 2 * np.mean(r * hw)
    adapted = learner.adapt(task).params
    assert adapted["features.weight"].item() == pytest.approx(fw - alpha * g_fw, abs=1e-6)
    assert adapted["features.bias"].item() == pytest.approx(fb - alpha * g_fb, abs=1e-6)
    assert adapted["head.weight"].item() == hw and adapted["head.bias"].item() == hb     # exactly unchanged
    # ... while the outer loop does update the head (a meta-gradient reaches it)
    loss, _ = learner.meta_loss(task)
    loss.backward()
    assert learner.model.head.weight.grad.abs().item() > 1e-6


def test_sam_perturbation_is_radius_times_the_normalised_gradient():
    e = sam_perturbation({"a": torch.tensor([3.0]), "b": torch.tensor([[4.0]])}, 0.5)
    assert e["a"].tolist() == pytest.approx([0.3]) and e["b"].tolist() == [[pytest.approx(0.4)]]
    assert not e["a"].requires_grad


def test_sharp_maml_outer_sam_updates_theta_with_the_meta_gradient_at_theta_plus_e():
    w, b, alpha, lr, radius = 0.7, -0.2, 0.05, 0.1, 0.3
    (x, y, u, v), task = regression_task()
    learner = build("sharp_maml", Linear1D(w, b), "regression", inner_lr=alpha, inner_steps=1, sam_inner=False,
                    radius=radius)
    learner.train()
    g = _hand_maml(w, b, alpha, x, y, u, v)[2]               # second-order meta-gradient at theta
    e = radius * g / np.linalg.norm(g)
    g_shifted = _hand_maml(w + e[0], b + e[1], alpha, x, y, u, v)[2]
    meta_step(learner, [task], torch.optim.SGD(learner.parameters(), lr=lr))
    assert learner.model.w.item() == pytest.approx(w - lr * g_shifted[0], abs=1e-6)
    assert learner.model.b.item() == pytest.approx(b - lr * g_shifted[1], abs=1e-6)
    assert np.abs(g_shifted - g).max() > 1e-3               # the perturbation matters in this example


def test_sharp_maml_inner_sam_steps_with_the_support_gradient_at_phi_plus_e():
    w, b, alpha, radius = 0.7, -0.2, 0.05, 0.3
    (x, y, u, v), task = regression_task()
    learner = build("sharp_maml", Linear1D(w, b), "regression", inner_lr=alpha, inner_steps=1, sam_outer=False,
                    radius=radius)
    xr, yr = x.ravel(), y.ravel()

    def grad(w_, b_):
        r = w_ * xr + b_ - yr
        return np.array([2 * np.mean(r * xr), 2 * np.mean(r)])
    g = grad(w, b)
    e = radius * g / np.linalg.norm(g)
    expected = np.array([w, b]) - alpha * grad(w + e[0], b + e[1])
    learner.train()
    adapted = learner.adapt(task).params
    np.testing.assert_allclose([adapted["w"].item(), adapted["b"].item()], expected, atol=1e-6, rtol=0)
    learner.eval()                                           # test-time adaptation: plain gradient descent
    plain = learner.adapt(task).params
    np.testing.assert_allclose([plain["w"].item(), plain["b"].item()], np.array([w, b]) - alpha * g, atol=1e-6)


def test_sharp_maml_without_sam_is_maml():
    (x, y, u, v), task = regression_task()
    grads = {}
    for name, extra in (("maml", {}), ("sharp_maml", {"sam_outer": False, "sam_inner": False})):
        learner = build(name, Linear1D(0.7, -0.2), "regression", inner_lr=0.05, inner_steps=2, **extra)
        meta_step(learner, [task, Task(task.x_query, task.y_query, task.x_support, task.y_support)],
                          torch.optim.SGD(learner.parameters(), lr=0.0))
        grads[name] = [p.grad.clone() for p in learner.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(grads["maml"], grads["sharp_maml"]))
