"""The GNN backbone, G-Meta and AMM-GNN against hand-written computations of one inner step (to 1e-6), and the
co-learner composing with them by name."""
import numpy as np
import pytest
import torch

from metarepro import addons as addon_layer
from metarepro.addons.outer import meta_step
from metarepro.data.graphs import normalized_adjacency
from metarepro.methods import build
from metarepro.methods.base import Task
from metarepro.models import build as build_backbone

M, F = 3, 2


def _samples(n: int, seed: int) -> torch.Tensor:
    """n node samples (M, M + F): random subgraphs of 1-3 nodes, normalised adjacency then features."""
    rng = np.random.default_rng(seed)
    adj = np.zeros((n, M, M))
    sizes = rng.integers(1, M + 1, size=n)
    for i, s in enumerate(sizes):
        for a in range(1, s):
            adj[i, 0, a] = adj[i, a, 0] = 1.0                # a star around the centre
    feats = rng.normal(size=(n, M, F)) * (np.arange(M)[None, :, None] < sizes[:, None, None])
    a = normalized_adjacency(torch.tensor(adj), torch.tensor(sizes))
    return torch.cat([a, torch.tensor(feats)], dim=-1)


def _task(ways: int = 2, shots: int = 2, queries: int = 2, seed: int = 0) -> Task:
    x = _samples(ways * (shots + queries), seed).view(ways, shots + queries, M, M + F)
    y = torch.arange(ways).view(-1, 1).expand(-1, shots + queries)
    return Task(x[:, :shots].reshape(-1, M, M + F), y[:, :shots].reshape(-1), x[:, shots:].reshape(-1, M, M + F),
                y[:, shots:].reshape(-1))


def _sgc(seed: int = 0, out: int = 2):
    torch.manual_seed(seed)
    return build_backbone("gnn", (M, M + F), out, hidden=[3], kind="sgc").double()


def _propagated(x: np.ndarray) -> np.ndarray:
    """SGC with one hop: the centre row of Â X."""
    return (x[:, :, :M] @ x[:, :, M:])[:, 0]


def test_gcn_forward_matches_numpy():
    torch.manual_seed(1)
    net = build_backbone("gnn", (M, M + F), 2, hidden=[4, 3], kind="gcn").double()
    x = _samples(5, 3)
    xn = x.numpy()
    a, h = xn[..., :M], xn[..., M:]
    for layer in net.features.layers:
        h = np.maximum(a @ h @ layer.weight.detach().numpy().T + layer.bias.detach().numpy(), 0.0)   # Â H W + b
    want = h[:, 0] @ net.head.weight.detach().numpy().T + net.head.bias.detach().numpy()
    np.testing.assert_allclose(net(x).detach().numpy(), want, atol=1e-10)


def test_normalized_adjacency_is_gcn_propagation_on_real_nodes():
    adj = torch.tensor([[[0, 1, 0], [1, 0, 0], [0, 0, 0]]], dtype=torch.float64)
    got = normalized_adjacency(adj, torch.tensor([2])).numpy()[0]
    want = np.array([[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 0]])      # (A + I) / 2 on the two real nodes; padding 0
    np.testing.assert_allclose(got, want, atol=1e-12)


def _proto_loss_grads(z: np.ndarray, y: np.ndarray, ways: int) -> tuple[float, np.ndarray]:
    """Prototypical cross-entropy of embeddings z (S, D) against their own class means, and dL/dz by hand."""
    onehot = np.eye(ways)[y]
    counts = onehot.sum(0)
    c = onehot.T @ z / counts[:, None]
    diff = z[:, None, :] - c[None, :, :]                              # (S, ways, D)
    logits = -(diff ** 2).sum(-1)
    p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
    loss = float(-np.log(p[np.arange(len(y)), y]).mean())
    g = (p - onehot) / len(y)                                         # dL/dlogits
    dc = (g[:, :, None] * 2 * diff).sum(0)                            # through c_k, (ways, D)
    dz = (g[:, :, None] * -2 * diff).sum(1) + onehot @ (dc / counts[:, None])
    return loss, dz


