"""MAML++ against hand-written computations (1e-6): LSLR steps, the multi-step loss and its gradients over two
inner steps, the official MSL weight schedule, derivative-order annealing, per-step batch norm, cosine annealing."""
import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from metarepro import methods
from metarepro.addons.outer import meta_step
from metarepro.methods.base import Task
from metarepro.methods.mamlpp import msl_weights
from metarepro.models.conv4 import Conv4

try:  # pytest's rootdir import mode puts tests/unit on sys.path
    from .tiny import Linear1D, random_image_tasks, regression_task
except ImportError:
    from tiny import Linear1D, random_image_tasks, regression_task

OFF = dict(multi_step_loss=False, per_step_bn=False, lslr=False, derivative_order_annealing=False,
           cosine_annealing=False)


def _hand_two_steps(theta0, lrs, weights, x, y, u, v, second_order):
    """Two LSLR steps theta_{j+1} = theta_j - D_j g(theta_j) (D_j = diag of step j's per-parameter lrs) on MSE,
    total = weights[0] L_q(theta_1) + weights[1] L_q(theta_2), and its gradients to theta_0 and to D_0, D_1."""
    x, y, u, v = (a.ravel() for a in (x, y, u, v))
    grad_s = lambda th: np.array([2 * np.mean((th[0] * x + th[1] - y) * x), 2 * np.mean(th[0] * x + th[1] - y)])
    grad_q = lambda th: np.array([2 * np.mean((th[0] * u + th[1] - v) * u), 2 * np.mean(th[0] * u + th[1] - v)])
    loss_q = lambda th: np.mean((th[0] * u + th[1] - v) ** 2)
    hess = 2 * np.array([[np.mean(x * x), np.mean(x)], [np.mean(x), 1.0]])   # Hessian of L_s (constant)
    D0, D1 = np.diag(lrs[0]), np.diag(lrs[1])
    th0 = np.asarray(theta0, dtype=float)
    g0 = grad_s(th0); th1 = th0 - D0 @ g0
    g1 = grad_s(th1); th2 = th1 - D1 @ g1
    total = weights[0] * loss_q(th1) + weights[1] * loss_q(th2)
    J0 = np.eye(2) - D0 @ hess if second_order else np.eye(2)   # dtheta_1/dtheta_0 (first order: g constant)
    J1 = np.eye(2) - D1 @ hess if second_order else np.eye(2)   # dtheta_2/dtheta_1
    d_th2 = weights[1] * grad_q(th2)
    d_th1 = weights[0] * grad_q(th1) + J1.T @ d_th2
    return {"th1": th1, "th2": th2, "total": total, "theta": J0.T @ d_th1,
            "lr0": -g0 * d_th1, "lr1": -g1 * d_th2}          # dtheta_{j+1}/dD_j = -diag(g_j)


LRS = np.array([[0.05, 0.11], [0.08, 0.03]])   # [step][w, b]: distinct per layer and per step


def _lslr_learner(w=0.7, b=-0.2, **kw):
    args = {**OFF, "lslr": True, "inner_steps": 2, **kw}
    learner = methods.build("mamlpp", Linear1D(w, b), "regression", **args)
    with torch.no_grad():
        learner.lslr["w"].copy_(torch.tensor(LRS[:, 0])); learner.lslr["b"].copy_(torch.tensor(LRS[:, 1]))
    return learner


@pytest.mark.parametrize("second_order", [True, False])
def test_two_lslr_steps_multi_step_loss_and_gradients_to_theta_and_step_lrs(second_order):
    (x, y, u, v), task = regression_task()
    # MSL over 4 epochs of 1 iteration; at epoch 1 the weights for N=2 are [0.5 - 1/8, 0.5 + 1/8]
    learner = _lslr_learner(multi_step_loss=True, msl_epochs=4, iterations_per_epoch=1, first_order=not second_order)
    learner.set_iteration(1)
    learner.train()
    assert learner.current_msl_weights() == pytest.approx([0.375, 0.625], abs=1e-12)
    ref = _hand_two_steps((0.7, -0.2), LRS, (0.375, 0.625), x, y, u, v, second_order)

    traj = list(learner.adapt_trajectory(task, 2, create_graph=second_order))
    np.testing.assert_allclose([traj[1].params["w"].item(), traj[1].params["b"].item()], ref["th1"], atol=1e-6)
    np.testing.assert_allclose([traj[2].params["w"].item(), traj[2].params["b"].item()], ref["th2"], atol=1e-6)

    loss, _ = learner.meta_loss(task)
    assert loss.item() == pytest.approx(ref["total"], abs=1e-6)
    loss.backward()
    np.testing.assert_allclose([learner.model.w.grad.item(), learner.model.b.grad.item()], ref["theta"], atol=1e-6)
    np.testing.assert_allclose(learner.lslr["w"].grad.numpy(), [ref["lr0"][0], ref["lr1"][0]], atol=1e-6)
    np.testing.assert_allclose(learner.lslr["b"].grad.numpy(), [ref["lr0"][1], ref["lr1"][1]], atol=1e-6)
    if second_order:
        fo = _hand_two_steps((0.7, -0.2), LRS, (0.375, 0.625), x, y, u, v, False)
        assert np.abs(fo["theta"] - ref["theta"]).max() > 1e-3 and np.abs(fo["lr0"] - ref["lr0"]).max() > 1e-4


