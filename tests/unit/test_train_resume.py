"""A killed meta-training job, rerun, resumes from its checkpoint and ends exactly where an
uninterrupted run ends: same weights, same train log metrics, same eval.json scores."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from metarepro.config import load_config, resolve_run

REPO = Path(__file__).resolve().parents[2]


def _run_json(tmp_path: Path, name: str) -> str:
    cfg = load_config(REPO / "config" / "config.yaml")
    run = resolve_run(cfg, "sinusoid", "maml", 10, 0).to_dict()
    run["train"].update(iterations=600, val_every=100, checkpoint_every=25, val_episodes=20)
    run["run_dir"] = str(tmp_path / name)
    return json.dumps(run)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "metarepro", *args]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_killed_run_resumes_to_identical_weights_and_eval(tmp_path):
    full, resumed = _run_json(tmp_path, "full"), _run_json(tmp_path, "resumed")
    subprocess.run(_cli("metatrain", "--run", full, "--no-progress"), check=True, env=_env(), capture_output=True)

    ckpt = tmp_path / "resumed" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(_cli("metatrain", "--run", resumed, "--no-progress"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            state = torch.load(ckpt, weights_only=False)
            if state["iteration"] >= 100:   # past at least one validation
                break
        time.sleep(0.05)
    assert proc.poll() is None, "training finished before it could be killed; raise iterations"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "resumed" / "model.pt").exists()
    killed_at = torch.load(ckpt, weights_only=False)["iteration"]
    assert 0 < killed_at < 600

    out = subprocess.run(_cli("-v", "metatrain", "--run", resumed, "--no-progress"), check=True, env=_env(),
                         capture_output=True, text=True)
    assert f"resuming {tmp_path / 'resumed'} from iteration {killed_at}" in out.stderr
    assert not ckpt.exists()

    a = torch.load(tmp_path / "full" / "model.pt", weights_only=False)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=False)
    assert a["best_iteration"] == b["best_iteration"] and a["val_mean"] == b["val_mean"]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k

    def log_rows(name):
        lines = (tmp_path / name / "train_log.csv").read_text().splitlines()
        return [",".join(line.split(",")[:-1]) for line in lines]   # drop elapsed_s (wall clock)
    assert log_rows("full") == log_rows("resumed")

    for name in ("full", "resumed"):
        subprocess.run(_cli("evaluate", "--run-dir", str(tmp_path / name), "--no-progress"), check=True,
                       env=_env(), capture_output=True)
    ea, eb = (json.loads((tmp_path / n / "eval.json").read_text()) for n in ("full", "resumed"))
    timing = {"wall_time_s", "adapt_time_per_task_s", "peak_memory_mb", "run", "checkpoint"}
    assert {k: v for k, v in ea.items() if k not in timing} == {k: v for k, v in eb.items() if k not in timing}
    assert len(ea["per_episode"]) == 600


def _ignore_signals() -> None:
    """What a non-interactive shell, nohup or a batch system may hand a job: SIGINT (and SIGTERM) ignored."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_job_started_with_signals_ignored_still_stops_and_keeps_its_checkpoint(tmp_path, sig):
    run = json.loads(_run_json(tmp_path, "run"))
    run["train"].update(iterations=100000)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    proc = subprocess.Popen(_cli("metatrain", "--run", json.dumps(run), "--no-progress"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, preexec_fn=_ignore_signals)
    try:
        deadline = time.time() + 120
        while not ckpt.exists():
            assert proc.poll() is None, "training ended before writing a checkpoint"
            assert time.time() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0 and f"stopped by signal {signal.Signals(sig).name}" in err
    assert ckpt.exists() and not (tmp_path / "run" / "model.pt").exists()
    assert torch.load(ckpt, weights_only=False)["iteration"] > 0
