"""MTL's meta-transfer stage against hand computations (float64, 1e-6): scaling & shifting of frozen convolutions,
the head-only first-order inner loop, what the outer loop may move and at which learning rates."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metarepro import models
from metarepro.addons.outer import meta_step
from metarepro.methods import build

try:
    from .tiny import random_image_tasks
except ImportError:
    from tiny import random_image_tasks


def _mtl(**kw):
    torch.manual_seed(0)
    return build("mtl", models.build("conv4", (1, 16, 16), 5, filters=3).double(), "classification", **kw).double()


def test_scaling_and_shifting_of_every_frozen_convolution():
    learner = _mtl(shift="all")
    conv = learner.model.features[0][0]
    with torch.no_grad():
        learner.ss_scale[0].copy_(torch.tensor([0.5, 2.0, -1.0]).view(3, 1, 1, 1))
        learner.ss_shift[0].copy_(torch.tensor([0.1, -0.2, 0.3]))
        learner.ss_scale[1].copy_(torch.arange(9, dtype=torch.float64).view(3, 3, 1, 1) / 4 - 1)
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    w = conv.weight * torch.tensor([0.5, 2.0, -1.0], dtype=torch.float64).view(-1, 1, 1, 1)   # W ⊙ Φ_S1
    want = F.conv2d(x, w, conv.bias + learner.ss_shift[0], padding=1)     # + (b + Φ_S2)
    torch.testing.assert_close(conv(x), want, rtol=0, atol=1e-12)
    # one scale per 3x3 kernel, i.e. per (output, input) channel pair, as the official conv2d_mtl's mtl_weight
    conv2 = learner.model.features[1][0]
    h = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    w2 = conv2.weight.clone()
    for o in range(3):
        for i in range(3):
            w2[o, i] *= o * 3 / 4 + i / 4 - 1
    torch.testing.assert_close(conv2(h), F.conv2d(h, w2, conv2.bias + learner.ss_shift[1], padding=1),
                               rtol=0, atol=1e-12)
    assert [tuple(s.shape) for s in learner.ss_scale] == [(3, 1, 1, 1)] + [(3, 3, 1, 1)] * 3
    assert [tuple(s.shape) for s in learner.ss_shift] == [(3,)] * 4
    # the frozen weights keep their names: a pretrained backbone's state loads as is; copies stay modulated
    assert set(learner.model.features.state_dict()) == set(models.build("conv4", (1, 16, 16), 5, filters=3)
                                                           .features.state_dict())
    import copy
    twin = copy.deepcopy(learner)
    with torch.no_grad():
        twin.ss_scale[1].mul_(2.0)
    torch.testing.assert_close(conv2(h), F.conv2d(h, w2, conv2.bias + learner.ss_shift[1], padding=1),
                               rtol=0, atol=1e-12)
    assert not torch.allclose(twin.model.features[1][0](h), conv2(h))
    assert len(learner.ss_scale) == 4 and len(learner.ss_shift) == 4
    assert len(_mtl(shift="first").ss_shift) == 1                          # the official code's choice


def test_head_only_inner_loop_is_hand_sgd_on_the_support_features():
    learner = _mtl(inner_lr=0.3, inner_steps=2).train()
    task = random_image_tasks(1, 2, seed=1, size=16)[0]
    task = type(task)(task.x_support.double(), task.y_support, task.x_query.double(), task.y_query)
    zs = learner.embed_task(task, True)[0].detach().numpy()
    w, b = learner.model.head.weight.detach().numpy().copy(), learner.model.head.bias.detach().numpy().copy()
    y = np.eye(5)[task.y_support.numpy()]
    for _ in range(2):
        logits = zs @ w.T + b
        p = np.exp(logits - logits.max(1, keepdims=True)); p /= p.sum(1, keepdims=True)
        d = (p - y) / len(y)
        w, b = w - 0.3 * d.T @ zs, b - 0.3 * d.sum(0)
    adapted = list(learner.adapt_trajectory(task, 2, False))
    final = adapted[-1](task.x_query).detach().numpy()
    zq = learner.embed_task(task, True)[1].detach().numpy()
    np.testing.assert_allclose(final, zq @ w.T + b, atol=1e-6, rtol=0)
    # first order: the query loss's gradient w.r.t. theta (the head's initialisation) is dL/dtheta' itself
    out = adapted[-1](task.x_query)
    loss = F.cross_entropy(out, task.y_query)
    loss.backward()
    pq = torch.softmax(out.detach(), 1).numpy()
    dq = (pq - np.eye(5)[task.y_query.numpy()]) / len(pq)
    np.testing.assert_allclose(learner.model.head.weight.grad.numpy(), dq.T @ zq, atol=1e-6, rtol=0)


def test_meta_step_moves_ss_batchnorm_and_head_never_the_filters_at_their_own_lrs():
    learner = _mtl(inner_steps=3).train()
    groups = learner.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in learner.model.head.parameters()}
    filters = {n: p.detach().clone() for n, p in learner.model.named_parameters() if not p.requires_grad}
    assert filters and all(".0.weight" in n or ".0.bias" in n for n in filters)    # every conv, nothing else
    movable = {n: p.detach().clone() for n, p in learner.named_parameters() if p.requires_grad}
    tasks = [type(t)(t.x_support.double(), t.y_support, t.x_query.double(), t.y_query)
             for t in random_image_tasks(2, 2, seed=2, size=16)]
    meta_step(learner, tasks, torch.optim.Adam(groups))
    for n, p in learner.model.named_parameters():
        if n in filters:
            assert torch.equal(p, filters[n]), n
    moved = [n for n, p in learner.named_parameters() if p.requires_grad and not torch.equal(p, movable[n])]
    assert any(n.startswith("ss_scale") for n in moved) and any("head" in n for n in moved)
    assert any(".1.weight" in n for n in moved)                          # batch-norm affine is meta-learned


def test_mtl_needs_the_pretrain_stage():
    from metarepro.config import PRETRAINED_METHODS
    assert "mtl" in PRETRAINED_METHODS and build("mtl", models.build("conv4", (1, 16, 16), 5), "classification").needs_pretrained
    with pytest.raises(ValueError, match="shift"):
        build("mtl", models.build("conv4", (1, 16, 16), 5), "classification", shift="none")


def test_ablation_modes_ft_meta_learns_every_weight_and_theta_nothing():
    """mode ft: no scaling/shifting, every backbone weight (filters included) is meta-learned at ss_lr and the
    forward pass is the plain backbone's; mode theta: no meta-parameter at all (the training loop then runs 0
    iterations), and adaptation is the same head-only SGD as MTL's."""
    x = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    ft = _mtl(mode="ft", inner_steps=3).train()
    plain = _mtl(mode="theta")
    assert len(ft.ss_scale) == 0 and len(ft.ss_shift) == 0
    assert torch.equal(ft.model(x), plain.model(x))          # no hooks: the pretrained backbone as it is
    groups = ft.param_groups(1e-3)
    assert [g["lr"] for g in groups] == [1e-4, 1e-3]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in ft.model.features.parameters()}
    before = {n: p.detach().clone() for n, p in ft.model.named_parameters()}
    tasks = [type(t)(t.x_support.double(), t.y_support, t.x_query.double(), t.y_query)
             for t in random_image_tasks(2, 2, seed=2, size=16)]
    meta_step(ft, tasks, torch.optim.Adam(groups))
    assert not torch.equal(ft.model.features[0][0].weight, before["features.0.0.weight"])   # the filters move
    assert not any(p.requires_grad for p in plain.parameters()) and len(plain.ss_scale) == 0
    ss = _mtl(inner_steps=3)
    t = tasks[0]
    for a, b in zip(plain.adapt_trajectory(t, 3, False), ss.adapt_trajectory(t, 3, False)):
        torch.testing.assert_close(a(t.x_query), b(t.x_query), atol=1e-12, rtol=0)   # SS at its init = identity
    with pytest.raises(ValueError, match="mode"):
        _mtl(mode="both")
