"""Meta-LSTM against a numpy re-implementation of its two layers and a hand meta-gradient (to 1e-6)."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from metarepro import methods
from metarepro.addons.outer import meta_step
from metarepro.methods.base import Task
from metarepro.methods.metalstm import MetaLSTM, preprocess
from metarepro.models.conv4 import Conv4

try:  # pytest's rootdir import mode puts tests/unit on sys.path
    from .tiny import Linear1D, random_image_tasks
except ImportError:
    from tiny import Linear1D, random_image_tasks

sig = lambda z: 1 / (1 + np.exp(-z))


def _np_pre(x, p=10.0):
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    big = np.abs(x) >= np.exp(-p)
    return np.stack([np.where(big, np.log(np.maximum(np.abs(x), np.exp(-p))) / p, -1.0),
                     np.where(big, np.sign(x), np.exp(p) * x)], -1)


def test_preprocessing_matches_hand_values():
    x = torch.tensor([1.0, -0.5, 1e-3, 1e-5, -3e-6, 0.0, 250.0], dtype=torch.float64)
    want = np.array([[0.0, 1.0],
                     [math.log(0.5) / 10, -1.0],
                     [math.log(1e-3) / 10, 1.0],
                     [-1.0, math.exp(10) * 1e-5],        # |x| = 1e-5 < e^-10 = 4.54e-5: linear branch
                     [-1.0, -math.exp(10) * 3e-6],
                     [-1.0, 0.0],
                     [math.log(250.0) / 10, 1.0]])
    np.testing.assert_allclose(preprocess(x).numpy(), want, atol=1e-12, rtol=0)
    assert preprocess(torch.tensor(2.0)).shape == (2,)


class _NumpyMetaLSTM:
    """The two layers written out from the learner's weights (torch LSTMCell gate order i, f, g, o)."""

    def __init__(self, m: MetaLSTM) -> None:
        d = lambda t: t.detach().numpy().astype(np.float64)
        self.Wih, self.Whh = d(m.lstm.weight_ih), d(m.lstm.weight_hh)
        self.b = d(m.lstm.bias_ih) + d(m.lstm.bias_hh)
        self.wf, self.wi, self.bf, self.bi = d(m.cell.w_f), d(m.cell.w_i), m.cell.b_f.item(), m.cell.b_i.item()
        self.H = self.Whh.shape[1]

    def run(self, c, grad_fn, steps):
        n = c.size
        h, s, fp, ip = np.zeros((n, self.H)), np.zeros((n, self.H)), np.zeros(n), np.zeros(n)
        out = [c]
        for _ in range(steps):
            g, L = grad_fn(c)
            x = np.concatenate([np.repeat(_np_pre(L), n, 0), _np_pre(g)], 1)        # (n, 4)
            z = x @ self.Wih.T + h @ self.Whh.T + self.b
            zi, zf, zg, zo = np.split(z, 4, axis=1)
            s = sig(zf) * s + sig(zi) * np.tanh(zg)
            h = sig(zo) * np.tanh(s)
            f = h @ self.wf[:-2] + c * self.wf[-2] + fp * self.wf[-1] + self.bf
            i = h @ self.wi[:-2] + c * self.wi[-2] + ip * self.wi[-1] + self.bi
            c = sig(f) * c - sig(i) * g
            fp, ip = f, i
            out.append(c)
        return out, (h, f, i)


