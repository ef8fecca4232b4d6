"""PAMELA against hand-written trajectories and chain-rule meta-gradients on y = w x + b (float64, to 1e-6)."""
import numpy as np
import pytest
import torch

from metarepro import methods
from metarepro.addons.outer import meta_step
from metarepro.methods.base import Task
from metarepro.models.conv4 import Conv4

try:  # pytest's rootdir import mode puts tests/unit on sys.path
    from .tiny import Linear1D, random_image_tasks
except ImportError:
    from tiny import Linear1D, random_image_tasks


X = np.array([0.5, -1.2, 2.0]); Y = np.array([1.0, 0.3, -0.7])     # support
U = np.array([1.5, -0.4]); V = np.array([0.2, 1.1])                # query
TH0 = np.array([0.7, -0.2])                                        # (w, b)


def _task():
    t = lambda a: torch.tensor(a.reshape(-1, 1), dtype=torch.float64)
    return Task(t(X), t(Y), t(U), t(V))


def _mse_parts(x, y):
    """MSE of w x + b is quadratic: grad(theta) = H theta - c (H is also the Hessian)."""
    H = 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])
    c = 2 * np.array([np.mean(x * y), np.mean(y)])
    return H, c


HS, CS = _mse_parts(X, Y)
HQ, CQ = _mse_parts(U, V)
Q = [np.array([0.05, 0.03]), np.array([0.08, 0.02]), np.array([0.04, 0.06]),   # Q_0 .. Q_4 for (w, b)
     np.array([0.07, 0.05]), np.array([0.03, 0.09])]
P = [np.array([0.3, 0.6]), np.array([0.2, 0.45])]                              # P_0, P_1 for (w, b)


def _build(steps, q_mode="per_step", skip=True, window=2, skip_mode="window", **kw):
    m = methods.build("pamela", Linear1D(*TH0), "regression", inner_lr=0.01, inner_steps=steps, q_mode=q_mode,
                      skip=skip, skip_window=window, skip_mode=skip_mode, **kw)
    with torch.no_grad():
        for j, qd in enumerate(m.q):
            qd["w"].fill_(np.log(Q[j][0] / 0.01)); qd["b"].fill_(np.log(Q[j][1] / 0.01))   # Q = 0.01 exp(rho)
        for k, pd in enumerate(m.p_raw):
            pd["w"].fill_(np.log(P[k][0] / (1 - P[k][0]))); pd["b"].fill_(np.log(P[k][1] / (1 - P[k][1])))
    m.train()
    return m


def _theta(learner):
    return np.array([learner.params["w"].item(), learner.params["b"].item()])


def _grads(m):
    g = lambda t: np.array([t["w"].grad.item(), t["b"].grad.item()])
    return (np.array([m.model.w.grad.item(), m.model.b.grad.item()]),
            [g(qd) for qd in m.q], [g(pd) for pd in m.p_raw])


