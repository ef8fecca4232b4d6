"""The add-on seams: per-task outcomes, task samplers, meta-gradient aggregators, outer-loss terms (hand-computed
references to 1e-6, and bit-for-bit equality with the pre-add-on meta-step where the issue asks for it)."""
import copy
import csv
import inspect
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import random_image_tasks

from metarepro import addons, formats, methods, models
from metarepro.addons.ht import HardTaskSampler, failure_class
from metarepro.addons.mean import MeanAggregator
from metarepro.addons.oamfs import CosineAggregator, cosine_weights
from metarepro.addon_cards import ADDON_CARDS
from metarepro.addons.outer import meta_step
from metarepro.config import (ADDON_KINDS, MethodName, NOT_META_TRAINED, RunConfig, load_config, load_schema,
                              resolve_run)
from metarepro.data.sampling import SinusoidEpisodes, TaskSampler
from metarepro.data.sinusoid import SinusoidTasks
from metarepro.data.store import load_split, write_dataset
from metarepro.methods.base import Task, TaskOutcome, TaskResult
from metarepro.train import metatrain

GRADIENT_METHODS = {"maml": {"inner_lr": 0.4}, "fomaml": {"inner_lr": 0.4}, "metasgd": {"init_lr": 0.4},
                    "mamlpp": {"inner_lr": 0.4, "inner_steps": 2}, "pamela": {"inner_lr": 0.4, "inner_steps": 2}}


def conv_learner(method="maml", ways=5, seed=0, **hp):
    torch.manual_seed(seed)
    return methods.build(method, models.build("conv4", (1, 28, 28), ways, filters=4), "classification", **hp)


def mlp_learner(method="maml", seed=0, **hp):
    torch.manual_seed(seed)
    return methods.build(method, models.build("mlp", (1,), 1), "regression", **hp)


def sinusoid_tasks(n, shots=5, seed=0):
    return TaskSampler(SinusoidEpisodes(SinusoidTasks(), shots, 10, seed)).sample(0, n)


def grads_of(module):
    return {k: None if p.grad is None else p.grad.clone() for k, p in module.named_parameters()}


def frozen_opt(params):
    """An optimizer whose step leaves the parameters as they are (lr 0), so the gradients can be read after."""
    return torch.optim.SGD(params, lr=0.0)


# ---- registries -----------------------------------------------------------------------------------------------

def test_addon_cards_equal_registries_and_method_grammar():
    """The add-on cards (torch-free) and the registries (torch) name the same add-ons with the same kinds, defaults
    and test-time hooks; ADDON_KINDS, the names a method name may carry, are the cards' add-ons less the defaults."""
    registries = {"sampler": addons.SAMPLERS, "aggregator": addons.AGGREGATORS, "term": addons.TERMS}
    assert {n: c.kind for n, c in ADDON_CARDS.items()} == {n: k for k, reg in registries.items() for n in reg}
    assert ADDON_KINDS == {n: c.kind for n, c in ADDON_CARDS.items() if not c.default}
    assert {n for n, c in ADDON_CARDS.items() if c.default} == {addons.AddOns().sampler,
                                                                addons.AddOns().aggregator.name}
    for n, cls in addons.TERMS.items():
        assert ADDON_CARDS[n].predicts_at_test == cls.predicts_at_test, n
        assert bool(ADDON_CARDS[n].noise_control) == ("control" in inspect.signature(cls.__init__).parameters), n
    for n, cls in {**addons.SAMPLERS, **addons.AGGREGATORS, **addons.TERMS}.items():
        assert cls.name == n
        # the card's settings are the constructor's arguments; one with a default in the card has none in the
        # constructor (addons.make fills the card's in), so a second default cannot disagree with the card
        params = inspect.signature(cls.__init__).parameters
        for hp, spec in ADDON_CARDS[n].hparams.items():
            assert hp in params, f"{n}: card setting {hp!r} is not a constructor argument"
            if "default" in spec:
                assert params[hp].default is inspect.Parameter.empty, \
                    f"{n}.{hp}: the constructor has a default ({params[hp].default!r}); the card's is the only one"
    assert load_schema()["$defs"]["addons"]["properties"].keys() == ADDON_KINDS.keys()
    assert NOT_META_TRAINED == {n for n, c in methods.METHODS.items() if not c.meta_trainable}
    assert MethodName.parse("pamela@q_shared+cml+ht") == MethodName("pamela", "q_shared", ("cml", "ht"))
    assert MethodName.parse("mamlpp+cml") == MethodName("mamlpp", "", ("cml",))
    assert isinstance(methods.build("mamlpp+cml", models.build("mlp", (1,), 1), "regression"), methods.METHODS["mamlpp"])


