"""The pretrained-feature baselines of Ravi & Larochelle 2017 against hand computations: Baseline-finetune (one
SGD step on the head, and on all layers) and Baseline-nearest-neighbor (1-NN under cosine distance), to 1e-6."""
import numpy as np
import pytest
import torch

from metarepro.methods import METHODS, build
from test_protonet import LinearEmbed, _task


def _softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _model(seed=1):
    torch.manual_seed(seed)
    W = np.random.default_rng(seed).normal(size=(2, 4))
    m = LinearEmbed(W)
    return m, W, m.head.weight.detach().numpy().copy(), m.head.bias.detach().numpy().copy()


def _ce_grad(logits, y):
    return (_softmax(logits) - np.eye(logits.shape[1])[y]) / len(y)     # dCE/dlogits, mean reduction


@pytest.mark.parametrize("head_only", [True, False])
def test_finetune_one_sgd_step_matches_hand_computation(head_only):
    model, W, V, b = _model()
    (xs, ys, xq, yq), task = _task()
    lr = 0.3
    learner = build("finetune", model, "classification", steps=1, lr=lr, head_only=head_only)
    learner.eval()
    zs = xs @ W.T
    G = _ce_grad(zs @ V.T + b, ys)
    V1, b1 = V - lr * G.T @ zs, b - lr * G.sum(0)
    W1 = W - lr * (G @ V).T @ xs if not head_only else W
    adapted = learner.adapt(task)
    np.testing.assert_allclose(adapted.params["head.weight"].detach().numpy(), V1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(adapted.params["head.bias"].detach().numpy(), b1, atol=1e-6, rtol=0)
    np.testing.assert_allclose(adapted.params["features.weight"].detach().numpy(), W1, atol=1e-6, rtol=0)
    expected = [100.0 * np.mean((xq @ w.T @ v.T + c).argmax(1) == yq) for w, v, c in ((W, V, b), (W1, V1, b1))]
    assert learner.evaluate_task(task) == pytest.approx(expected)
    assert learner.evaluate_task(task, every_step=False) == pytest.approx(expected[-1:])   # validation's path
    assert learner.model.head.weight.grad is None and np.array_equal(learner.model.head.weight.detach().numpy(), V)


def test_finetune_head_only_many_steps_equals_plain_gradient_descent_on_the_head():
    model, W, V, b = _model(2)
    (xs, ys, xq, yq), task = _task(seed=3)
    learner = build("finetune", model, "classification", steps=5, lr=0.5, head_only=True)
    learner.eval()
    zs = xs @ W.T
    for _ in range(5):
        G = _ce_grad(zs @ V.T + b, ys)
        V, b = V - 0.5 * G.T @ zs, b - 0.5 * G.sum(0)
    np.testing.assert_allclose(learner.adapt(task).params["head.weight"].detach().numpy(), V, atol=1e-6, rtol=0)
    assert len(learner.evaluate_task(task)) == 6


def test_nearest_neighbor_predicts_the_label_of_the_cosine_nearest_support_example():
    model, W, _, _ = _model(4)
    (xs, ys, xq, yq), task = _task(seed=5, shots=3, queries=4)
    learner = build("nearest_neighbor", model, "classification")
    learner.eval()
    zs, zq = xs @ W.T, xq @ W.T
    cos = (zq / np.linalg.norm(zq, axis=1, keepdims=True)) @ (zs / np.linalg.norm(zs, axis=1, keepdims=True)).T
    pred = ys[cos.argmax(1)]                                            # 1-NN label
    out = learner.adapt(task)(task.x_query).numpy()
    np.testing.assert_array_equal(out.argmax(1), pred)
    np.testing.assert_allclose(out, np.stack([cos[:, ys == k].max(1) for k in range(3)], 1), atol=1e-6, rtol=0)
    assert learner.evaluate_task(task) == [pytest.approx(100.0 * np.mean(pred == yq))]
    assert [n for n, _ in learner.named_parameters()] == ["model.features.weight"]


def test_baselines_declare_pretraining_and_nothing_to_meta_train():
    for name in ("finetune", "nearest_neighbor"):
        assert METHODS[name].needs_pretrained and not METHODS[name].meta_trainable
    for name in ("protonet", "matchingnet", "maml"):
        assert not METHODS[name].needs_pretrained and METHODS[name].meta_trainable


class BNEmbed(torch.nn.Module):
    """features = Linear -> BatchNorm1d (batch statistics only), so the batch a sample is embedded in matters."""

    def __init__(self, ways: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Linear(4, 5).double(),
                                            torch.nn.BatchNorm1d(5, track_running_stats=False).double())
        self.feature_dim = 5
        self.head = torch.nn.Linear(5, ways).double()

    def forward(self, x):
        return self.head(self.features(x))


@pytest.mark.parametrize("method, hp", [("protonet", {}), ("matchingnet", {}), ("nearest_neighbor", {}),
                                        ("finetune", {"steps": 3, "lr": 0.1, "head_only": True})])
def test_baselines_embed_support_and_query_in_one_batch(method, hp):
    """Batch norm sees all S + Q images (transductive): the support's features are those of the joint batch, not
    of a 1-shot support set alone; transductive=False keeps the separate batches."""
    (xs, ys, xq, yq), task = _task()
    model = BNEmbed()
    learner = build(method, model, "classification", **hp)
    learner.eval()
    z = model.features(torch.cat([task.x_support, task.x_query])).detach()
    zs, zq = z[: len(xs)], z[len(xs):]
    got = learner.adapt(task)(task.x_query)
    if method == "protonet":
        protos = torch.stack([zs[task.y_support == k].mean(0) for k in range(3)])
        want = -((zq[:, None] - protos[None]) ** 2).sum(-1)
    elif method == "matchingnet":
        att = (torch.nn.functional.normalize(zq, dim=1) @ torch.nn.functional.normalize(zs, dim=1).t()).softmax(1)
        want = (att @ torch.nn.functional.one_hot(task.y_support, 3).double()).log()
    elif method == "nearest_neighbor":
        sims = torch.nn.functional.normalize(zq, dim=1) @ torch.nn.functional.normalize(zs, dim=1).t()
        want = torch.stack([sims[:, task.y_support == k].amax(1) for k in range(3)], 1)
    else:
        w, b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
        for _ in range(3):
            w.requires_grad_(True); b.requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(zs @ w.t() + b, task.y_support)
            gw, gb = torch.autograd.grad(loss, [w, b])
            w, b = (w - 0.1 * gw).detach(), (b - 0.1 * gb).detach()
        want = zq @ w.t() + b
        assert learner.evaluate_task(task, every_step=False)[0] == pytest.approx(
            100.0 * float((want.argmax(1) == task.y_query).double().mean()))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    separate = build(method, BNEmbed(), "classification", transductive=False, **hp)
    separate.eval()
    assert not torch.allclose(separate.adapt(task)(task.x_query), want, atol=1e-3)