def test_one_step_and_meta_gradient_with_per_step_q():
    m = _build(1, skip=False)
    g0 = HS @ TH0 - CS
    th1 = TH0 - Q[0] * g0
    np.testing.assert_allclose(_theta(m.adapt(_task())), th1, atol=1e-6, rtol=0)
    loss, _ = m.meta_loss(_task())
    a = HQ @ th1 - CQ                                   # dL_q / d theta'
    assert loss.item() == pytest.approx(np.mean((th1[0] * U + th1[1] - V) ** 2), abs=1e-6)
    loss.backward()
    d_theta, d_q, _ = _grads(m)
    # dL/dQ_0 = -grad_s * dL/dtheta'; rho_0 = log(Q_0 / 0.01) gets dL/dQ_0 * Q_0
    np.testing.assert_allclose(d_q[0], -g0 * a * Q[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(d_theta, a - HS @ (Q[0] * a), atol=1e-6, rtol=0)  # (I - diag(Q) H)^T a
    assert np.abs(HS @ (Q[0] * a)).max() > 1e-3         # second-order term matters here


def test_two_steps_with_window_1_skip():
    """w = 1: every step mixes with its own input: theta_{j+1} = (1-P_j)(theta_j - Q_j g_j) + P_j theta_j."""
    m = _build(2, window=1)
    th, traj = TH0, [TH0]
    for j in range(2):
        th = (1 - P[j]) * (th - Q[j] * (HS @ th - CS)) + P[j] * th
        traj.append(th)
    got = [_theta(lr) for lr in m.adapt_trajectory(_task(), 2, create_graph=True)]
    np.testing.assert_allclose(np.array(got), np.array(traj), atol=1e-6, rtol=0)


def test_two_steps_with_window_2_skip_and_meta_gradients_to_q_and_p():
    """theta_1 = theta_0 - Q_0 g_0;  theta_2 = (1-P_0)(theta_1 - Q_1 g_1) + P_0 theta_0; backprop by hand."""
    m = _build(2, window=2)
    g0 = HS @ TH0 - CS; th1 = TH0 - Q[0] * g0
    g1 = HS @ th1 - CS; u2 = th1 - Q[1] * g1
    th2 = (1 - P[0]) * u2 + P[0] * TH0
    loss, _ = m.meta_loss(_task())
    assert loss.item() == pytest.approx(np.mean((th2[0] * U + th2[1] - V) ** 2), abs=1e-6)
    np.testing.assert_allclose(_theta(m.adapt(_task())), th2, atol=1e-6, rtol=0)
    loss.backward()
    a = HQ @ th2 - CQ                                   # dL/dtheta_2
    dP = a * (TH0 - u2)                                 # dL/dP_0
    dQ1 = a * (1 - P[0]) * (-g1)
    b = (1 - P[0]) * a                                  # dL/du_2
    d_th1 = b - HS @ (Q[1] * b)                         # through u_2 = th1 - Q_1 (H th1 - c)
    dQ0 = d_th1 * (-g0)
    d_th0 = P[0] * a + d_th1 - HS @ (Q[0] * d_th1)      # skip path + step path
    d_theta, d_q, d_p = _grads(m)
    np.testing.assert_allclose(d_q[0], dQ0 * Q[0], atol=1e-6, rtol=0)   # through Q = 0.01 exp(rho)
    np.testing.assert_allclose(d_q[1], dQ1 * Q[1], atol=1e-6, rtol=0)
    np.testing.assert_allclose(d_p[0], dP * P[0] * (1 - P[0]), atol=1e-6, rtol=0)   # through the sigmoid
    np.testing.assert_allclose(d_theta, d_th0, atol=1e-6, rtol=0)


def test_q_modes_and_extra_eval_steps_reuse_last_q():
    task = _task()
    maml = methods.build("maml", Linear1D(*TH0), "regression", inner_lr=0.01, inner_steps=3)
    none = methods.build("pamela", Linear1D(*TH0), "regression", inner_lr=0.01, inner_steps=3, q_mode="none",
                         skip=False)
    assert len(none.q) == 0 and len(none.p_raw) == 0 and len(list(none.parameters())) == 2
    for a, b in zip(maml.adapt_trajectory(task, 3, True), none.adapt_trajectory(task, 3, True)):
        np.testing.assert_allclose(_theta(a), _theta(b), atol=1e-12)
    shared = _build(3, q_mode="shared", skip=False)
    assert len(shared.q) == 1
    th = TH0
    for _ in range(3):
        th = th - Q[0] * (HS @ th - CS)
    np.testing.assert_allclose(_theta(shared.adapt(task)), th, atol=1e-6, rtol=0)
    per = _build(2, skip=False)          # trained for 2 steps: Q_0, Q_1; step 3 and 4 reuse Q_1
    per.eval()
    assert len(per.q) == 2
    th = TH0
    for j in range(4):
        th = th - Q[min(j, 1)] * (HS @ th - CS)
    scores = per.evaluate_task(task, steps=4)
    assert scores[-1] == pytest.approx(np.mean((th[0] * U + th[1] - V) ** 2), abs=1e-6)
    assert per.model.w.grad is None and per.q[0]["w"].grad is None


def test_eval_beyond_trained_windows_reuses_last_p():
    m = _build(2, window=2)              # one window trained (P_0); at eval, window 1 (steps 3-4) reuses P_0
    m.eval()
    assert len(m.p_raw) == 1
    th, anchor = TH0, TH0
    for j in range(4):
        th = th - Q[min(j, 1)] * (HS @ th - CS)
        if (j + 1) % 2 == 0:
            th = (1 - P[0]) * th + P[0] * anchor
            anchor = th
    got = [_theta(lr) for lr in m.adapt_trajectory(_task(), 4, create_graph=False)]
    np.testing.assert_allclose(got[-1], th, atol=1e-6, rtol=0)


def test_paper_skips_five_steps_window_2_by_hand():
    """The paper's indexing: a skip at steps j with j % w == 0 and j >= w mixes theta_{j-w} into theta_{j+1}:
    with 5 steps and w = 2, theta_3 mixes with theta_0 (gate P_0) and theta_5 with theta_2 (gate P_1)."""
    m = _build(5, window=2, skip_mode="paper")
    assert m.skip_steps(5) == [2, 4] and len(m.p_raw) == 2
    th = [TH0]
    for j in range(5):
        u = th[j] - Q[j] * (HS @ th[j] - CS)
        if j == 2:
            u = (1 - P[0]) * u + P[0] * th[0]
        if j == 4:
            u = (1 - P[1]) * u + P[1] * th[2]
        th.append(u)
    got = [_theta(lr) for lr in m.adapt_trajectory(_task(), 5, create_graph=True)]
    np.testing.assert_allclose(np.array(got), np.array(th), atol=1e-6, rtol=0)
    # the loss is a function of the whole trajectory: P_0 and P_1 both get a gradient
    loss, _ = m.meta_loss(_task())
    loss.backward()
    _, _, d_p = _grads(m)
    assert all(np.abs(g).max() > 0 for g in d_p)
    # fewer than w + 1 steps: no skip in the paper's indexing (theta_{j-w} does not exist yet)
    assert _build(2, window=2, skip_mode="paper").p_raw.__len__() == 0
    with pytest.raises(ValueError, match="skip_mode"):
        _build(2, skip_mode="residual")


def test_smoke_conv4_meta_steps_and_state_dict_round_trip():
    torch.manual_seed(0)
    m = methods.build("pamela", Conv4((1, 28, 28), 5, filters=4), "classification", inner_lr=0.1, inner_steps=2,
                      eval_inner_steps=3, skip_mode="window")
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    q0 = m.q[0]["head__weight"].detach().clone(); p0 = m.p_raw[0]["head__bias"].detach().clone()
    for _ in range(2):
        stats = meta_step(m, random_image_tasks(1, queries=2), opt, grad_clip=10.0)
        assert np.isfinite(stats["loss"])
    assert not torch.equal(q0, m.q[0]["head__weight"]) and not torch.equal(p0, m.p_raw[0]["head__bias"])
    m2 = methods.build("pamela", Conv4((1, 28, 28), 5, filters=4), "classification", inner_lr=0.1, inner_steps=2,
                       eval_inner_steps=3, skip_mode="window")
    m2.load_state_dict(m.state_dict())
    m.eval(); m2.eval()
    task = random_image_tasks(1, queries=2, seed=1)[0]
    s1, s2 = m.evaluate_task(task), m2.evaluate_task(task)
    assert len(s1) == 4 and s1 == s2


def test_kernel_granularity_shares_q_and_p_within_each_3x3_kernel():
    """Default granularity: one Q_j / P^w entry per (output, input) kernel of a convolution, one per entry of every
    other tensor; one inner step is theta - 0.1 exp(rho) * grad with rho broadcast over the 3x3 kernel (by hand);
    'element' is the paper's notation (one per weight), 'channel' one per output channel."""
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 2, filters=3).double()
    m = methods.build("pamela", model, "classification", inner_lr=0.1, inner_steps=3, skip_window=2)
    shapes = {k: tuple(v.shape) for k, v in m.q[0].items()}
    assert shapes["features__0__0__weight"] == (3, 1, 1, 1) and shapes["features__1__0__weight"] == (3, 3, 1, 1)
    assert shapes["head__weight"] == tuple(model.head.weight.shape) and shapes["head__bias"] == (2,)
    assert len(m.q) == 3 and len(m.p_raw) == 1 and {k: tuple(v.shape) for k, v in m.p_raw[0].items()} == shapes
    with torch.no_grad():
        for rho in m.q[0].values():
            rho.copy_(torch.randn_like(rho) * 0.5)
    task = random_image_tasks(1, queries=1, seed=2, size=16, ways=2)[0]
    task = Task(task.x_support.double(), task.y_support, task.x_query.double(), task.y_query)
    m.train()
    params = dict(model.named_parameters())
    loss = torch.nn.functional.cross_entropy(model(task.x_support), task.y_support)
    grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()))))
    one = list(m.adapt_trajectory(task, 1, False))[-1].params
    w = "features.1.0.weight"
    want = params[w] - 0.1 * torch.exp(m.q[0]["features__1__0__weight"]) * grads[w]
    assert torch.allclose(one[w], want, atol=1e-12, rtol=0)
    k = m.q[0]["features__1__0__weight"]
    by_hand = params[w][1, 2] - 0.1 * float(torch.exp(k[1, 2, 0, 0].detach())) * grads[w][1, 2]
    assert torch.allclose(one[w][1, 2], by_hand, atol=1e-6, rtol=0)
    n = sum(p.numel() for p in model.parameters())
    extra = lambda g: sum(p.numel() for p in methods.build("pamela", Conv4((1, 16, 16), 2, filters=3), "classification",
                                                     inner_lr=0.1, inner_steps=3,
                                                     granularity=g).parameters()) - n
    assert extra("element") == 4 * n                      # 3 Q_j + 1 P^w, each one entry per weight
    assert extra("channel") < extra("kernel") < extra("element")
