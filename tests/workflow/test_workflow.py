"""The Snakemake workflow: dry runs of the shipped configs, lint, config errors before any job,
target-only builds, and a real end-to-end run of the tiny profile (tests/workflow/config.yaml)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TINY = "tests/workflow/config.yaml"
MIRROR = REPO.parent / "shared" / "datasets"
EXPENSIVE = {"download", "prepare", "metatrain", "evaluate"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "METAREPRO_MIRROR"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", **extra)
    return env


def snakemake(*args: str, cwd: Path = REPO, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "snakemake"), *args], cwd=cwd, env=_env(**env), capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> str:
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"snakemake failed ({proc.returncode}):\n{text[-5000:]}"
    return text


def job_stats(text: str) -> dict[str, int]:
    if "Job stats:" not in text:
        return {}
    table = text.split("Job stats:", 1)[1].split("total", 1)[0]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)}


def planned_jobs(text: str) -> list[dict[str, str]]:
    """Each job of a dry run with -p: its rule, outputs, wildcards and shell command."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", text):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m:
            continue
        job = {"rule": m[1]}
        for key in ("output", "wildcards"):
            found = re.search(rf"^\s+{key}: (.*)$", block, re.M)
            job[key] = found[1] if found else ""
        found = re.search(r"^Shell command: (.*)$", block, re.M)
        job["shell"] = found[1] if found else ""
        jobs.append(job)
    return jobs


# --- dry runs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("configfile", [None, "config/paper.yaml", TINY])
def test_dry_run(configfile: str | None) -> None:
    if configfile and not (REPO / configfile).exists():
        pytest.skip(f"{configfile} not written yet")
    args = ["--configfile", configfile] if configfile else []
    text = ok(snakemake("-n", "--forceall", *args))
    stats = job_stats(text)
    assert stats.get("all") == 1 and stats.get("table", 0) >= 1 and stats.get("metatrain", 0) >= 1


@pytest.mark.parametrize("configfile", [None, "config/paper.yaml", TINY])
def test_outputs_follow_the_configured_dirs(configfile: str | None) -> None:
    if configfile and not (REPO / configfile).exists():
        pytest.skip(f"{configfile} not written yet")
    cfg: dict = {}
    for rel in ["config/config.yaml", configfile] if configfile else ["config/config.yaml"]:
        cfg.update(yaml.safe_load((REPO / rel).read_text()))
    args = ["--configfile", configfile] if configfile else []
    jobs = planned_jobs(ok(snakemake("-n", "-p", "--forceall", *args)))
    assert jobs
    where = {"metatrain": cfg["results_dir"], "evaluate": cfg["results_dir"], "table": cfg["reports_dir"],
             "side_table": cfg["reports_dir"], "index": cfg["reports_dir"], "prepare": cfg["data"]["dir"], "download": cfg["data"]["raw_dir"]}
    for job in jobs:
        if job["rule"] in where:
            for out in job["output"].split(", "):
                assert out.startswith(where[job["rule"]] + "/"), (job["rule"], out)


def _paper_config() -> dict:
    sys.path.insert(0, str(REPO / "src"))
    from metarepro.config import load_config

    return load_config(REPO / "config/config.yaml", REPO / "config/paper.yaml")


