"""I-AMFS (closed-form RBF kernel ridge regression inner loop) against a numpy reference (float64, 1e-6): its
predictions, the meta-gradient through the solve, and both regularisers."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from metarepro import models
from metarepro.methods import build
from metarepro.methods.base import Task

XS = np.array([[0.2, -1.0], [1.5, 0.3], [-0.7, 0.8], [0.1, 0.1]])
YS = np.array([0, 1, 2, 1])
XQ = np.array([[0.3, -0.8], [1.2, 0.5], [-0.5, 1.0]])
YQ = np.array([0, 1, 2])


class Identity2(nn.Module):
    """features: z = x (a 2x2 identity linear layer, so the model has parameters); a head to drop."""

    def __init__(self):
        super().__init__()
        self.features = nn.Linear(2, 2).double()
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2)); self.features.bias.zero_()
        self.head = nn.Linear(2, 3).double()

    def forward(self, x):
        return self.head(self.features(x))


def _task():
    t = lambda a, dt=torch.float64: torch.tensor(a, dtype=dt)   # noqa: E731
    return Task(t(XS), t(YS, torch.long), t(XQ), t(YQ, torch.long))


def _reference(sigma, lam, tau, mu=0.0, gamma=0.0):
    """numpy: logits of the query points and the outer loss with both regularisers."""
    d = XS.shape[1]
    zs, zq = XS / math.sqrt(d), XQ / math.sqrt(d)
    k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * sigma ** 2))   # noqa: E731
    K = k(zs, zs)
    Y = np.eye(3)[YS]
    alpha = np.linalg.solve(K + lam * np.eye(len(zs)), Y)
    logits = tau * k(zq, zs) @ alpha
    p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    ce = -np.mean(np.log(p[np.arange(len(YQ)), YQ]))
    g = p - np.eye(3)[YQ]                                   # d(per-point CE)/d(logits)
    info = 0.5 * np.linalg.slogdet(np.eye(len(zs)) + K / lam)[1]
    return logits, ce + mu * np.mean((g ** 2).sum(1)) + gamma * info, info


def _learner(**kw):
    learner = build("amfs", Identity2(), "classification", bandwidth=0.8, ridge=0.3, scale=4.0, **kw)
    return learner.double()


def test_closed_form_predictions_match_the_numpy_solve():
    learner = _learner().eval()
    logits = learner.adapt(_task())(torch.tensor(XQ))
    np.testing.assert_allclose(logits.detach().numpy(), _reference(0.8, 0.3, 4.0)[0], atol=1e-6, rtol=0)
    # the query set passed as the task's own tensor uses the joint (transductive) embedding: same numbers here
    t = _task()
    np.testing.assert_allclose(learner.adapt(t)(t.x_query).detach().numpy(), _reference(0.8, 0.3, 4.0)[0], atol=1e-6)


@pytest.mark.parametrize("mu,gamma", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.2), (0.3, 0.2)])
def test_outer_loss_and_its_gradient_through_the_solve(mu, gamma):
    learner = _learner(grad_norm_weight=mu, info_weight=gamma).train()
    o = learner.outcome(_task())
    assert o.loss.item() == pytest.approx(_reference(0.8, 0.3, 4.0, mu, gamma)[1], abs=1e-6)
    o.loss.backward()
    got = [learner.log_sigma.grad.item(), learner.log_lambda.grad.item(), learner.log_tau.grad.item()]
    eps, base = 1e-6, np.log([0.8, 0.3, 4.0])
    want = []
    for i in range(3):                                       # central differences of the numpy loss, in log space
        up, dn = base.copy(), base.copy()
        up[i] += eps; dn[i] -= eps
        want.append((_reference(*np.exp(up), mu, gamma)[1] - _reference(*np.exp(dn), mu, gamma)[1]) / (2 * eps))
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert learner.model.features.weight.grad is not None      # the backbone is meta-learned through the solve


def test_information_term_is_the_gp_information_gain():
    learner = _learner().eval()
    info = next(iter(learner.adapt_trajectory(_task(), 0, False))).info
    assert info.item() == pytest.approx(_reference(0.8, 0.3, 4.0)[2], abs=1e-9)


def test_regression_on_the_sinusoid_mlp_and_the_solve_never_inverts():
    torch.manual_seed(0)
    learner = build("amfs", models.build("mlp", (1,), 1), "regression")
    x, y = torch.linspace(-5, 5, 10).view(-1, 1), torch.sin(torch.linspace(-5, 5, 10)).view(-1, 1)
    task = Task(x, y, x[:4] + 0.1, y[:4])
    out = learner.adapt(task)(task.x_query)
    assert out.shape == (4, 1) and torch.isfinite(out).all()
    import inspect
    from metarepro.methods import amfs
    assert "inv(" not in inspect.getsource(amfs)


def _reference_fixed_alpha(sigma, tau, alpha):
    """numpy: the outer cross-entropy with the solve's coefficients held fixed (first order)."""
    d = XS.shape[1]
    zs, zq = XS / math.sqrt(d), XQ / math.sqrt(d)
    kq = np.exp(-((zq[:, None] - zs[None]) ** 2).sum(-1) / (2 * sigma ** 2))
    logits = tau * kq @ alpha
    p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    return -np.mean(np.log(p[np.arange(len(YQ)), YQ]))


def test_first_order_amfs_holds_the_solve_constant():
    """first_order: the same predictions, but the meta-gradient treats alpha = (K + lambda I)^-1 Y as a constant:
    lambda gets none, sigma and tau get the central differences of the loss with alpha fixed (numpy, 1e-6)."""
    learner = _learner(first_order=True).train()
    o = learner.outcome(_task())
    assert o.loss.item() == pytest.approx(_reference(0.8, 0.3, 4.0)[1], abs=1e-6)
    o.loss.backward()
    assert learner.log_lambda.grad is None or learner.log_lambda.grad.item() == 0.0
    d = XS.shape[1]
    zs = XS / math.sqrt(d)
    K = np.exp(-((zs[:, None] - zs[None]) ** 2).sum(-1) / (2 * 0.8 ** 2))
    alpha = np.linalg.solve(K + 0.3 * np.eye(len(zs)), np.eye(3)[YS])
    eps = 1e-6
    want_sigma = (_reference_fixed_alpha(0.8 * math.exp(eps), 4.0, alpha)
                  - _reference_fixed_alpha(0.8 * math.exp(-eps), 4.0, alpha)) / (2 * eps)
    want_tau = (_reference_fixed_alpha(0.8, 4.0 * math.exp(eps), alpha)
                - _reference_fixed_alpha(0.8, 4.0 * math.exp(-eps), alpha)) / (2 * eps)
    np.testing.assert_allclose([learner.log_sigma.grad.item(), learner.log_tau.grad.item()], [want_sigma, want_tau],
                               atol=1e-6, rtol=0)
    full = _learner().train()
    full.outcome(_task()).loss.backward()
    assert abs(full.log_lambda.grad.item()) > 1e-4                       # second order: lambda is meta-learned
    assert abs(full.log_sigma.grad.item() - learner.log_sigma.grad.item()) > 1e-6