def _randomise(m: MetaLSTM, seed: int) -> None:
    """Weights big enough that every term of both layers matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.lstm.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
        for p in (m.cell.w_f, m.cell.w_i):
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
        m.cell.b_f.fill_(1.0); m.cell.b_i.fill_(-1.0)


def test_lstm_written_steps_match_numpy_two_layers():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    m = methods.build("metalstm", lin, "classification", inner_steps=2, hidden_size=5)
    _randomise(m, 1)
    xs = torch.randn(4, 3, dtype=torch.float64); ys = torch.tensor([0, 1, 1, 0])
    X, Yo = xs.numpy(), np.eye(2)[ys.numpy()]

    def grad_fn(c):   # softmax cross-entropy (mean) of the linear classifier at flat params c = [W (2x3), b (2)]
        W, b = c[:6].reshape(2, 3), c[6:]
        z = X @ W.T + b
        p = np.exp(z - z.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        d = (p - Yo) / len(X)
        return np.concatenate([(d.T @ X).ravel(), d.sum(0)]), -np.mean(np.log((p * Yo).sum(1)))

    c0 = np.concatenate([lin.weight.detach().numpy().ravel(), lin.bias.detach().numpy()])
    want, _ = _NumpyMetaLSTM(m).run(c0, grad_fn, 2)
    m.train()
    got = [torch.cat([lr.params["weight"].reshape(-1), lr.params["bias"]]).detach().numpy()
           for lr in m.adapt_trajectory(Task(xs, ys, xs, ys), 2, create_graph=True)]
    for t in range(3):
        np.testing.assert_allclose(got[t], want[t], atol=1e-6, rtol=0)
    assert np.abs(want[2] - want[1]).max() > 1e-3          # the LSTM actually moved the parameters


def test_meta_gradient_treats_learner_gradient_as_constant():
    X = np.array([0.5, -1.2, 2.0]); Y = np.array([1.0, 0.3, -0.7]); U = np.array([1.5, -0.4]); V = np.array([0.2, 1.1])
    t = lambda a: torch.tensor(a.reshape(-1, 1), dtype=torch.float64)
    task = Task(t(X), t(Y), t(U), t(V))
    HS = 2 * np.array([[np.mean(X * X), np.mean(X)], [np.mean(X), 1.0]]); CS = 2 * np.array([np.mean(X * Y), np.mean(Y)])
    HQ = 2 * np.array([[np.mean(U * U), np.mean(U)], [np.mean(U), 1.0]]); CQ = 2 * np.array([np.mean(U * V), np.mean(V)])
    m = methods.build("metalstm", Linear1D(0.7, -0.2), "regression", inner_steps=1, hidden_size=4)
    _randomise(m, 2)
    c0 = np.array([0.7, -0.2])
    grad_fn = lambda c: (HS @ c - CS, np.mean((c[0] * X + c[1] - Y) ** 2))
    (_, c1), (h, f, i) = _NumpyMetaLSTM(m).run(c0, grad_fn, 1)
    g0 = grad_fn(c0)[0]
    m.train()
    loss, _ = m.meta_loss(task)
    assert loss.item() == pytest.approx(np.mean((c1[0] * U + c1[1] - V) ** 2), abs=1e-6)
    loss.backward()
    a = HQ @ c1 - CQ                                            # dL_q/dc_1
    wf_c, wi_c = m.cell.w_f[-2].item(), m.cell.w_i[-2].item()
    sf, si = sig(f), sig(i)
    # c_1 = sig(f) c_0 - sig(i) g with g, L (hence h) constants; f, i depend on c_0 through the c-weight
    dc1_dc0 = sf + sf * (1 - sf) * wf_c * c0 - si * (1 - si) * wi_c * g0      # diagonal Jacobian
    got = np.array([m.model.w.grad.item(), m.model.b.grad.item()])
    np.testing.assert_allclose(got, a * dc1_dc0, atol=1e-6, rtol=0)
    assert np.abs(HS @ (si * a)).max() > 1e-3                  # the omitted second-order term would show
    assert m.cell.b_i.grad.item() == pytest.approx(np.sum(a * -si * (1 - si) * g0), abs=1e-6)
    assert m.cell.b_f.grad.item() == pytest.approx(np.sum(a * sf * (1 - sf) * c0), abs=1e-6)
    np.testing.assert_allclose(m.cell.w_f.grad[:-2].numpy(), (a * sf * (1 - sf) * c0) @ h, atol=1e-6, rtol=0)
    assert m.lstm.weight_ih.grad.abs().sum() > 0                # the first layer is meta-learned through h


def test_initial_gates_and_gate_trace_shapes():
    torch.manual_seed(0)
    lin = nn.Linear(3, 2).double()
    m = methods.build("metalstm", lin, "classification", inner_steps=3)
    assert 4.0 <= m.cell.b_f.item() <= 5.0 and -5.0 <= m.cell.b_i.item() <= -4.0
    n_lstm = sum(p.numel() for n, p in m.named_parameters() if not n.startswith("model."))
    assert n_lstm == 4 * 20 * (4 + 20) + 2 * 4 * 20 + 2 * 22 + 2    # LSTMCell(4, 20) + meta cell
    xs = torch.randn(4, 3, dtype=torch.float64); ys = torch.tensor([0, 1, 1, 0])
    tr = m.gate_trace(Task(xs, ys, xs, ys), steps=5)
    assert tr["input"].shape == (5,) and tr["forget"].shape == (5,)
    assert tr["input_by_param"].shape == (5, 2) and tr["forget_by_param"].shape == (5, 2)
    assert tr["param_names"] == ["weight", "bias"]
    assert (tr["forget"] > 0.97).all() and (tr["input"] < 0.03).all()   # starts as plain gradient descent
    assert m._trace is None and lin.weight.grad is None


def test_smoke_conv4_meta_steps_and_state_dict_round_trip():
    torch.manual_seed(0)
    m = methods.build("metalstm", Conv4((1, 28, 28), 5, filters=4), "classification", inner_steps=3)
    opt = torch.optim.Adam(m.parameters(), lr=1e-3)
    before = {k: v.detach().clone() for k, v in m.state_dict().items()}
    for _ in range(3):
        stats = meta_step(m, random_image_tasks(1, queries=2), opt, grad_clip=0.25)
        assert np.isfinite(stats["loss"])
    after = m.state_dict()
    assert not torch.equal(before["model.head.weight"], after["model.head.weight"])   # c_0 is meta-learned
    assert not torch.equal(before["cell.b_i"], after["cell.b_i"])
    m2 = methods.build("metalstm", Conv4((1, 28, 28), 5, filters=4), "classification", inner_steps=3)
    m2.load_state_dict(after)
    m.eval(); m2.eval()
    task = random_image_tasks(1, queries=2, seed=1)[0]
    s1, s2 = m.evaluate_task(task), m2.evaluate_task(task)
    assert len(s1) == 4 and s1 == s2
    assert len(m.gate_trace(task)["input"]) == 3