def test_paper_dry_run_schedules_every_listed_run() -> None:
    """`snakemake -n --configfile config/paper.yaml` plans a metatrain job for every (experiment, method, shots)
    of paper.yaml, and plans (does not fail on) datasets that this machine's mirror lacks (tieredImageNet, the
    full miniImageNet): a dry run checks no data, the download job would fetch them."""
    from metarepro.config import iter_runs, used_datasets

    cfg = _paper_config()
    jobs = planned_jobs(ok(snakemake("-n", "-p", "--forceall", "--configfile", "config/paper.yaml")))
    planned = {j["output"].split(", ")[0] for j in jobs if j["rule"] == "metatrain"}
    assert planned == {f"{r.run_dir}/model.pt" for r in iter_runs(cfg)}
    downloads = {re.search(r"dataset=(\w+)", j["wildcards"])[1] for j in jobs if j["rule"] == "download"}
    assert downloads == set(used_datasets(cfg)) - {"sinusoid"} and "tieredimagenet" in downloads
    assert {j["output"] for j in jobs if j["rule"] == "table"} >= {
        f"{cfg['reports_dir']}/tables/{name}.md, {cfg['reports_dir']}/tables/{name}.csv" for name in cfg["reports"]}
    # a report's `complexity: true` and `figures: [..., loss_variance]` reach the default target
    tables = f"{cfg['reports_dir']}/tables"
    assert {j["output"] for j in jobs if j["rule"] == "side_table" and "_complexity." in j["output"]} == {
        f"{tables}/{name}_complexity.md, {tables}/{name}_complexity.csv"
        for name, report in cfg["reports"].items() if report.get("complexity")} != set()
    figures = cfg.get("figures_dir") or f"{cfg['reports_dir']}/figures"
    assert {j["output"] for j in jobs if j["rule"] == "figure" and j["output"].endswith("_loss_variance.png")} == {
        f"{figures}/{name}_loss_variance.png"
        for name, report in cfg["reports"].items() if "loss_variance" in (report.get("figures") or [])} != set()


def test_paper_report_target_schedules_only_its_experiments() -> None:
    """A target goes before --configfile (which takes several values); the ablation table needs only its runs."""
    from metarepro.config import iter_runs

    cfg = _paper_config()
    name = "pamela_ablation"
    text = ok(snakemake(f"{cfg['reports_dir']}/tables/{name}.md", f"{cfg['reports_dir']}/tables/{name}_complexity.md",
                        "-n", "-p", "--forceall", "--configfile", "config/paper.yaml"))
    jobs = planned_jobs(text)
    planned = {j["output"].split(", ")[0] for j in jobs if j["rule"] == "metatrain"}
    runs = iter_runs(cfg, cfg["reports"][name]["experiments"])
    assert planned == {f"{r.run_dir}/model.pt" for r in runs}
    # the 4 ablation variants + the window-skip reading (5-shot) and the full PAMELA (1 and 5 shot)
    assert any("/pamela@q_shared/5way5shot/" in p for p in planned) and len(planned) == 7
    (complexity,) = [j for j in jobs if j["rule"] == "side_table"]   # reads the same runs' directories
    assert f"report complexity --name {name} " in complexity["shell"]
    assert all(f" {r.run_dir} " in complexity["shell"].replace("'", " ") for r in runs)


def test_snakemake_never_imports_torch(tmp_path: Path) -> None:
    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('Snakemake must not import torch')\n")
    ok(snakemake("-n", "--forceall", "--configfile", TINY, PYTHONPATH=str(tmp_path)))


def test_lint_is_clean() -> None:
    for args in ([], ["--configfile", TINY], ["--configfile", "config/paper.yaml"]):
        text = ok(snakemake("--lint", *args))
        assert "Lints for" not in text, text


def test_mirror_comes_from_config_or_env() -> None:
    jobs = planned_jobs(ok(snakemake("-n", "-p", "--forceall", "--configfile", TINY)))
    downloads = [j for j in jobs if j["rule"] == "download"]
    assert len(downloads) == 2          # omniglot, and cifarfs as a cross-domain target
    assert all("--mirror ../shared/datasets " in d["shell"] for d in downloads)
    jobs = planned_jobs(ok(snakemake("-n", "-p", "--forceall", "--configfile", TINY, METAREPRO_MIRROR="/elsewhere")))
    assert all("--mirror /elsewhere " in j["shell"] for j in jobs if j["rule"] == "download")


def test_no_download_or_prepare_for_generated_data() -> None:
    jobs = planned_jobs(ok(snakemake("-n", "--forceall", "--configfile", TINY)))
    for job in jobs:
        if job["rule"] in ("download", "prepare"):
            assert "dataset=sinusoid" not in job["wildcards"]
        if job["rule"] == "metatrain" and "dataset=sinusoid" in job["wildcards"]:
            assert "seed" in job["wildcards"]


