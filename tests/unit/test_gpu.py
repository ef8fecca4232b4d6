"""GPU jobs run on a GPU or fail loudly (CUDA calls mocked on this CPU-only machine), resume their CUDA RNG
state, and only the jobs that gain from a GPU ask for one."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from metarepro import utils
from metarepro.config import experiment_gpus, load_config, resolve_run, validate_config
from metarepro.utils import MetareproError

REPO = Path(__file__).resolve().parents[2]


def test_cuda_on_a_cpu_only_torch_fails_naming_the_build(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(MetareproError, match="CPU-only build"):
        utils.resolve_device("cuda")
    monkeypatch.setattr(torch.version, "cuda", "12.6")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(MetareproError, match="sees no CUDA device .*CUDA_VISIBLE_DEVICES=''"):
        utils.resolve_device("cuda")
    assert utils.resolve_device("auto") == "cpu" and utils.resolve_device("cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert utils.resolve_device("cuda") == "cuda" and utils.resolve_device("auto") == "cuda"
    with pytest.raises(MetareproError, match="auto, cpu or cuda"):
        utils.resolve_device("tpu")


def test_a_job_given_a_gpu_fails_at_start_on_a_cpu_torch(tmp_path):
    if torch.version.cuda is not None and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    run = resolve_run(load_config(REPO / "config" / "config.yaml"), "omniglot", "maml", 1, 0).to_dict()
    run["run_dir"] = str(tmp_path / "run")
    out = subprocess.run([sys.executable, "-m", "metarepro", "metatrain", "--run", json.dumps(run), "--gpus", "1"],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert out.returncode == 2 and "--device cuda" in out.stderr, out.stderr
    assert not (tmp_path / "run").exists()


def test_cuda_rng_state_is_saved_and_restored(monkeypatch):
    saved = {"state": None}
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [torch.tensor([7, 8], dtype=torch.uint8)])
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: saved.update(state=states))
    state = utils.rng_state("cuda")
    assert torch.equal(state["cuda"][0], torch.tensor([7, 8], dtype=torch.uint8))
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    cpu_state = utils.rng_state("cpu")
    assert "cuda" not in cpu_state
    utils.set_rng_state({**cpu_state, "cuda": state["cuda"]}, "cuda")
    assert torch.equal(torch.rand(2), expected) and torch.equal(saved["state"][0], state["cuda"][0])
    with pytest.raises(MetareproError, match="no CUDA RNG state"):
        utils.set_rng_state(cpu_state, "cuda")


def test_determinism_switch():
    try:
        utils.set_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        utils.set_determinism(False)
    assert not torch.are_deterministic_algorithms_enabled()


def test_gpus_per_experiment_and_only_where_they_help():
    base = {"experiments": {
        "img": {"dataset": "omniglot", "backbone": "conv4", "ways": 5, "shots": [1], "methods": {"maml": {}}},
        "sin": {"dataset": "sinusoid", "backbone": "mlp", "ways": 1, "shots": [5], "methods": {"maml": {}}},
        "cpu": {"dataset": "cifarfs", "backbone": "conv4", "ways": 5, "shots": [1], "methods": {"maml": {}},
                "gpu": 0}}}
    cfg = validate_config({**base, "gpu": 1})
    assert [experiment_gpus(cfg, e) for e in ("img", "sin", "cpu")] == [1, 0, 0]
    assert [experiment_gpus(validate_config(base), e) for e in ("img", "sin", "cpu")] == [0, 0, 0]


def test_the_cuda_environment_has_the_cpu_environments_pins():
    def pins(name):
        lines = [ln.strip() for ln in (REPO / name).read_text().splitlines()]
        return sorted(ln for ln in lines if ln.startswith("- ") and "==" in ln or ln.startswith("- python="))
    assert pins("environment.yml") == pins("environment.cuda.yml")


def test_rules_pass_the_gpus_the_job_was_given():
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("METAREPRO_MIRROR", None)
    out = subprocess.run([str(Path(sys.executable).parent / "snakemake"), "-n", "-p", "--forceall", "--configfile",
                          "tests/workflow/config.yaml", "--config", "gpu=1"], cwd=REPO, capture_output=True,
                         text=True, env=env, stdin=subprocess.DEVNULL, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = [ln for ln in (out.stdout + out.stderr).splitlines() if "python -m metarepro" in ln]
    train = [ln for ln in lines if " metatrain " in ln]
    assert any('"dataset":"omniglot"' in ln and "--gpus 1" in ln for ln in train)
    assert all("--gpus 0" in ln for ln in train if '"dataset":"sinusoid"' in ln)
    assert not any("--gpus" in ln for ln in lines if " report " in ln or " prepare " in ln or " download " in ln)