# ---- per-task outcomes ------------------------------------------------------------------------------------------

def test_per_class_accuracy_matches_a_hand_computation():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 0, 2])                  # class 0: 1/2, class 1: 2/2, class 2: 1/2
    logits = F.one_hot(pred, 3).double() * 5.0
    task = Task(torch.zeros(3, 1), torch.arange(3), torch.zeros(6, 1), y, classes=(40, 7, 12))
    r = TaskOutcome(torch.tensor(1.5), logits, task).results(conv_learner())[0]
    assert r.class_accuracy == (50.0, 100.0, 50.0) and r.metric == pytest.approx(400 / 6)
    assert r.classes == (40, 7, 12) and r.loss == 1.5
    assert failure_class(r) == 40                             # lowest accuracy, ties -> the lowest label


@pytest.mark.parametrize("method", ["maml", "mamlpp", "protonet", "metalstm"])
def test_meta_step_per_task_results_equal_single_task_calls(method):
    hp = {"protonet": {}, "metalstm": {"inner_steps": 2}}.get(method, GRADIENT_METHODS.get(method, {}))
    learner = conv_learner(method, **hp)
    tasks = [Task(t.x_support, t.y_support, t.x_query, t.y_query, classes=tuple(range(5 * i, 5 * i + 5)))
             for i, t in enumerate(random_image_tasks(3, queries=3, seed=1))]
    before = copy.deepcopy(learner)
    stats = meta_step(learner, tasks, frozen_opt(learner.parameters()))
    expected = [before.outcome(t).results(before)[0] for t in tasks]
    assert len(stats.tasks) == 3
    for got, want in zip(stats.tasks, expected):
        assert got.loss == pytest.approx(want.loss, abs=1e-6) and got.metric == pytest.approx(want.metric)
        assert got.class_accuracy == want.class_accuracy and got.classes == want.classes
    assert stats["loss"] == pytest.approx(np.mean([r.loss for r in expected]), abs=1e-6)


@pytest.mark.parametrize("method", ["maml", "fomaml", "metasgd", "mamlpp", "pamela"])
def test_stacked_per_task_outcomes_equal_the_task_by_task_loop(method, monkeypatch):
    hp = {"mamlpp": {"inner_steps": 3}, "pamela": {"inner_steps": 3}}.get(method, {})
    tasks = sinusoid_tasks(6)
    stacked = mlp_learner(method, **hp)
    looped = copy.deepcopy(stacked)
    assert stacked.can_stack(tasks)
    term_s = addons.make("cml", stacked, (1,), 1, weight=0.5)
    term_l = copy.deepcopy(term_s)
    term_l.meta = [looped]
    a = meta_step(stacked, tasks, frozen_opt(stacked.parameters()), terms=[term_s])
    monkeypatch.setattr(type(looped), "can_stack", lambda self, t: False)
    b = meta_step(looped, tasks, frozen_opt(looped.parameters()), terms=[term_l])
    # float32 in another summation order (batched vs per-task GEMMs, whose kernels differ by CPU ISA): an absolute
    # 1e-6 on MSEs of 7-15 failed on an Intel Xeon (7.2423134 stacked vs 7.2423120 looped: 1.9e-7 relative, ~3 ulps);
    # relative 1e-5 (~80 ulps), as for the gradients below, leaves room for other ISAs after 2-3 inner steps
    for ra, rb in zip(a.tasks, b.tasks):
        assert ra.loss == pytest.approx(rb.loss, rel=1e-5, abs=1e-6)
        assert ra.metric == pytest.approx(rb.metric, rel=1e-5, abs=1e-6)
    assert a["cml_loss"] == pytest.approx(b["cml_loss"], rel=1e-5, abs=1e-6)
    ga, gb = grads_of(stacked), grads_of(looped)
    for k in ga:
        if ga[k] is not None:
            torch.testing.assert_close(ga[k], gb[k], atol=1e-6, rtol=1e-5)