def test_an_experiment_no_report_lists_is_still_built(tmp_path: Path) -> None:
    """`snakemake` (rule all) trains and tests every configured run, not only those a report reads."""
    cfg = yaml.safe_load((REPO / TINY).read_text())
    exp = next(n for n, e in cfg["experiments"].items() if e["dataset"] == "sinusoid")
    cfg["experiments"]["unreported"] = {**cfg["experiments"][exp], "methods": {"metasgd": {}}}
    edited = tmp_path / "unreported.yaml"
    edited.write_text(yaml.safe_dump(cfg))
    assert all("unreported" not in r["experiments"] for r in cfg["reports"].values())
    jobs = planned_jobs(ok(snakemake("-n", "-p", "--forceall", "--configfile", str(edited))))
    assert any(j["rule"] == "evaluate" and "method=metasgd" in j["wildcards"] for j in jobs)


# --- one target builds only what it needs ----------------------------------------------------------

def test_one_table_schedules_only_its_jobs() -> None:
    text = ok(snakemake("results/test/reports/tables/test_fewshot.md", "-n", "--forceall", "--configfile", TINY))
    stats = job_stats(text)
    assert set(stats) == {"download", "prepare", "metatrain", "evaluate", "table"}
    assert stats["metatrain"] == stats["evaluate"] == 1 and stats["table"] == 1
    for job in planned_jobs(text):
        if job["wildcards"]:
            assert "dataset=omniglot" in job["wildcards"] or "name=test_fewshot" in job["wildcards"], job

    text = ok(snakemake("results/test/reports/tables/test_sinusoid.md", "-n", "--forceall", "--configfile", TINY))
    assert job_stats(text) == {"metatrain": 2, "evaluate": 2, "table": 1}


def test_one_table_of_the_default_config() -> None:
    cfg = yaml.safe_load((REPO / "config/config.yaml").read_text())
    name, report = next(iter(cfg["reports"].items()))
    text = ok(snakemake(f"{cfg.get('reports_dir', 'reports')}/tables/{name}.md", "-n", "--forceall"))
    datasets = {cfg["experiments"][e]["dataset"] for e in report["experiments"]}
    for job in planned_jobs(text):
        assert job["rule"] in EXPENSIVE | {"table"}, job
        m = re.search(r"dataset=(\w+)", job["wildcards"])
        assert m is None or m[1] in datasets, job


# --- a bad config fails before any job, naming the key ---------------------------------------------

def _tiny() -> dict:
    return yaml.safe_load((REPO / TINY).read_text())


def _bad_configs() -> dict[str, tuple[dict, str]]:
    cases = {}
    cfg = _tiny()
    cfg["experiments"]["omniglot"]["train"]["meta_btch"] = cfg["experiments"]["omniglot"]["train"].pop("meta_batch")
    cases["misspelled key"] = (cfg, "experiments.omniglot.train.meta_btch")
    cfg = _tiny()
    cfg["experiments"]["omniglot"]["methods"]["reptile_x"] = {}
    cases["unknown method"] = (cfg, "experiments.omniglot.methods.reptile_x")
    cfg = _tiny()
    cfg["experiments"]["omniglot"]["shots"] = [0]
    cases["shots 0"] = (cfg, "experiments.omniglot.shots.0")
    cfg = _tiny()
    cfg["experiments"]["sinusoid"]["train"]["meta_lr"] = -0.001
    cases["negative lr"] = (cfg, "experiments.sinusoid.train.meta_lr")
    cfg = _tiny()
    cfg["experiments"]["sinusoid"]["dataset"] = "sinusoidal"
    cases["unknown dataset"] = (cfg, "experiments.sinusoid.dataset")
    return cases


@pytest.mark.parametrize("case", list(_bad_configs()))
def test_bad_config_fails_dry_run_naming_the_key(case: str, tmp_path: Path) -> None:
    cfg, key = _bad_configs()[case]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    proc = snakemake("-n", "--configfile", str(bad))
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "ConfigError" in text and key in text, text[-3000:]
    assert "Job stats" not in text and "Building DAG" not in text


def test_bad_config_value_on_the_command_line() -> None:
    proc = snakemake("-n", "--config", "threads=0")
    assert proc.returncode != 0 and "'threads' = 0" in proc.stdout + proc.stderr


# --- real runs of the tiny profile ---------------------------------------------------------------

def _cli_ready() -> bool:
    try:
        import metarepro.cli  # noqa: F401
        import metarepro.evaluate  # noqa: F401
        import metarepro.report.cli  # noqa: F401
        import metarepro.train  # noqa: F401
    except ImportError:
        return False
    return True


