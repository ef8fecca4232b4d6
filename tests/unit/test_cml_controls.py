"""CML's parameter-matched controls on Conv-4: "More-MAML" (extra conv layers in block 4) and the multi-branch model
(a second classifier of the co-learner's architecture, adapted and used at test time)."""
import torch
import torch.nn.functional as F

from metarepro import addons, methods, models

try:
    from .tiny import random_image_tasks
except ImportError:
    from tiny import random_image_tasks


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_controls_match_the_parameter_count_of_maml_with_cml():
    torch.manual_seed(0)
    base = models.build("conv4", (3, 32, 32), 5, filters=32)
    co = addons.make("cml", methods.build("maml", base, "classification"), (3, 32, 32), 5)
    more = models.build("conv4", (3, 32, 32), 5, filters=32, extra_blocks=2)
    branch = models.build("conv4", (3, 32, 32), 5, filters=32, branch=True)
    assert n_params(branch) == n_params(base) + n_params(co)                 # exactly: the same architecture
    assert n_params(more) == n_params(base) + 2 * (9 * 32 * 32 + 32 + 2 * 32)  # two conv3x3-BN layers more
    assert abs(n_params(more) / (n_params(base) + n_params(co)) - 1) < 0.02


def test_multi_branch_predicts_the_mean_of_both_branches_by_hand():
    torch.manual_seed(1)
    m = models.build("conv4", (1, 16, 16), 5, filters=4, branch=True).double()
    x = torch.randn(6, 1, 16, 16, dtype=torch.float64)
    h = x
    for i in range(3):
        b = m.features[i]
        h = F.max_pool2d(F.relu(F.batch_norm(F.conv2d(h, b[0].weight, b[0].bias, padding=1), None, None,
                                             b[1].weight, b[1].bias, training=True)), 2)
    b = m.features[3]
    fmap = F.relu(F.batch_norm(F.conv2d(h, b[0].weight, b[0].bias, padding=1), None, None, b[1].weight, b[1].bias,
                               training=True))
    main = F.max_pool2d(fmap, 2).flatten(1) @ m.head.weight.t() + m.head.bias
    torch.testing.assert_close(m(x), (main + m.branch(fmap)) / 2, atol=1e-12, rtol=0)


def test_maml_adapts_the_controls_extra_weights_in_its_inner_loop():
    torch.manual_seed(2)
    for kw in ({"extra_blocks": 1}, {"branch": True}):
        learner = methods.build("maml", models.build("conv4", (1, 28, 28), 5, filters=4, **kw), "classification",
                                inner_lr=0.4)
        task = random_image_tasks(1, queries=2, seed=3)[0]
        adapted = learner.adapt(task, 1, create_graph=False)
        extra = [n for n in adapted.params if n.startswith("branch.") or n.startswith("features.3.3")]
        assert extra and all(not torch.equal(adapted.params[n], dict(learner.model.named_parameters())[n])
                             for n in extra), kw