def test_stacked_outcome_unstacks_features_per_task():
    learner = mlp_learner()
    tasks = sinusoid_tasks(4)
    from metarepro.methods.base import tap_outputs
    with tap_outputs(learner.model, ["features"]) as found:
        o = learner.outcome(Task.stack(tasks))
    o.features.update(found)
    for i, (part, task) in enumerate(zip(o.unstack(), tasks)):
        with tap_outputs(learner.model, ["features"]) as single:
            alone = learner.outcome(task)
        # float32, stacked (baddbmm) vs one task (addmm): equal up to summation order, relative to magnitude
        # (MSEs up to ~15, where one float32 ulp is ~1e-6, so an absolute 1e-6 alone is ISA-dependent)
        torch.testing.assert_close(part.loss, alone.loss, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(part.features["features"], single["features"], atol=1e-6, rtol=1e-5)


# ---- the mean aggregator is the pre-add-on meta-step, bit for bit ---------------------------------------------

def legacy_meta_grads(learner, tasks):
    """The meta-gradient as meta_step computed it before the add-on seams (per-task backward of loss / T, or one
    backward of a stack's summed loss / T)."""
    learner.zero_grad(set_to_none=True)
    if learner.can_stack(tasks):
        loss, _ = learner.meta_loss(Task.stack(tasks))
        (loss / len(tasks)).backward()
    else:
        for t in tasks:
            loss, _ = learner.meta_loss(t)
            (loss / len(tasks)).backward()
    return grads_of(learner)


@pytest.mark.parametrize("kind", ["image", "sinusoid"])
@pytest.mark.parametrize("method", sorted(GRADIENT_METHODS) + ["protonet", "matchingnet"])
def test_mean_aggregator_reproduces_the_legacy_meta_gradient_bit_for_bit(method, kind):
    hp = GRADIENT_METHODS.get(method, {})
    if kind == "sinusoid":
        if method in ("protonet", "matchingnet"):
            pytest.skip("classification-only method")
        learner, tasks = mlp_learner(method, **{k: v for k, v in hp.items() if k != "inner_lr"}), sinusoid_tasks(5)
    else:
        learner, tasks = conv_learner(method, **hp), random_image_tasks(3, queries=2, seed=2)
    if method == "mamlpp":
        learner.set_iteration(10**6)          # after DA: second order
    want = legacy_meta_grads(copy.deepcopy(learner), tasks)
    for agg in (None, MeanAggregator()):
        m = copy.deepcopy(learner)
        meta_step(m, tasks, frozen_opt(m.parameters()), aggregator=agg)
        got = grads_of(m)
        for k in want:
            assert (want[k] is None) == (got[k] is None), k
            if want[k] is not None:
                assert torch.equal(want[k], got[k]), k


# ---- outer-loss terms -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["maml", "fomaml", "mamlpp", "pamela", "metasgd"])
def test_zero_weight_term_leaves_the_meta_gradient_unchanged(method):
    learner = conv_learner(method, **GRADIENT_METHODS[method])
    if method == "mamlpp":
        learner.set_iteration(10**6)
    tasks = random_image_tasks(2, queries=2, seed=3)
    base = copy.deepcopy(learner)
    meta_step(base, tasks, frozen_opt(base.parameters()))
    term = addons.make("cml", learner, (1, 28, 28), 5, weight=0.0)
    opt = frozen_opt([{"params": list(learner.parameters())}, {"params": list(term.parameters())}])
    stats = meta_step(learner, tasks, opt, terms=[term])
    assert stats["cml_loss"] > 0
    want, got = grads_of(base), grads_of(learner)
    for k in want:
        assert (want[k] is None) == (got[k] is None), k
        if want[k] is not None:
            assert torch.equal(want[k], got[k]), k


def test_cml_outer_gradient_is_the_hand_computed_sum_of_both_terms():
    """MAML (second order, 1 step) on a 1-2-1 ReLU MLP with CML's co-learner (2-2-1) on its hidden layer, float64:
    the meta-gradient of theta and phi equals d/d(theta, phi) of L_q(theta') + gamma * L_co(phi; h(theta', u))."""
    torch.manual_seed(0)
    model = models.build("mlp", (1,), 1, hidden=[2]).double()
    learner = methods.build("maml", model, "regression", inner_lr=0.05)
    term = addons.make("cml", learner, (1,), 1, weight=0.7).double()
    x = torch.tensor([[0.5], [-1.2], [2.0]], dtype=torch.float64); y = torch.tensor([[1.0], [0.3], [-0.7]], dtype=torch.float64)
    u = torch.tensor([[1.5], [-0.4]], dtype=torch.float64); v = torch.tensor([[0.2], [1.1]], dtype=torch.float64)
    task = Task(x, y, u, v)
    opt = frozen_opt([{"params": list(learner.parameters())}, {"params": list(term.parameters())}])
    before = {k: p.detach().clone() for k, p in term.named_parameters()}
    meta_step(learner, [task], opt, terms=[term])

    w1, b1, w2, b2 = (model.features[0].weight, model.features[0].bias, model.head.weight, model.head.bias)
    phi = [term.head[0].weight, term.head[0].bias, term.head[2].weight, term.head[2].bias]
    theta = [w1, b1, w2, b2]

    def hidden(p, a):
        return torch.relu(a @ p[0].t() + p[1])

    def f(p, a):
        return hidden(p, a) @ p[2].t() + p[3]
    ls = ((f(theta, x) - y) ** 2).mean()
    g = torch.autograd.grad(ls, theta, create_graph=True)
    adapted = [p - 0.05 * gi for p, gi in zip(theta, g)]
    lq = ((f(adapted, u) - v) ** 2).mean()
    co = torch.relu(hidden(adapted, u) @ phi[0].t() + phi[1]) @ phi[2].t() + phi[3]
    lco = ((co - v) ** 2).mean()
    want = torch.autograd.grad(lq + 0.7 * lco, theta + phi)
    got = [p.grad for p in theta + phi]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    # the inner loop never touches the co-learner: its parameters are not among the adapted ones and are unchanged
    adapted_names = set(learner.adapt(task).params)
    assert not any(n.startswith("head.") and "term" in n for n in adapted_names)
    assert all(torch.equal(before[k], p) for k, p in term.named_parameters())


# ---- aggregators ----------------------------------------------------------------------------------------------

def test_oamfs_weights_match_a_hand_computation():
    g = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
    # cos(g1, g2) = 0, cos(g1, g3) = cos(g2, g3) = 1/sqrt(2); c = mean over the others; w = (1 + c) / 2, normalised
    r = 1 / math.sqrt(2)
    c = [r / 2, r / 2, r]
    w = [(1 + ci) / 2 for ci in c]
    w = [wi / sum(w) for wi in w]
    torch.testing.assert_close(cosine_weights(g), torch.tensor(w, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(CosineAggregator().combine(g),
                               torch.tensor([w[0] + w[2], w[1] + w[2]], dtype=torch.float64), atol=1e-12, rtol=0)
    assert torch.equal(cosine_weights(g[:1]), torch.ones(1, dtype=torch.float64))
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)   # all weights 0 -> the plain mean
    torch.testing.assert_close(cosine_weights(opposite), torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_oamfs_weighs_tasks_by_the_learners_columns_only():
    """With a co-learner, the per-task vectors hold its parameters too: the cosine weights come from the learner's
    columns (here two agreeing tasks: equal weights) and apply to the whole vector."""
    g = torch.tensor([[1.0, 0.0, 5.0], [1.0, 0.0, -5.0]], dtype=torch.float64)   # column 2: the co-learner's
    learner = torch.tensor([True, True, False])
    torch.testing.assert_close(CosineAggregator().combine_with(g, learner),
                               torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64), atol=1e-12, rtol=0)
    # over all columns the co-learner's conflict would have down-weighted both tasks' agreement: cos = -24/26
    assert float(cosine_weights(g)[0]) == pytest.approx(0.5) and CosineAggregator().combine(g)[2] == pytest.approx(0)
    everything = torch.ones(3, dtype=torch.bool)
    assert torch.equal(CosineAggregator().combine_with(g, everything), CosineAggregator().combine(g))
    h = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(CosineAggregator().combine_with(h, learner),
                               (cosine_weights(h[:, :2]).unsqueeze(1) * h).sum(0), atol=1e-12, rtol=0)


def test_oamfs_meta_step_combines_each_tasks_own_gradient():
    learner = mlp_learner("fomaml")
    tasks = sinusoid_tasks(3)
    per_task = []
    for t in tasks:
        m = copy.deepcopy(learner)
        meta_step(m, [t], frozen_opt(m.parameters()))
        per_task.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]))
    want = CosineAggregator().combine(torch.stack(per_task))
    meta_step(learner, tasks, frozen_opt(learner.parameters()), aggregator=CosineAggregator())
    got = torch.cat([p.grad.reshape(-1) for p in learner.parameters()])
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


