"""evaluate(): the headline score uses every test episode; the per-step curve only the first `curve_episodes`."""
import json
from pathlib import Path

import numpy as np
import pytest

from metarepro import formats
from metarepro.config import RunConfig, load_config, resolve_run

REPO = Path(__file__).resolve().parents[2]


def _trained(tmp_path: Path, method: tuple[str, dict] | None = None, **evaluation) -> Path:
    """A short sinusoid run of MAML, or of `method` = (name, hparams) on the same data."""
    from metarepro.train import metatrain
    cfg = load_config(REPO / "config" / "config.yaml")
    d = resolve_run(cfg, "sinusoid", "maml", 10, 0).to_dict()
    if method is not None:
        d["method"], d["method_args"] = method
    d["train"].update(iterations=20, val_every=10, checkpoint_every=10, val_episodes=5)
    d["evaluation"] = {"episodes": 30, "queries": 10, "seed": 0, **evaluation}
    d["run_dir"] = str(tmp_path)
    metatrain(RunConfig.from_dict(d), progress=False)
    return tmp_path


def test_curve_episodes_limits_the_per_step_curve_not_the_headline_score(tmp_path):
    from metarepro.evaluate import evaluate
    full = json.loads(evaluate(_trained(tmp_path / "full"), progress=False).read_text())
    part = json.loads(evaluate(_trained(tmp_path / "part", curve_episodes=12), progress=False).read_text())
    assert full["curve_episodes"] == 30 and part["curve_episodes"] == 12
    # the file format the reports read (metarepro.formats)
    assert set(formats.EVAL_REQUIRED) <= full.keys() and set(formats.EVAL_RUN_REQUIRED) <= full["run"].keys()
    # identical weights and episodes: the final-step scores agree episode by episode
    assert part["per_episode"] == pytest.approx(full["per_episode"], abs=1e-12)
    assert part["mean"] == pytest.approx(full["mean"]) and len(part["per_episode"]) == 30
    assert full["by_step"]["10"]["mean"] == pytest.approx(full["mean"])
    # the curve of `part` is the mean over its first 12 episodes
    assert part["by_step"]["10"]["mean"] == pytest.approx(np.mean(full["per_episode"][:12]))
    assert set(part["by_step"]) == {str(j) for j in range(11)}
    assert "gates" not in full          # only methods with diagnostics (Meta-LSTM) add entries


def test_metalstm_gates_are_those_of_the_scored_curve_episodes(tmp_path):
    import torch

    from metarepro import data as datasets
    from metarepro.evaluate import TEST_SPLIT, evaluate
    from metarepro.stats import mean_ci95 as mean_ci
    from metarepro.train import load_learner
    run_dir = _trained(tmp_path, ("metalstm", {"inner_steps": 3, "hidden_size": 4}), curve_episodes=4)
    ev = json.loads(evaluate(run_dir, progress=False).read_text())
    gates = ev["gates"]
    assert gates["episodes"] == 4 and ev["inner_steps"] == 3
    # the same episodes, re-adapted one by one through gate_trace
    learner, run, _ = load_learner(run_dir / "model.pt")
    seed = datasets.eval_seed(run.evaluation["seed"], run.dataset, TEST_SPLIT, run.ways, run.shots)
    eps = datasets.episodes(run.dataset, run.dataset_args, run.data_dir, TEST_SPLIT, run.ways, run.shots,
                            run.evaluation["queries"], seed)
    traces = [learner.gate_trace(eps.episode(i), 3) for i in range(4)]
    names = traces[0]["param_names"]
    for gate in ("input", "forget"):
        per_episode = torch.stack([t[gate] for t in traces]).numpy()            # (episodes, steps)
        want = [mean_ci(per_episode[:, j]) for j in range(3)]
        assert gates[gate]["mean"] == pytest.approx([m for m, _ in want], abs=1e-12)
        assert gates[gate]["ci95"] == pytest.approx([c for _, c in want], abs=1e-12)
        assert all(0.0 < v < 1.0 for v in gates[gate]["mean"])
        by_param = torch.stack([t[f"{gate}_by_param"] for t in traces]).double().mean(0).numpy()   # (steps, tensors)
        assert list(gates[f"{gate}_by_param"]) == names
        for j, name in enumerate(names):
            assert gates[f"{gate}_by_param"][name] == pytest.approx(by_param[:, j].tolist(), abs=1e-12)
    assert np.ptp(np.array([t["input"].numpy() for t in traces])) > 0   # the episodes' gates differ
    assert learner._trace is None


def test_experiment_may_override_curve_episodes_only():
    cfg = load_config(REPO / "config" / "config.yaml")
    cfg["evaluation"]["curve_episodes"] = 100
    cfg["experiments"]["sinusoid"]["evaluation"] = {"curve_episodes": 600}
    assert resolve_run(cfg, "sinusoid", "maml", 10, 0).evaluation["curve_episodes"] == 600
    assert resolve_run(cfg, "omniglot", "maml", 1, 0).evaluation["curve_episodes"] == 100