def test_gmeta_one_inner_step_matches_hand_computation():
    task = _task()
    net = _sgc()
    W, b = net.features.layers[0].weight.detach().numpy().copy(), net.features.layers[0].bias.detach().numpy().copy()
    H, c = net.head.weight.detach().numpy().copy(), net.head.bias.detach().numpy().copy()
    alpha = 0.3
    learner = build("gmeta", net, "classification", inner_lr=alpha, inner_steps=1)
    learner.eval()
    adapted = learner.adapt(task, 1)
    p = _propagated(task.x_support.numpy())                            # (S, F)
    u = p @ W.T + b                                                    # SGC embedding (S, 3)
    z = u @ H.T + c                                                    # G-Meta's linear layer (S, ways)
    _, dz = _proto_loss_grads(z, task.y_support.numpy(), 2)
    du = dz @ H
    expect = {"head.weight": H - alpha * dz.T @ u, "head.bias": c - alpha * dz.sum(0),
              "features.layers.0.weight": W - alpha * du.T @ p, "features.layers.0.bias": b - alpha * du.sum(0)}
    for k, v in expect.items():
        np.testing.assert_allclose(adapted.params[k].detach().numpy(), v, atol=1e-6, err_msg=k)
    # the query is scored against the prototypes of the adapted parameters
    P = {k: torch.tensor(v) for k, v in expect.items()}
    zs = (torch.tensor(p) @ P["features.layers.0.weight"].T + P["features.layers.0.bias"]) @ P["head.weight"].T \
        + P["head.bias"]
    protos = torch.stack([zs[task.y_support == k].mean(0) for k in range(2)])
    pq = torch.tensor(_propagated(task.x_query.numpy()))
    zq = (pq @ P["features.layers.0.weight"].T + P["features.layers.0.bias"]) @ P["head.weight"].T + P["head.bias"]
    want = -((zq[:, None] - protos[None]) ** 2).sum(-1)
    np.testing.assert_allclose(adapted(task.x_query).detach().numpy(), want.numpy(), atol=1e-6)


def test_gmeta_first_order_by_default_and_second_order_differs():
    task = _task(seed=2)
    grads = {}
    for fo in (True, False):
        learner = build("gmeta", _sgc(4), "classification", inner_lr=0.5, inner_steps=1, first_order=fo)
        learner.train()
        loss, _ = learner.meta_loss(task)
        loss.backward()
        grads[fo] = learner.model.head.weight.grad.clone()
    assert build("gmeta", _sgc(), "classification").first_order        # G-Meta's code: first order
    assert (grads[True] - grads[False]).abs().max() > 1e-6


def test_ammgnn_one_inner_step_matches_hand_computation():
    task = _task(seed=5)
    net = _sgc(3)
    learner = build("ammgnn", net, "classification", inner_lr=0.2, inner_steps=1)
    with torch.no_grad():                               # a non-trivial attention (it starts at the identity)
        learner.attention.weight.copy_(torch.tensor([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2], [0.2, 0.1]]))
        learner.attention.bias.copy_(torch.tensor([0.05, -0.1, 0.2, 0.0]))
    A, a0 = learner.attention.weight.detach().numpy(), learner.attention.bias.detach().numpy()
    W, b = net.features.layers[0].weight.detach().numpy().copy(), net.features.layers[0].bias.detach().numpy().copy()
    H, c = net.head.weight.detach().numpy().copy(), net.head.bias.detach().numpy().copy()
    learner.eval()
    adapted = learner.adapt(task, 1)

    xs = task.x_support.numpy()
    real = (np.diagonal(xs[..., :M], axis1=1, axis2=2) > 0).astype(float)        # (S, M)
    s = (xs[..., M:] * real[..., None]).sum((0, 1)) / real.sum()
    gamma, beta = np.split(np.tanh(A @ s + a0), 2)

    def modulate(x):
        r = (np.diagonal(x[..., :M], axis1=1, axis2=2) > 0).astype(float)[..., None]
        return np.concatenate([x[..., :M], (x[..., M:] * (1 + gamma) + beta) * r], -1)
    p = _propagated(modulate(xs))
    u = p @ W.T + b
    logits = u @ H.T + c
    y = task.y_support.numpy()
    pr = np.exp(logits - logits.max(1, keepdims=True)); pr /= pr.sum(1, keepdims=True)
    dz = (pr - np.eye(2)[y]) / len(y)
    du = dz @ H
    expect = {"head.weight": H - 0.2 * dz.T @ u, "head.bias": c - 0.2 * dz.sum(0),
              "features.layers.0.weight": W - 0.2 * du.T @ p, "features.layers.0.bias": b - 0.2 * du.sum(0)}
    for k, v in expect.items():
        np.testing.assert_allclose(adapted.params[k].detach().numpy(), v, atol=1e-6, err_msg=k)
    # the query is modulated with the support's (gamma, beta) before the adapted GNN
    pq = _propagated(modulate(task.x_query.numpy()))
    want = (pq @ expect["features.layers.0.weight"].T + expect["features.layers.0.bias"]) @ expect["head.weight"].T \
        + expect["head.bias"]
    np.testing.assert_allclose(adapted(task.x_query).detach().numpy(), want, atol=1e-6)


