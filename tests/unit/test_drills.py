"""Reliability drills that fit in a unit test: a corrupt resume checkpoint, a corrupt model.pt or eval.json, and a
full disk while writing; each must name the file, lose nothing that was good, and never resume from garbage."""
from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import pytest
import torch

from metarepro.config import RunConfig, load_config, resolve_run
from metarepro.evaluate import evaluate
from metarepro.report.tables import make_table
from metarepro.train import metatrain
from metarepro.utils import MetareproError, write_json_atomic

REPO = Path(__file__).resolve().parents[2]


def _run(tmp_path: Path, iterations: int = 40) -> RunConfig:
    run = resolve_run(load_config(REPO / "config" / "config.yaml"), "sinusoid", "maml", 5, 0).to_dict()
    run["train"].update(iterations=iterations, val_every=20, checkpoint_every=10, val_episodes=5)
    run["evaluation"].update(episodes=20, curve_episodes=5)
    run["run_dir"] = str(tmp_path / "run")
    return RunConfig.from_dict(run)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "foreign"])
def test_corrupt_resume_checkpoint_is_discarded_with_a_warning_and_the_run_restarts(tmp_path, caplog, damage):
    clean = metatrain(_run(tmp_path / "clean"), progress=False)
    run = _run(tmp_path)
    ckpt = Path(run.run_dir) / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    if damage == "truncated":
        torch.save({"run": run.to_dict(), "iteration": 10, "learner": {"x": torch.zeros(1000)}}, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[:200])
    elif damage == "garbage":
        ckpt.write_bytes(b"\x00not a checkpoint" * 10)
    else:
        torch.save([1, 2, 3], ckpt)
    with caplog.at_level(logging.WARNING):
        model = metatrain(run, progress=False)
    assert f"discarding {ckpt}" in caplog.text and "restarts from scratch" in caplog.text
    a, b = (torch.load(p, weights_only=False) for p in (clean, model))   # restarted: the same result as clean
    assert all(torch.equal(a["state"][k], b["state"][k]) for k in a["state"])
    assert not ckpt.exists()


@pytest.mark.parametrize("damage, needle", [("truncated", "truncated or corrupt"), ("fields", "missing state")])
def test_corrupt_model_file_fails_evaluation_naming_it_and_writes_nothing(tmp_path, damage, needle):
    run = _run(tmp_path, iterations=10)
    model = metatrain(run, progress=False)
    if damage == "truncated":
        model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    else:
        state = torch.load(model, weights_only=False)
        del state["state"]
        torch.save(state, model)
    with pytest.raises(MetareproError, match=needle) as err:
        evaluate(run.run_dir, progress=False)
    assert str(model) in str(err.value)
    assert not (Path(run.run_dir) / "eval.json").exists()
    assert not [p for p in Path(run.run_dir).iterdir() if p.name.startswith(".")]     # no temp files left


def test_corrupt_eval_json_fails_the_table_naming_it_and_keeps_the_old_table(tmp_path):
    run = _run(tmp_path, iterations=10)
    metatrain(run, progress=False)
    ev = evaluate(run.run_dir, progress=False)
    out = tmp_path / "t.md"
    make_table([ev], out, "t", None)
    before = out.read_text()
    ev.write_text(ev.read_text()[:100])
    with pytest.raises(MetareproError, match=str(ev)):
        make_table([ev], out, "t", None)
    assert out.read_text() == before


def test_disk_full_while_writing_keeps_the_previous_file_and_says_so(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    write_json_atomic(target, {"good": 1})

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError, match="No space left on device"):
        write_json_atomic(target, {"good": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"good": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]      # the temporary folder is gone too


def test_disk_full_during_a_checkpoint_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    run = _run(tmp_path, iterations=40)
    ckpt = Path(run.run_dir) / "checkpoints" / "last.pt"
    real_save = torch.save
    calls = {"n": 0}

    def flaky_save(obj, f, *a, **k):
        if isinstance(obj, dict) and "optimizer" in obj:
            calls["n"] += 1
            if calls["n"] == 2:                 # the second checkpoint (iteration 20) hits a full disk
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **k)
    monkeypatch.setattr(torch, "save", flaky_save)
    with pytest.raises(OSError, match="No space left"):
        metatrain(run, progress=False)
    monkeypatch.undo()
    assert torch.load(ckpt, weights_only=False)["iteration"] == 10        # the previous checkpoint survives
    assert not (Path(run.run_dir) / "model.pt").exists()
    model = metatrain(run, progress=False)                               # and the rerun resumes from it
    assert model.exists() and not ckpt.exists()