# ---- samplers -------------------------------------------------------------------------------------------------

def tiny_image_data(root, n_train=8, per_class=12, size=16):
    """A prepared dataset in the project's format: random 16x16 grey images, 8/4/4 classes."""
    rng = np.random.default_rng(0)
    splits = {}
    for split, n in (("train", n_train), ("val", 4), ("test", 4)):
        imgs = rng.integers(0, 256, size=(n * per_class, size, size, 1), dtype=np.uint8)
        labels = np.repeat(np.arange(n), per_class)
        splits[split] = (imgs, labels, [f"{split}{c}" for c in range(n)])
    return write_dataset(root, "omniglot", splits, {}, "test")


def test_hard_task_sampler_resamples_the_failure_classes(tmp_path):
    from metarepro.data.sampling import ImageEpisodes
    eps = ImageEpisodes(load_split(tiny_image_data(tmp_path / "d"), "train"), 3, 1, 2, seed=0)
    s = addons.make("ht", eps)
    assert s.hard_tasks is None                              # the card's default: the meta-batch size
    first = s.sample(0, 2)
    res = lambda cls, acc: TaskResult(1.0, 50.0, acc, cls)  # noqa: E731
    s.feedback(first, [res((0, 1, 2), (100.0, 0.0, 50.0)), res((5, 6, 7), (50.0, 50.0, 100.0))])
    assert s.pool == [1, 5] and not s.hard_next              # worst classes: 1, and 5 (tie -> lowest label)
    s.feedback(s.sample(1, 2), [res((3, 4, 0), (0.0, 100.0, 100.0)), res((2, 3, 4), (100.0, 100.0, 10.0))])
    assert s.pool == [1, 5, 3, 4] and s.hard_next
    hard = s.sample(2, 2)
    assert all(set(t.classes) <= {1, 3, 4, 5} and len(set(t.classes)) == 3 for t in hard)
    assert s.hard_iterations == [2]
    state = s.state_dict()
    again = addons.make("ht", eps)
    again.load_state_dict(state)
    assert [t.classes for t in again.sample(2, 2)] == [t.classes for t in hard]
    assert all(torch.equal(a.x_query, b.x_query) for a, b in zip(again.sample(2, 2), hard))
    s.feedback(hard, [res(t.classes, (0.0, 0.0, 0.0)) for t in hard])
    assert s.pool == [] and not s.hard_next