def _official_importance_vector(n_steps, epoch, msl_epochs):
    """get_per_step_loss_importance_vector of HowToTrainYourMAMLPytorch (few_shot_learning_system.py), restated."""
    w = np.ones(n_steps) / n_steps
    decay = 1.0 / n_steps / msl_epochs
    floor = 0.03 / n_steps
    for i in range(n_steps - 1):
        w[i] = np.maximum(w[i] - epoch * decay, floor)
    w[-1] = np.minimum(w[-1] + epoch * (n_steps - 1) * decay, 1.0 - (n_steps - 1) * floor)
    return w


def test_msl_weight_schedule_matches_official_formula():
    for n, e_max in [(5, 10), (5, 15), (3, 7), (1, 10)]:
        for epoch in range(e_max):
            np.testing.assert_allclose(msl_weights(n, epoch, e_max), _official_importance_vector(n, epoch, e_max),
                                       atol=1e-12)
            assert sum(msl_weights(n, epoch, e_max)) == pytest.approx(1.0, abs=1e-12)
    # N = 5, 10 epochs: decay 0.02 per epoch, floor 0.006, cap 0.976
    np.testing.assert_allclose(msl_weights(5, 0, 10), [0.2] * 5, atol=1e-12)
    np.testing.assert_allclose(msl_weights(5, 5, 10), [0.1] * 4 + [0.6], atol=1e-12)
    np.testing.assert_allclose(msl_weights(5, 9, 10), [0.02] * 4 + [0.92], atol=1e-12)
    learner = methods.build("mamlpp", Linear1D(0.7, -0.2), "regression", inner_steps=5, msl_epochs=10,
                            per_step_bn=False)
    learner.train()
    learner.set_iteration(2499)                      # 500 iterations per epoch: epoch 4
    np.testing.assert_allclose(learner.current_msl_weights(), [0.12] * 4 + [0.52], atol=1e-12)
    learner.set_iteration(2500)                      # epoch 5
    np.testing.assert_allclose(learner.current_msl_weights(), [0.1] * 4 + [0.6], atol=1e-12)
    learner.set_iteration(5000)                      # epoch 10 = msl_epochs: last step only, as the official code
    assert learner.current_msl_weights() is None
    learner.set_iteration(0); learner.eval()         # evaluation: last step only
    assert learner.current_msl_weights() is None


def test_derivative_order_annealing_switches_at_first_order_epochs():
    (x, y, u, v), task = regression_task()
    learner = _lslr_learner(derivative_order_annealing=True, first_order_epochs=2, iterations_per_epoch=10)
    learner.train()
    opt = torch.optim.SGD(learner.parameters(), lr=0.1)
    learner.set_iteration(19)                        # epoch 1: still first order
    assert not learner.second_order_now()
    theta = np.array([0.7, -0.2])
    fo = _hand_two_steps(theta, LRS, (0.0, 1.0), x, y, u, v, second_order=False)
    meta_step(learner, [task], opt)
    assert int(learner.iteration) == 20 and learner.second_order_now()   # meta_step advanced to epoch 2
    theta1 = np.array([learner.model.w.item(), learner.model.b.item()])
    np.testing.assert_allclose(theta1, theta - 0.1 * fo["theta"], atol=1e-6)
    lrs1 = LRS - 0.1 * np.stack([fo["lr0"], fo["lr1"]])
    np.testing.assert_allclose(np.stack([learner.lslr["w"].detach().numpy(), learner.lslr["b"].detach().numpy()], 1),
                               lrs1, atol=1e-6)
    so = _hand_two_steps(theta1, lrs1, (0.0, 1.0), x, y, u, v, second_order=True)
    meta_step(learner, [task], opt)                   # iteration 20: second order
    np.testing.assert_allclose([learner.model.w.item(), learner.model.b.item()], theta1 - 0.1 * so["theta"], atol=1e-6)
    always_fo = _lslr_learner(derivative_order_annealing=True, first_order_epochs=0, first_order=True)
    assert not always_fo.second_order_now()


