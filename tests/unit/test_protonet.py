"""ProtoNet against a hand-written computation of prototypes, logits and the meta-gradient to the embedding (1e-6)."""
import numpy as np
import pytest
import torch
from torch import nn

from metarepro.addons.outer import meta_step
from metarepro.methods import build
from metarepro.methods.base import Task


class LinearEmbed(nn.Module):
    """features: z = W x (no bias, no batch norm), so every derivative can be written by hand; plus a head."""

    def __init__(self, W: np.ndarray, ways: int = 3) -> None:
        super().__init__()
        self.features = nn.Linear(W.shape[1], W.shape[0], bias=False).double()
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor(W))
        self.feature_dim = W.shape[0]
        self.head = nn.Linear(W.shape[0], ways).double()

    def forward(self, x):
        return self.head(self.features(x))


def _task(seed: int = 0, ways: int = 3, shots: int = 2, queries: int = 2):
    rng = np.random.default_rng(seed)
    xs, xq = rng.normal(size=(ways * shots, 4)), rng.normal(size=(ways * queries, 4))
    ys, yq = np.repeat(np.arange(ways), shots), np.repeat(np.arange(ways), queries)
    t = lambda a: torch.tensor(a)
    return (xs, ys, xq, yq), Task(t(xs), t(ys), t(xq), t(yq))


def _softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _hand_protonet(W, xs, ys, xq, yq, ways):
    """Logits -||W xq - c_k||^2 with c_k the class means of W xs; CE loss; dL/dW by the chain rule."""
    zs, zq = xs @ W.T, xq @ W.T
    counts = np.bincount(ys, minlength=ways)
    C = np.stack([zs[ys == k].mean(0) for k in range(ways)])            # (ways, D)
    diff = zq[:, None, :] - C[None]                                      # (Q, ways, D)
    logits = -(diff ** 2).sum(-1)
    p = _softmax(logits)
    loss = -np.log(p[np.arange(len(yq)), yq]).mean()
    G = (p - np.eye(ways)[yq]) / len(yq)                                 # dL/dlogits
    dzq = (G[:, :, None] * -2 * diff).sum(1)                             # (Q, D)
    dC = (G[:, :, None] * 2 * diff).sum(0)                               # (ways, D)
    dzs = dC[ys] / counts[ys][:, None]                                   # through the mean
    dW = dzq.T @ xq + dzs.T @ xs
    return logits, loss, dW


def test_logits_loss_and_meta_gradient_match_hand_computation():
    W = np.random.default_rng(1).normal(size=(2, 4))
    (xs, ys, xq, yq), task = _task()
    learner = build("protonet", LinearEmbed(W), "classification")
    learner.train()
    logits, loss, dW = _hand_protonet(W, xs, ys, xq, yq, 3)
    np.testing.assert_allclose(learner.adapt(task)(task.x_query).detach().numpy(), logits, atol=1e-6, rtol=0)
    got, stats = learner.meta_loss(task)
    assert got.item() == pytest.approx(loss, abs=1e-6)
    got.backward()
    np.testing.assert_allclose(learner.model.features.weight.grad.numpy(), dW, atol=1e-6, rtol=0)
    assert np.abs(dW).max() > 1e-3
    assert stats["metric"] == pytest.approx(100.0 * np.mean(logits.argmax(1) == yq))


def test_head_is_dropped_and_evaluation_reports_one_score_without_touching_weights():
    W = np.random.default_rng(1).normal(size=(2, 4))
    (xs, ys, xq, yq), task = _task()
    learner = build("protonet", LinearEmbed(W), "classification")
    assert [n for n, _ in learner.named_parameters()] == ["model.features.weight"]
    assert learner.eval_inner_steps == 0
    learner.eval()
    scores = learner.evaluate_task(task)
    logits = _hand_protonet(W, xs, ys, xq, yq, 3)[0]
    assert scores == [pytest.approx(100.0 * np.mean(logits.argmax(1) == yq))]
    assert learner.model.features.weight.grad is None


def test_cosine_option_and_regression_is_rejected():
    W = np.random.default_rng(2).normal(size=(2, 4))
    (xs, ys, xq, yq), task = _task()
    learner = build("protonet", LinearEmbed(W), "classification", distance="cosine")
    learner.eval()
    zs, zq = xs @ W.T, xq @ W.T
    C = np.stack([zs[ys == k].mean(0) for k in range(3)])
    cos = (zq / np.linalg.norm(zq, axis=1, keepdims=True)) @ (C / np.linalg.norm(C, axis=1, keepdims=True)).T
    np.testing.assert_allclose(learner.adapt(task)(task.x_query).numpy(), 10.0 * cos, atol=1e-6, rtol=0)
    # the temperature is learned: d loss / d scale = sum over queries of (softmax - onehot) . cos / Q
    learner.train()
    loss, _ = learner.meta_loss(task)
    (g,) = torch.autograd.grad(loss, [learner.scale])
    p = np.exp(10 * cos - (10 * cos).max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    onehot = np.eye(3)[yq]
    assert float(g) == pytest.approx(((p - onehot) * cos).sum() / len(yq), abs=1e-6)
    fixed = build("protonet", LinearEmbed(W), "classification", distance="cosine", cosine_scale=3.0, learn_scale=False)
    assert "scale" not in dict(fixed.named_parameters()) and float(fixed.scale) == 3.0
    assert "scale" not in dict(build("protonet", LinearEmbed(W), "classification").state_dict())
    with pytest.raises(ValueError, match="classification"):
        build("protonet", LinearEmbed(W), "regression")
    with pytest.raises(ValueError, match="distance"):
        build("protonet", LinearEmbed(W), "classification", distance="l1")


def test_meta_step_moves_the_embedding_by_the_hand_gradient():
    W = np.random.default_rng(3).normal(size=(2, 4))
    (xs, ys, xq, yq), task = _task(seed=4)
    learner = build("protonet", LinearEmbed(W), "classification")
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    meta_step(learner, [task], opt)
    dW = _hand_protonet(W, xs, ys, xq, yq, 3)[2]
    np.testing.assert_allclose(learner.model.features.weight.detach().numpy(), W - 0.1 * dW, atol=1e-6, rtol=0)
