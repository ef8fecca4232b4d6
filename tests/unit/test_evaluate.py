"""evaluate(): the headline score uses every test episode; the per-step curve only the first `curve_episodes`."""
import json
from pathlib import Path

import numpy as np
import pytest

from metarepro.config import RunConfig, load_config, resolve_run

REPO = Path(__file__).resolve().parents[2]


def _trained(tmp_path: Path, **evaluation) -> Path:
    from metarepro.train import metatrain
    cfg = load_config(REPO / "config" / "config.yaml")
    d = resolve_run(cfg, "sinusoid", "maml", 10, 0).to_dict()
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
    # identical weights and episodes: the final-step scores agree episode by episode
    assert part["per_episode"] == pytest.approx(full["per_episode"], abs=1e-12)
    assert part["mean"] == pytest.approx(full["mean"]) and len(part["per_episode"]) == 30
    assert full["by_step"]["10"]["mean"] == pytest.approx(full["mean"])
    # the curve of `part` is the mean over its first 12 episodes
    assert part["by_step"]["10"]["mean"] == pytest.approx(np.mean(full["per_episode"][:12]))
    assert set(part["by_step"]) == {str(j) for j in range(11)}


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