def test_all_tricks_off_with_inner_bn_equals_maml():
    torch.manual_seed(0)
    model = Conv4((1, 16, 16), 5, filters=4)      # 16x16: the smallest input Conv4 takes, to keep this fast
    task = random_image_tasks(1, queries=3, size=16)[0]
    maml = methods.build("maml", copy.deepcopy(model), "classification", inner_lr=0.1, inner_steps=2)
    pp = methods.build("mamlpp", copy.deepcopy(model), "classification", inner_lr=0.1, inner_steps=2, inner_bn=True,
                       **OFF)
    losses = []
    for learner in (maml, pp):
        learner.train()
        loss, _ = learner.meta_loss(task)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-6)
    for (k, a), (_, b) in zip(maml.model.named_parameters(), pp.model.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=0, msg=k)
    # official: BN not adapted
    pp_shared = methods.build("mamlpp", copy.deepcopy(model), "classification", inner_steps=2, **OFF)
    bn = {f"features.{i}.1.{p}" for i in range(4) for p in ("weight", "bias")}
    assert not bn & set(pp_shared.init_params()) and "features.0.0.weight" in pp_shared.init_params()


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, track_running_stats=False)).double()


def test_per_step_bn_selects_weights_by_step_and_routes_gradients():
    net = _bn_net()
    W, c = net[0].weight.detach().numpy().copy(), net[0].bias.detach().numpy().copy()
    learner = methods.build("mamlpp", net, "classification", inner_steps=2, lslr=False, multi_step_loss=False,
                            derivative_order_annealing=False, inner_lr=0.3)
    gam = np.array([[1.0, 2.0], [0.5, -1.0]]); bet = np.array([[0.0, 0.1], [-0.3, 0.4]])   # N = 2 slots
    with torch.no_grad():
        learner.bn_weight["1"].copy_(torch.tensor(gam)); learner.bn_bias["1"].copy_(torch.tensor(bet))
    assert set(learner.init_params()) == {"0.weight", "0.bias"} and not net[1].weight.requires_grad
    assert {"bn_weight.1", "bn_bias.1"} <= set(learner.state_dict())
    x = torch.randn(6, 3, dtype=torch.float64)
    h = x.numpy() @ W.T + c
    norm = (h - h.mean(0)) / np.sqrt(h.var(0) + 1e-5)          # transductive BN: biased batch variance
    for step in range(5):
        s = min(step, 1)                                        # steps past the last slot reuse it
        out = learner.forward_with(learner.init_params(), x, step).detach().numpy()
        np.testing.assert_allclose(out, norm * gam[s] + bet[s], atol=1e-6)
    # the official indexing: the query after k updates uses the slot of the k-th update's step (k - 1)
    assert [learner.query_slot(k) for k in range(4)] == [0, 0, 1, 2]
    learned = learner.adapt(Task(x, torch.tensor([0, 1, 0, 1, 0, 1]), x[:4], torch.tensor([1, 0, 1, 0])))
    assert learned.step == 2
    torch.testing.assert_close(learned(x), learner.forward_with(learned.params, x, 1))
    task = Task(x, torch.tensor([0, 1, 0, 1, 0, 1]), x[:4], torch.tensor([1, 0, 1, 0]))
    for first_order, slot0_used in [(True, False), (False, True)]:
        learner.zero_grad(set_to_none=True)
        learner.first_order = first_order
        learner.train()
        learner.meta_loss(task)[0].backward()
        gw = learner.bn_weight["1"].grad
        assert gw[1].abs().sum() > 0                           # the query after 2 updates uses slot 1
        # slot 0 acts only through the support gradient of step 0: no meta-gradient in first order
        assert (gw[0].abs().sum() > 0) == slot0_used


def test_parameter_count_leaves_out_the_batch_norm_weights_per_step_bn_replaces():
    net = _bn_net()                                           # Linear(3, 2): 8, BN: weight 2 + bias 2
    per_step = methods.build("mamlpp", net, "classification", inner_steps=3, lslr=True)
    # Linear 8 + per-step BN 3 slots x (2 + 2) = 12 + LSLR 3 steps x 2 tensors = 6; the base BN's 4 never run
    assert per_step.replaced_parameters() == {"1.weight", "1.bias"}
    assert per_step.parameter_count() == 8 + 12 + 6 == sum(p.numel() for p in per_step.parameters()) - 4
    shared = methods.build("mamlpp", _bn_net(), "classification", inner_steps=3, lslr=True, per_step_bn=False)
    assert shared.replaced_parameters() == set()
    assert shared.parameter_count() == sum(p.numel() for p in shared.parameters()) == 8 + 4 + 6