def test_ammgnn_attention_learns_in_the_outer_loop():
    learner = build("ammgnn", _sgc(), "classification", inner_lr=0.2, inner_steps=1)
    learner.train()
    loss, _ = learner.meta_loss(_task(seed=7))
    loss.backward()
    assert learner.attention.weight.grad is not None and learner.attention.weight.grad.abs().sum() > 0


def test_ammgnn_refuses_a_non_graph_backbone():
    from metarepro.models import build as bb
    with pytest.raises(TypeError, match="gnn backbone"):
        build("ammgnn", bb("conv4", (1, 28, 28), 5, filters=8), "classification")


@pytest.mark.parametrize("method", ["gmeta", "ammgnn", "maml", "protonet"])
def test_cml_reads_the_subgraph_embedding_before_the_head(method):
    """`<method>+cml`: the co-learner is an MLP on the centre node's embedding (the `features` module), and a meta
    step trains it beside the learner."""
    from types import SimpleNamespace
    torch.manual_seed(0)
    net = build_backbone("gnn", (M, M + F), 2, hidden=[4, 4]).double()
    learner = build(method, net, "classification", **({} if method == "protonet" else {"inner_steps": 1}))
    run = SimpleNamespace(method=f"{method}+cml", addons={"cml": {}}, train={})
    extras = addon_layer.build(run, learner, (M, M + F), 2)
    term = next(t for t in extras.terms if t.name == "cml")
    assert term.tap == "features" and isinstance(term.head[0], torch.nn.Linear) and term.head[0].in_features == 4
    term.double()
    opt = torch.optim.Adam(list(learner.parameters()) + list(term.parameters()), lr=1e-2)
    before = [p.detach().clone() for p in term.parameters()]
    stats = meta_step(learner, [_task(seed=1), _task(seed=2)], opt, terms=list(extras.terms))
    assert "cml_loss" in stats and np.isfinite(stats["cml_loss"])
    assert any((p.detach() - q).abs().max() > 0 for p, q in zip(term.parameters(), before))


def test_maml_and_protonet_on_the_gnn_match_hand_computation():
    """The baselines on the same tiny graph task: MAML's inner step (cross-entropy of the head's logits) and
    ProtoNet's logits (squared distances of the GNN embeddings to the support means; the head is dropped)."""
    task = _task(seed=9)
    net = _sgc(6)
    W, b = net.features.layers[0].weight.detach().numpy().copy(), net.features.layers[0].bias.detach().numpy().copy()
    H, c = net.head.weight.detach().numpy().copy(), net.head.bias.detach().numpy().copy()
    learner = build("maml", net, "classification", inner_lr=0.3, inner_steps=1)
    learner.eval()
    adapted = learner.adapt(task, 1)
    p = _propagated(task.x_support.numpy())
    u = p @ W.T + b
    logits = u @ H.T + c
    y = task.y_support.numpy()
    pr = np.exp(logits - logits.max(1, keepdims=True)); pr /= pr.sum(1, keepdims=True)
    dz = (pr - np.eye(2)[y]) / len(y)
    du = dz @ H
    np.testing.assert_allclose(adapted.params["head.weight"].detach().numpy(), H - 0.3 * dz.T @ u, atol=1e-6)
    np.testing.assert_allclose(adapted.params["features.layers.0.weight"].detach().numpy(), W - 0.3 * du.T @ p,
                               atol=1e-6)

    proto = build("protonet", _sgc(6), "classification")
    proto.eval()
    zs, zq = u, _propagated(task.x_query.numpy()) @ W.T + b
    centres = np.stack([zs[y == k].mean(0) for k in range(2)])
    want = -((zq[:, None] - centres[None]) ** 2).sum(-1)
    got = proto.adapt(task, 0)(task.x_query)
    np.testing.assert_allclose(got.detach().numpy(), want, atol=1e-6)
