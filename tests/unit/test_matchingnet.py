"""Matching Networks against hand-written computations: cosine attention, log P(y|x,S) and the meta-gradient
(analytic, without FCE), and the full context embeddings (LSTMs written out in numpy; gradient by central
differences of that numpy forward), all to 1e-6 in float64."""
import numpy as np
import pytest
import torch

from metarepro.methods import build
from metarepro.methods.base import Task
from metarepro.methods.matchingnet import MatchingNet
from test_protonet import LinearEmbed, _task


def _softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _cos(A, B):
    return (A / np.linalg.norm(A, axis=1, keepdims=True)) @ (B / np.linalg.norm(B, axis=1, keepdims=True)).T


def _hand_matching(W, xs, ys, xq, yq, ways):
    """log P = log(softmax_i cos(W xq, W xs_i) @ onehot); CE = -mean log P_y; dL/dW by hand."""
    zs, zq = xs @ W.T, xq @ W.T
    Y = np.eye(ways)[ys]
    S = _cos(zq, zs)                                                    # (Q, S)
    A = _softmax(S)
    P = A @ Y
    logP = np.log(P)
    loss = -logP[np.arange(len(yq)), yq].mean()
    dP = -np.eye(ways)[yq] / P / len(yq)                                # dL/dP
    dA = dP @ Y.T                                                        # (Q, S)
    dS = A * (dA - (A * dA).sum(1, keepdims=True))                      # softmax backward
    nq, ns = np.linalg.norm(zq, axis=1), np.linalg.norm(zs, axis=1)
    # d cos(a, b)/da = b/(|a||b|) - cos * a/|a|^2 (and symmetric in b)
    dzq = (dS[:, :, None] * (zs[None] / (nq[:, None, None] * ns[None, :, None])
                             - S[:, :, None] * zq[:, None, :] / nq[:, None, None] ** 2)).sum(1)
    dzs = (dS[:, :, None] * (zq[:, None, :] / (nq[:, None, None] * ns[None, :, None])
                             - S[:, :, None] * zs[None] / ns[None, :, None] ** 2)).sum(0)
    return logP, loss, dzq.T @ xq + dzs.T @ xs


def test_log_probabilities_loss_and_meta_gradient_match_hand_computation():
    W = np.random.default_rng(1).normal(size=(2, 4))
    (xs, ys, xq, yq), task = _task()
    learner = build("matchingnet", LinearEmbed(W), "classification")
    learner.train()
    logP, loss, dW = _hand_matching(W, xs, ys, xq, yq, 3)
    np.testing.assert_allclose(learner.adapt(task)(task.x_query).detach().numpy(), logP, atol=1e-6, rtol=0)
    got, _ = learner.meta_loss(task)
    assert got.item() == pytest.approx(loss, abs=1e-6)
    got.backward()
    np.testing.assert_allclose(learner.model.features.weight.grad.numpy(), dW, atol=1e-6, rtol=0)
    assert np.abs(dW).max() > 1e-3
    learner.eval()
    assert learner.evaluate_task(task) == [pytest.approx(100.0 * np.mean(logP.argmax(1) == yq))]


def _np_params(learner):
    return {k: v.detach().numpy().copy() for k, v in learner.named_parameters()}


def _lstm_step(gates, c):
    i, f, g, o = np.split(gates, 4, axis=-1)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return _sigmoid(o) * np.tanh(c), c


def _hand_fce_loss(P, xs, ys, xq, yq, ways, K):
    """The FCE forward of Vinyals et al. 2016 App. A written out in numpy, with parameters P (name -> array)."""
    W = P["model.features.weight"]
    gs, fq = xs @ W.T, xq @ W.T
    L = "support_lstm."

    def run(seq, sfx):
        h = c = np.zeros(gs.shape[1])
        out = []
        for z in seq:
            gates = P[L + "weight_ih_l0" + sfx] @ z + P[L + "bias_ih_l0" + sfx] + P[L + "weight_hh_l0" + sfx] @ h \
                + P[L + "bias_hh_l0" + sfx]
            h, c = _lstm_step(gates, c)
            out.append(h)
        return np.array(out)
    fwd, bwd = run(gs, ""), run(gs[::-1], "_reverse")[::-1]
    g = fwd + bwd + gs                                                  # g(x_i, S)
    h_hat, c = np.zeros_like(fq), np.zeros_like(fq)
    for _ in range(K):
        h = h_hat + fq
        r = _softmax(h @ g.T) @ g
        gates = fq @ P["query_lstm.x2gates.weight"].T + P["query_lstm.x2gates.bias"] \
            + np.concatenate([h, r], 1) @ P["query_lstm.hr2gates.weight"].T
        h_hat, c = _lstm_step(gates, c)
    f = h_hat + fq                                                      # f(x, S) = h_K
    logP = np.log(_softmax(_cos(f, g)) @ np.eye(ways)[ys])
    return logP, -logP[np.arange(len(yq)), yq].mean()