def test_nan_validation_scores_never_win_checkpoint_selection():
    from metarepro.train import improves
    nan = float("nan")
    assert not improves(nan, 0.5, higher=False) and improves(0.5, nan, higher=False)
    assert improves(0.4, 0.5, higher=False) and not improves(0.6, 0.5, higher=False)
    assert improves(90.0, 80.0, higher=True) and not improves(nan, nan, higher=True)


def test_evaluating_at_other_shots_writes_its_own_file_on_those_shots_episodes(tmp_path):
    from metarepro.evaluate import evaluate
    run_dir = _trained(tmp_path / "run")
    base = json.loads(evaluate(run_dir, progress=False).read_text())
    out = evaluate(run_dir, progress=False, shots=20)
    assert out.name == "eval_20shot.json" and (run_dir / "eval.json").exists()
    ev = json.loads(out.read_text())
    assert base["test_shots"] == 10 and ev["test_shots"] == 20 and ev["run"]["shots"] == 10
    assert ev["episode_set"] != base["episode_set"] and len(ev["per_episode"]) == 30
    # the same episodes a 20-shot run is tested on
    d = json.loads(json.dumps(ev["run"]))
    from metarepro import data as datasets
    eps = datasets.episodes("sinusoid", d["dataset_args"], d["data_dir"], "test", 1, 20, 10,
                            datasets.eval_seed(0, "sinusoid", "test", 1, 20))
    assert eps.fingerprint(30) == ev["episode_set"] and eps.episode(0).x_support.shape == (20, 1)
    with pytest.raises(Exception, match="shots"):
        evaluate(run_dir, progress=False, shots=0)


def test_cml_analyses_are_recorded_and_rendered(tmp_path):
    """train.diagnostics_every logs gradient diagnostics; evaluation.analysis_episodes records CKA before/after
    adaptation per episode and a t-SNE map; the five CML analysis figures render from such runs (and a figure
    whose runs record nothing it needs names the setting)."""
    import pandas as pd
    from metarepro.evaluate import evaluate
    from metarepro.report.analysis import ANALYSIS_FIGURES
    from metarepro.utils import MetareproError
    from metarepro.train import metatrain
    cfg = load_config(REPO / "config" / "config.yaml")
    dirs = []
    for method, addons in (("maml", None), ("maml+cml", {"cml": {}}), ("maml@noise+cml", {"cml": {"control": "noise"}})):
        d = resolve_run(cfg, "sinusoid", "maml", 10, 0).to_dict()
        d["method"], d["addons"] = method, addons
        d["train"].update(iterations=10, val_every=5, checkpoint_every=5, val_episodes=5, diagnostics_every=2)
        d["evaluation"] = {"episodes": 8, "queries": 10, "seed": 0, "analysis_episodes": 4}
        d["run_dir"] = str(tmp_path / method)
        metatrain(RunConfig.from_dict(d), progress=False)
        ev = json.loads(evaluate(tmp_path / method, progress=False).read_text())
        a = ev["analysis"]
        assert a["episodes"] == 4 and len(a["cka"]["per_episode"]) == 4
        assert all(0.0 < v <= 1.0 + 1e-9 for v in a["cka"]["per_episode"])
        assert np.asarray(a["tsne"]["xy"]).shape == (10, 2)
        log = pd.read_csv(tmp_path / method / "train_log.csv")
        assert log["grad_norm_features"].notna().tolist() == [i % 2 == 0 for i in range(1, 11)]
        if "cml" in method:
            cos = log["cml_cos_features"].dropna()
            assert len(cos) == 5 and ((cos >= -1) & (cos <= 1)).all()
        dirs.append(tmp_path / method)
    for kind, fig in ANALYSIS_FIGURES.items():
        assert fig(dirs, tmp_path / f"{kind}.png").stat().st_size > 0
    with pytest.raises(MetareproError, match="noise-matched control"):
        ANALYSIS_FIGURES["cml_noise"](dirs[:2], tmp_path / "x.png")
    with pytest.raises(MetareproError, match="train.diagnostics_every"):
        ANALYSIS_FIGURES["cml_cosine"](dirs[:1], tmp_path / "y.png")


def test_strict_numerics_reach_evaluation(tmp_path, monkeypatch):
    """A strict run's eval.json records deterministic algorithms (strict mode reaches evaluation, not only training)."""
    import torch

    from metarepro import numerics
    from metarepro.evaluate import evaluate
    run_dir = _trained(tmp_path)
    was = torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv(numerics.ENV_FLAG, "1")
    try:
        torch.use_deterministic_algorithms(False)
        ev = json.loads(evaluate(run_dir, progress=False).read_text())
    finally:
        torch.use_deterministic_algorithms(was)
    assert ev["numerics"]["strict"] is True and ev["numerics"]["deterministic"] is True