def test_per_step_running_statistics_where_the_backbone_tracks_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).double()
    W, c = net[0].weight.detach().numpy().copy(), net[0].bias.detach().numpy().copy()
    learner = methods.build("mamlpp", net, "classification", inner_steps=2, lslr=False)
    x = torch.randn(6, 3, dtype=torch.float64)
    h = x.numpy() @ W.T + c
    learner.train()
    learner.forward_with(learner.init_params(), x, 1)           # momentum 0.1 update of slot 1 only
    mean, var = learner.bn_stats.get_buffer("1__mean"), learner.bn_stats.get_buffer("1__var")
    np.testing.assert_allclose(mean[1].numpy(), 0.1 * h.mean(0), atol=1e-6)
    np.testing.assert_allclose(var[1].numpy(), 0.9 + 0.1 * h.var(0, ddof=1), atol=1e-6)
    assert torch.all(mean[0] == 0) and torch.all(var[0] == 1) and mean.shape[0] == 2
    learner.eval()                                               # evaluation normalises with slot s's statistics
    out = learner.forward_with(learner.init_params(), x, 1).detach().numpy()
    np.testing.assert_allclose(out, (h - mean[1].numpy()) / np.sqrt(var[1].numpy() + 1e-5), atol=1e-6)
    assert torch.all(net[1].running_mean == 0)                   # the backbone's own statistics are untouched


def test_cosine_annealing_scheduler_and_off_switch():
    learner = methods.build("mamlpp", Linear1D(0.7, -0.2), "regression", min_meta_lr=1e-5, per_step_bn=False)
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    sched = learner.make_scheduler(opt, 10)
    for k in range(1, 11):
        opt.step(); sched.step()
        expected = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * k / 10)) / 2
        assert opt.param_groups[0]["lr"] == pytest.approx(expected, abs=1e-9)
    assert methods.build("mamlpp", Linear1D(0.7, -0.2), "regression", **OFF).make_scheduler(opt, 10) is None


def test_smoke_conv4_all_tricks_trains_and_state_dict_round_trips():
    # 1-iteration epochs: meta-steps 0, 1, 2 are first order + MSL, second order + MSL, second order + last step only
    hp = dict(inner_lr=0.1, inner_steps=2, eval_inner_steps=4, msl_epochs=2, first_order_epochs=1,
              iterations_per_epoch=1)
    torch.manual_seed(0)
    learner = methods.build("mamlpp", Conv4((1, 28, 28), 5, filters=4), "classification", **hp)
    before = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)
    sched = learner.make_scheduler(opt, 3)
    learner.train()
    for i in range(3):
        stats = meta_step(learner, random_image_tasks(1, queries=3, seed=i), opt)
        sched.step()
        assert np.isfinite(stats["loss"]) and 0 <= stats["metric"] <= 100
    after = learner.state_dict()
    assert int(after["iteration"]) == 3 and opt.param_groups[0]["lr"] == pytest.approx(1e-5)
    for k in ("lslr.features__0__0__weight", "bn_weight.features__0__1", "bn_bias.features__3__1", "model.head.weight"):
        assert not torch.equal(before[k], after[k]), k                 # all meta-parameter kinds are learned
    assert torch.equal(before["model.features.0.1.weight"], after["model.features.0.1.weight"])  # superseded
    learner.eval()
    task = random_image_tasks(1, queries=3, seed=9)[0]
    scores = learner.evaluate_task(task)                               # 4 > inner_steps: last lr / BN slot reused
    assert len(scores) == 5
    torch.manual_seed(1)
    clone = methods.build("mamlpp", Conv4((1, 28, 28), 5, filters=4), "classification", **hp)
    clone.load_state_dict(learner.state_dict())
    clone.eval()
    assert clone.evaluate_task(task) == scores and clone.epoch == learner.epoch == 3


def test_bnrs_is_reachable_from_the_config():
    """backbone_args bn_running_stats: true gives MAML++ per-step running statistics (N slots per BN layer)."""
    from metarepro import models
    from metarepro.config import resolve_run, validate_config
    cfg = validate_config({"experiments": {"e": {
        "dataset": "omniglot", "backbone": "conv4", "backbone_args": {"filters": 4, "bn_running_stats": True},
        "ways": 5, "shots": [1], "methods": {"mamlpp": {"inner_steps": 3}}}}})
    run = resolve_run(cfg, "e", "mamlpp", 1, 0)
    learner = methods.build("mamlpp", models.build("conv4", (1, 28, 28), 5, **run.backbone_args), "classification",
                            **run.method_args)
    stats = dict(learner.bn_stats.named_buffers())
    assert len(stats) == 8 and all(v.shape == (3, 4) for v in stats.values())
    assert learner.bn_weight["features__0__1"].shape == (3, 4)