def test_training_loop_hands_the_sampler_each_tasks_own_loss(tmp_path, monkeypatch):
    """The training loop used to pass the batch-mean loss once per task; a hard-task sampler then saw no hard task."""
    seen = []

    class Recording(TaskSampler):
        def feedback(self, tasks, results):
            seen.append(list(results))
    monkeypatch.setitem(addons.SAMPLERS, "uniform", Recording)
    cfg = load_config("config/config.yaml")
    run = resolve_run(cfg, "sinusoid", "maml", 10, 0).to_dict()
    run["train"].update(iterations=3, val_every=3, val_episodes=5, checkpoint_every=10)
    run["run_dir"] = str(tmp_path / "run")
    metatrain(RunConfig.from_dict(run), progress=False)
    assert len(seen) == 3 and all(len(r) == 25 for r in seen)
    logged = [float(r["meta_loss"]) for r in csv.DictReader(open(tmp_path / "run" / "train_log.csv"))]
    for results, mean_loss in zip(seen, logged):
        losses = [r.loss for r in results]
        assert len(set(losses)) == len(losses)                # each task's own loss, not the mean repeated
        assert np.mean(losses) == pytest.approx(mean_loss, rel=1e-5)


def _image_run(tmp_path, name, data):
    run = RunConfig(experiment="x", dataset="omniglot", dataset_args={"rotations": False}, data_dir=str(data),
                    backbone="conv4", backbone_args={"filters": 4}, method="maml+cml+ht",
                    method_args={"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 1}, ways=3, shots=1, seed=0,
                    train={"iterations": 12, "meta_batch": 2, "meta_lr": 0.001, "queries": 2, "val_every": 4,
                           "val_episodes": 4, "checkpoint_every": 3, "grad_clip": None},
                    evaluation={"episodes": 10, "queries": 3, "seed": 0}, run_dir=str(tmp_path / name),
                    addons={"ht": {"hard_tasks": None}, "cml": {"weight": 1.0, "lr": 0.001}})
    return run


def test_kill_and_resume_with_a_sampler_and_a_term_ends_identically(tmp_path, monkeypatch):
    data = tiny_image_data(tmp_path / "data")
    full = metatrain(_image_run(tmp_path, "full", data), progress=False)

    crash_at = 8                                              # after the checkpoint of iteration 6
    real_sample = HardTaskSampler.sample

    def crashing(self, iteration, batch):
        if iteration == crash_at:
            raise KeyboardInterrupt("simulated kill")
        return real_sample(self, iteration, batch)
    monkeypatch.setattr(HardTaskSampler, "sample", crashing)
    with pytest.raises(KeyboardInterrupt):
        metatrain(_image_run(tmp_path, "resumed", data), progress=False)
    ckpt = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["iteration"] == 6 and ckpt["addons"] and "pool" in ckpt["sampler"]
    monkeypatch.setattr(HardTaskSampler, "sample", real_sample)
    resumed = metatrain(_image_run(tmp_path, "resumed", data), progress=False)

    a, b = (torch.load(p, weights_only=False) for p in (full, resumed))
    assert a["sampler"]["hard_iterations"] and a["sampler"] == b["sampler"]
    for part in ("state", "addons"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    rows = lambda n: [line.rsplit(",", 2)[0] + line.rsplit(",", 1)[1]   # noqa: E731  (drop elapsed_s)
                      for line in (tmp_path / n / "train_log.csv").read_text().splitlines()]
    assert rows("full") == rows("resumed")
    header = (tmp_path / "full" / "train_log.csv").read_text().splitlines()[0].split(",")
    assert tuple(header[:len(formats.TRAIN_LOG_FIELDS)]) == formats.TRAIN_LOG_FIELDS and "cml_loss" in header
    assert set(formats.MODEL_KEYS) <= a.keys()
    # at test time the co-learner is dropped: the evaluated learner is the base method, parameter for parameter
    from metarepro.train import load_learner
    learner, _, _ = load_learner(full)
    torch.manual_seed(0)
    plain = methods.build("maml", models.build("conv4", (1, 16, 16), 3, filters=4), "classification", inner_lr=0.4)
    assert learner.state_dict().keys() == plain.state_dict().keys()


# ---- CML's analyses: gradient diagnostics and the noise-matched control -----------------------------------------

def _hand_cml_grads(weight=0.7):
    """The 1-2-1 MLP + co-learner of the test above: (learner, term, task, g_query, g_term) with the query loss's
    and the co-learner term's gradients on the learner's parameters computed by hand (float64). Seed 5: every hidden
    unit of the learner and the co-learner is active, so the term's gradient is non-zero on every parameter (with
    seed 0 a dead co-learner unit made it exactly 0, and the checks below vacuous)."""
    torch.manual_seed(5)
    model = models.build("mlp", (1,), 1, hidden=[2]).double()
    learner = methods.build("maml", model, "regression", inner_lr=0.05)
    term = addons.make("cml", learner, (1,), 1, weight=weight).double()
    x = torch.tensor([[0.5], [-1.2], [2.0]], dtype=torch.float64); y = torch.tensor([[1.0], [0.3], [-0.7]], dtype=torch.float64)
    u = torch.tensor([[1.5], [-0.4]], dtype=torch.float64); v = torch.tensor([[0.2], [1.1]], dtype=torch.float64)
    task = Task(x, y, u, v)
    theta = [model.features[0].weight, model.features[0].bias, model.head.weight, model.head.bias]
    phi = [term.head[0].weight, term.head[0].bias, term.head[2].weight, term.head[2].bias]

    def hidden(p, a):
        return torch.relu(a @ p[0].t() + p[1])
    ls = ((hidden(theta, x) @ theta[2].t() + theta[3] - y) ** 2).mean()
    g = torch.autograd.grad(ls, theta, create_graph=True)
    adapted = [p - 0.05 * gi for p, gi in zip(theta, g)]
    lq = ((hidden(adapted, u) @ adapted[2].t() + adapted[3] - v) ** 2).mean()
    lco = ((torch.relu(hidden(adapted, u) @ phi[0].t() + phi[1]) @ phi[2].t() + phi[3] - v) ** 2).mean()
    g_query = torch.autograd.grad(lq, theta, retain_graph=True)
    g_term = torch.autograd.grad(weight * lco, theta + phi)
    return learner, term, task, theta, phi, list(g_query), list(g_term[:4]), list(g_term[4:])


def test_gradient_diagnostics_match_a_hand_computation():
    """train.diagnostics_every: the feature extractor (theta outside the head: W1, b1) gets the norm of its whole
    meta-gradient, and the co-learner's share of it is reported by its norm and its cosine with the query loss's share;
    the meta-gradient itself is the usual one."""
    learner, term, task, theta, phi, gq, gt, gphi = _hand_cml_grads()
    assert min(float(g.norm()) for g in gt + gq) > 1e-4
    stats = meta_step(learner, [task], frozen_opt([{"params": list(learner.parameters())},
                                                  {"params": list(term.parameters())}]), terms=[term],
                      diagnostics=True)
    for p, a, b in zip(theta, gq, gt):
        torch.testing.assert_close(p.grad, a + b, atol=1e-12, rtol=0)
    q, t = torch.cat([g.reshape(-1) for g in gq[:2]]), torch.cat([g.reshape(-1) for g in gt[:2]])
    assert math.isclose(stats["grad_norm_features"], float((q + t).norm()), abs_tol=1e-9)
    assert math.isclose(stats["cml_grad_norm_features"], float(t.norm()), abs_tol=1e-9)
    assert math.isclose(stats["cml_cos_features"], float(F.cosine_similarity(q, t, dim=0)), abs_tol=1e-7)


def test_noise_control_replaces_the_colearner_gradient_by_noise_of_its_norm():
    """cml control=noise: the learner gets the query loss's gradient plus Gaussian noise (torch's global RNG) of the
    norm the co-learner term's gradient had on the feature extractor (W1, b1), and on the feature extractor only:
    the head (W2, b2), which the term reaches only through the inner loop's second-order terms, gets its query
    gradient alone; the co-learner itself learns as in CML."""
    learner, term, task, theta, phi, gq, gt, gphi = _hand_cml_grads()
    assert float(torch.cat([g.reshape(-1) for g in gt[2:]]).norm()) > 0     # second order: the head is reached
    term.noise_control = True
    torch.manual_seed(123)
    meta_step(learner, [task], frozen_opt([{"params": list(learner.parameters())},
                                          {"params": list(term.parameters())}]), terms=[term])
    torch.manual_seed(123)
    z = [torch.randn_like(p) for p in theta[:2]]
    scale = torch.cat([g.reshape(-1) for g in gt[:2]]).norm() / torch.cat([g.reshape(-1) for g in z]).norm()
    for p, a, zi in zip(theta[:2], gq[:2], z):
        torch.testing.assert_close(p.grad, a + zi * scale, atol=1e-12, rtol=0)
    for p, a in zip(theta[2:], gq[2:]):
        torch.testing.assert_close(p.grad, a, atol=1e-12, rtol=0)
    for p, b in zip(phi, gphi):
        torch.testing.assert_close(p.grad, b, atol=1e-12, rtol=0)


def test_build_fills_the_addon_card_defaults_without_writing_them_into_the_run():
    from types import SimpleNamespace
    run = SimpleNamespace(method="maml+cml", addons={"cml": {"lr": 0.01}})
    (term,) = addons.build(run, mlp_learner(), (1,), 1).terms
    assert (term.weight, term.lr, term.noise_control) == (1.0, 0.01, False)   # weight: the card's; control: none
    assert run.addons == {"cml": {"lr": 0.01}}
    bare = addons.build(SimpleNamespace(method="maml+cml", addons={}), mlp_learner(), (1,), 1).terms[0]
    assert (bare.weight, bare.lr) == (ADDON_CARDS["cml"].defaults()["weight"], ADDON_CARDS["cml"].defaults()["lr"])
    assert ADDON_CARDS["ht"].defaults() == {"hard_tasks": None} and "control" not in ADDON_CARDS["cml"].defaults()


def test_noise_control_is_refused_beside_a_per_task_aggregator():
    from types import SimpleNamespace
    run = SimpleNamespace(method="maml+cml+oamfs", addons={"cml": {"control": "noise"}})
    learner = mlp_learner()
    with pytest.raises(ValueError, match="noise control.*oamfs"):
        addons.build(run, learner, (1,), 1)


def test_method_name_is_the_one_reading_of_the_grammar():
    from metarepro.config import ConfigError
    n = MethodName.parse("maml@noise+ht+cml")
    assert (n.base, n.tag, n.addons, n.train_shots) == ("maml", "noise", ("ht", "cml"), None)
    assert n.variant == "maml@noise" and str(n) == "maml@noise+ht+cml"
    assert str(n.canonical()) == "maml@noise+cml+ht"
    assert str(n.with_addons(())) == "maml@noise"
    # the reports' suffix for a run tested at other shots than it was meta-trained at
    t = MethodName.parse("maml+cml~train5")
    assert t.train_shots == 5 and str(t.with_train_shots(None)) == "maml+cml" and str(t) == "maml+cml~train5"
    for bad in ("MAML", "maml@", "maml+", "maml@a@b", "maml~train", "a-b"):
        with pytest.raises(ConfigError, match="is not <method>"):
            MethodName.parse(bad)
    with pytest.raises(KeyError, match="unknown method"):    # a report-only name never builds a learner
        methods.build("maml~train5", models.build("mlp", (1,), 1), "regression")


def test_no_module_parses_method_names_by_hand():
    """The grammar has one reader, MethodName: no other module splits a method name on its separators."""
    import re
    from pathlib import Path
    src = Path(__file__).resolve().parents[2] / "src" / "metarepro"
    pattern = re.compile(r"""\.(split|partition|rpartition)\(\s*["'](\+|@|~train)["']|["']~train["']""")
    offenders = [f"{p.relative_to(src)}:{i}" for p in src.rglob("*.py") for i, line in
                 enumerate(p.read_text().splitlines(), 1) if pattern.search(line) and p.name != "config.py"]
    assert offenders == []


def test_a_hand_written_method_name_is_read_as_written():
    assert MethodName.read("My Method") == MethodName("My Method")
    assert MethodName.read("maml+cml") == MethodName("maml", "", ("cml",))