needs_mirror_and_cli = pytest.mark.skipif(not MIRROR.is_dir() or not _cli_ready(),
                                          reason=f"needs the dataset mirror {MIRROR} and metarepro's CLI")


def _project_copy(tmp_path: Path, cfg: dict) -> Path:
    """This checkout's workflow and code in tmp_path, with `cfg` as its config/config.yaml."""
    root = tmp_path / "project"
    for rel in ("Snakefile", "profiles", "workflow", "src/metarepro", "config/paper_results.csv", "environment.yml"):
        src, dst = REPO / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    cfg = {**cfg, "data": {**cfg["data"], "mirror": str(MIRROR)}}
    (root / "config/config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return root


@needs_mirror_and_cli
def test_tiny_profile_end_to_end(tmp_path: Path) -> None:
    cfg = _tiny()
    root = _project_copy(tmp_path, cfg)
    text = ok(snakemake(cwd=root, timeout=900))
    assert "Nothing to be done" not in text
    reports, results = root / cfg["reports_dir"], root / cfg["results_dir"]
    for name in cfg["reports"]:
        assert (reports / "tables" / f"{name}.md").read_text().strip()
        assert (reports / "tables" / f"{name}.csv").read_text().strip()
        for kind in cfg["reports"][name].get("figures", ("curves", "inner_steps")):
            assert (reports / "figures" / f"{name}_{kind}.png").read_bytes()[:4] == b"\x89PNG"
    # cross-domain: every method's run tested on CIFAR-FS's test classes, paired on its episodes; CIFAR-FS is
    # downloaded and prepared although nothing trains on it
    xd = (reports / "tables" / "test_xdomain_xdomain.md").read_text()
    assert "Omniglot → CIFAR-FS" in xd and "MAML + CML + HT" in xd and "ProtoNet (tiny)" in xd
    assert (root / cfg["data"]["dir"] / "cifarfs" / "meta.json").exists()
    for method in ("maml", "maml+cml+ht", "protonet@tiny"):
        ev = json.loads((results / "omniglot" / method / "5way1shot/seed0/eval_xdomain_cifarfs.json").read_text())
        assert ev["cross_domain"]["input_shape"] == [1, 28, 28] and len(ev["per_episode"]) == 600
    assert (reports / "figures" / "test_sinusoid_fits.png").exists()
    assert not (reports / "figures" / "test_fewshot_fits.png").exists()
    index = (reports / "README.md").read_text()
    assert "test_fewshot" in index and "test_sinusoid" in index
    for run in ("sinusoid/maml/1way5shot/seed0", "sinusoid/fomaml/1way5shot/seed0", "omniglot/maml/5way1shot/seed0"):
        d = results / run
        assert {"model.pt", "train_log.csv", "config.yaml", "eval.json"} <= {p.name for p in d.iterdir()}
        json.loads((d / "eval.json").read_text())
        saved = yaml.safe_load((d / "config.yaml").read_text())
        assert saved["evaluation"]["episodes"] == 600 and saved["run_dir"] == f"{cfg['results_dir']}/{run}"
        assert not (d / "checkpoints").exists(), "a finished run leaves no resume checkpoint"
    assert (root / cfg["data"]["dir"] / "omniglot" / "meta.json").exists()
    assert not (root / cfg["data"]["dir"] / "sinusoid").exists()
    assert "Nothing to be done" in ok(snakemake("-n", cwd=root))

    # editing one method's hyperparameters re-runs that method's jobs and nothing upstream
    cfg["experiments"]["sinusoid"]["methods"]["fomaml"]["inner_lr"] = 0.02
    edited = root / "edited.yaml"
    edited.write_text(yaml.safe_dump({**cfg, "data": {**cfg["data"], "mirror": str(MIRROR)}}))
    stats = job_stats(ok(snakemake("-n", "--configfile", str(edited), cwd=root)))
    assert stats.get("metatrain") == 1 and stats.get("evaluate") == 1
    assert not stats.keys() & {"download", "prepare"}


def default_signals() -> None:
    """In a child before exec: SIGINT and SIGTERM back to their default dispositions."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _sinusoid_maml_project(tmp_path: Path, **train: int) -> tuple[dict, Path, str]:
    """The tiny profile cut to its sinusoid MAML run with these train settings: (config, project root, run dir)."""
    cfg = _tiny()
    exp = cfg["experiments"]["sinusoid"]
    exp["methods"] = {"maml": exp["methods"]["maml"]}
    exp["train"].update(**train)
    cfg.update(experiments={"sinusoid": exp}, reports={"test_sinusoid": cfg["reports"]["test_sinusoid"]})
    return cfg, _project_copy(tmp_path, cfg), f"{cfg['results_dir']}/sinusoid/maml/1way5shot/seed0"


def _start_snakemake(root: Path, target: str) -> subprocess.Popen:
    """`snakemake target` in its own process group (snakemake and its job), with SIGINT at its default like a
    terminal's Ctrl-C, whatever this test inherited (a non-interactive shell starts background jobs with SIGINT
    ignored)."""
    return subprocess.Popen([str(BIN / "snakemake"), target], cwd=root, env=_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=default_signals)


def _wait_for(done, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    """Poll until done() while `proc` keeps running (the event, not a fixed sleep, is what the tests wait for)."""
    deadline = time.time() + timeout
    while not done():
        assert proc.poll() is None, f"snakemake ended before {what}"
        assert time.time() < deadline, f"no {what} within {timeout:.0f} s"
        time.sleep(0.1)


@needs_mirror_and_cli
@pytest.mark.parametrize("how", ["ctrl-c", "power-cut"])
def test_killed_training_job_resumes(how: str, tmp_path: Path) -> None:
    """A training job that is stopped mid-run is re-run without questions (profile: rerun-incomplete)
    and resumes from its undeclared checkpoints/last.pt. Ctrl-C: Snakemake cleans up by itself;
    a power cut (SIGKILL to everything) leaves Snakemake's lock behind: `snakemake --unlock` first."""
    # ~200 iterations/s here: long enough to be caught mid-run, short enough to finish
    cfg, root, run = _sinusoid_maml_project(tmp_path, iterations=2000, checkpoint_every=20, val_every=2000,
                                            val_episodes=5)
    checkpoint = root / run / "checkpoints" / "last.pt"
    proc = _start_snakemake(root, f"{run}/model.pt")
    try:
        _wait_for(checkpoint.exists, proc, "training wrote a checkpoint")
        os.killpg(proc.pid, signal.SIGINT if how == "ctrl-c" else signal.SIGKILL)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert not (root / run / "model.pt").exists() and checkpoint.exists()

    if how == "power-cut":
        ok(snakemake("--unlock", cwd=root))
    ok(snakemake(f"{run}/model.pt", cwd=root, timeout=600))
    log = (root / "logs" / cfg["profile"] / "metatrain" / "sinusoid/maml/1way5shot/seed0.log").read_text()
    assert "resuming" in log, log[-3000:]
    rows = (root / run / "train_log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2000, "the resumed run's log continues the killed one's"
    assert not checkpoint.exists()


@needs_mirror_and_cli
def test_a_second_snakemake_in_the_same_folder_is_refused(tmp_path: Path) -> None:
    """Two invocations on one directory: the second stops with Snakemake's lock message (README: wait, or after a
    crash run `snakemake --unlock`), and the first is not disturbed."""
    # a training job that cannot finish during the test (it is stopped at the end): the first invocation holds
    # the lock for as long as the test needs, however fast or loaded the machine is
    _, root, run = _sinusoid_maml_project(tmp_path, iterations=10_000_000, checkpoint_every=1000,
                                          val_every=10_000_000, val_episodes=5)
    target = f"{run}/model.pt"
    first = _start_snakemake(root, target)
    try:
        locks = root / ".snakemake" / "locks"
        _wait_for(lambda: locks.exists() and any(locks.iterdir()), first, "taking its lock")
        second = snakemake(target, cwd=root)
        text = second.stdout + second.stderr
        assert second.returncode != 0 and "Directory cannot be locked" in text and "--unlock" in text, text[-2000:]
        assert first.poll() is None, "the refused second invocation must not stop the first"
    finally:
        os.killpg(first.pid, signal.SIGINT)
        first.wait(timeout=120)