def test_full_context_embeddings_match_hand_lstms_and_finite_differences():
    torch.manual_seed(0)
    W = np.random.default_rng(5).normal(size=(3, 4))
    (xs, ys, xq, yq), task = _task(seed=6)
    learner = build("matchingnet", LinearEmbed(W), "classification", fce=True, fce_steps=3)
    with torch.no_grad():   # larger weights than the default init, so the LSTMs matter in this example
        for name, p in learner.named_parameters():
            if "lstm" in name:
                p.copy_(torch.randn_like(p) * 0.5)
    learner.train()
    P = _np_params(learner)
    logP, loss = _hand_fce_loss(P, xs, ys, xq, yq, 3, 3)
    np.testing.assert_allclose(learner.adapt(task)(task.x_query).detach().numpy(), logP, atol=1e-6, rtol=0)
    got, _ = learner.meta_loss(task)
    assert got.item() == pytest.approx(loss, abs=1e-6)
    got.backward()
    grads = {k: v.grad.numpy() for k, v in learner.named_parameters()}
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name in P:   # every parameter tensor, two entries each
        for flat in rng.choice(P[name].size, size=2, replace=False):
            idx = np.unravel_index(flat, P[name].shape)
            plus, minus = {k: v.copy() for k, v in P.items()}, {k: v.copy() for k, v in P.items()}
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (_hand_fce_loss(plus, xs, ys, xq, yq, 3, 3)[1] - _hand_fce_loss(minus, xs, ys, xq, yq, 3, 3)[1]) / (2 * eps)
            assert grads[name][idx] == pytest.approx(fd, abs=1e-6), (name, idx)
    assert np.abs(grads["query_lstm.hr2gates.weight"]).max() > 1e-4
    assert np.abs(grads["support_lstm.weight_ih_l0_reverse"]).max() > 1e-4


def test_fce_reads_the_support_set_in_an_order_shuffled_with_the_episode_seed():
    """Episodes list support examples sorted by class; under FCE the LSTM reads them in a per-episode permutation,
    and g is returned in the original row order (so it still lines up with the labels)."""
    torch.manual_seed(0)
    learner = build("matchingnet", LinearEmbed(np.random.default_rng(0).normal(size=(4, 4))), "classification",
                    fce=True, fce_steps=2)
    _, t = _task()
    task = Task(t.x_support, t.y_support, t.x_query, t.y_query, info={"episode_key": (0, 7)})
    n = len(t.y_support)
    order = MatchingNet.support_order(task)
    assert sorted(order.tolist()) == list(range(n)) and order.tolist() != list(range(n))
    assert torch.equal(order, MatchingNet.support_order(task))                       # fixed per episode
    others = [MatchingNet.support_order(Task(t.x_support, t.y_support, t.x_query, t.y_query,
                                             info={"episode_key": (0, i)})) for i in range(8, 12)]
    assert any(not torch.equal(order, o) for o in others)
    z = learner.embed(t.x_support)
    g = learner.encode_support(z, order)
    out, _ = learner.support_lstm(z[order].unsqueeze(1))
    fwd, bwd = out.squeeze(1).chunk(2, dim=1)
    torch.testing.assert_close(g, (fwd + bwd + z[order])[torch.argsort(order)], atol=1e-12, rtol=0)
    assert MatchingNet.support_order(t) is None                                       # no episode key: as given
    # image episodes carry their key
    from metarepro.data.sampling import ImageEpisodes
    from metarepro.data.store import ImageSplit
    imgs = np.zeros((30, 4, 4, 1), dtype=np.uint8)
    labels = np.repeat(np.arange(5), 6)
    split = ImageSplit(imgs, labels, np.array(list("abcde")), [np.where(labels == c)[0] for c in range(5)])
    assert ImageEpisodes(split, 3, 1, 2, seed=4).episode(9).info == {"episode_key": (4, 9)}
