"""Report package: tables (ours vs paper, paired tests), figures and the index, on fixtures built here."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from metarepro import stats
from metarepro.report import cli, figures, tables
from metarepro.utils import MetareproError

REPO = Path(__file__).resolve().parents[2]
N = 600
PAPER_HEADER = "paper,method,dataset,backbone,ways,shots,metric,value,ci95,source\n"


def alternating(mean: float, spread: float, n: int = N) -> np.ndarray:
    """mean ± spread alternately: exact mean `mean`, sample std spread * sqrt(n / (n - 1))."""
    return mean + spread * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


def write_eval(root: Path, dataset: str, method: str, ways: int, shots: int, seed: int, scores,
               *, metric: str = "accuracy", episode_set: str = "E1", by_step: dict | None = None,
               fits: list | None = None, profile: str = "default") -> Path:
    scores = np.asarray(scores, dtype=float)
    run = {"experiment": dataset, "dataset": dataset, "backbone": "mlp" if dataset == "sinusoid" else "conv4",
           "backbone_args": {"hidden": [40, 40]} if dataset == "sinusoid" else {"filters": 64},
           "method": method, "method_args": {"inner_lr": 0.4, "inner_steps": 1, "eval_inner_steps": 3},
           "ways": ways, "shots": shots, "seed": seed, "profile": profile,
           "train": {"iterations": 500, "meta_batch": 8}, "evaluation": {"episodes": N, "queries": 15, "seed": 0}}
    m, c = float(scores.mean()), float(1.96 * scores.std(ddof=1) / math.sqrt(scores.size))
    if by_step is None:
        by_step = {"0": {"mean": 20.0, "ci95": 1.0}, "1": {"mean": m - 2, "ci95": c}, "2": {"mean": m - 1, "ci95": c},
                   "3": {"mean": m, "ci95": c}}
    ev = {"run": run, "metric": metric, "episodes": int(scores.size), "episode_set": episode_set,
          "inner_steps": max(int(k) for k in by_step), "mean": m, "ci95": c, "std": float(scores.std()),
          "per_episode": scores.tolist(), "by_step": by_step, "wall_time_s": 1.0, "peak_memory_mb": 10.0,
          "git_revision": "abc", "checkpoint": {"iteration": 400, "val_mean": m}}
    if fits is not None:
        ev["fits"] = fits
    d = root / "results" / dataset / method / f"{ways}way{shots}shot" / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    (d / "eval.json").write_text(json.dumps(ev))
    (d / "config.yaml").write_text(yaml.safe_dump(run))
    return d / "eval.json"


def write_paper(path: Path, rows: list[str]) -> Path:
    path.write_text(PAPER_HEADER + "".join(r + "\n" for r in rows))
    return path


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def paper(tmp_path) -> Path:
    return write_paper(tmp_path / "paper.csv", [
        "Finn et al. 2017 (MAML),MAML,omniglot,conv4-64,5,1,accuracy,98.7,0.4,MAML paper Table 1",
        "Finn et al. 2017 (MAML),MAML,omniglot,conv4-64,5,5,accuracy,99.9,0.1,MAML paper Table 1",
        "Other 2020,MAML,omniglot,conv4,5,5,accuracy,99.0,,Other paper Table 9",
        "Li et al. 2017 (Meta-SGD),MAML (5-shot meta-training),sinusoid,mlp-40-40,,10,mse,0.85,0.14,Meta-SGD Table 1",
    ])


# ----------------------------------------------------------------------------- statistics

def test_t_distribution_and_wilcoxon_against_known_values():
    # over 3 seeds: t_{0.975, 2} = 4.302653 (t tables) times std 1 / sqrt(3)
    assert tables.seed_mean_ci95([1.0, 2.0, 3.0]) == pytest.approx((2.0, 4.302653 / math.sqrt(3)), abs=1e-5)
    assert tables.mean_ci95([1.0, 3.0]) == pytest.approx((2.0, 1.96 * math.sqrt(2) / math.sqrt(2)))
    # d = [1, 2, -3, 4, 0]: zero dropped, W+ = 1+2+4 = 7, mean 5, var 4*5*9/24 = 7.5
    assert stats.wilcoxon_p([1, 2, -3, 4, 0]) == pytest.approx(math.erfc(2 / math.sqrt(7.5) / math.sqrt(2)))
    # ties: |d| = 1,1,1,2 -> ranks 2,2,2,4; W+ = 8; var = 7.5 - (27 - 3)/48 = 7.0
    assert stats.wilcoxon_p([1, 1, -1, 2]) == pytest.approx(math.erfc(3 / math.sqrt(7.0) / math.sqrt(2)))


def test_paired_test_by_hand():
    rng = np.random.default_rng(0)
    maml = rng.integers(40, 100, N).astype(float)
    d = np.where(np.arange(N) % 2 == 0, 3.0, 1.0)      # mean 2, deviations ±1
    res = tables.paired_test(maml + d, maml)
    sd = math.sqrt(N / (N - 1))                         # sample std of ±1
    assert res.mean == pytest.approx(2.0)
    assert res.ci95 == pytest.approx(1.96 * sd / math.sqrt(N))
    assert res.t == pytest.approx(2.0 / (sd / math.sqrt(N)))
    assert res.p_t < 1e-10 and res.p_wilcoxon < 1e-10
    same = tables.paired_test(maml, maml)
    assert (same.mean, same.p_t, same.p_wilcoxon) == (0.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- tables

def test_table_rows_paper_match_ci_logic_and_paired_vs_maml(tmp_path, paper):
    rng = np.random.default_rng(1)
    base = np.round(rng.uniform(60, 100, N), 2)
    # 5-way 1-shot: MAML mean 98.5, CI = 1.96*5*sqrt(600/599)/sqrt(600) = 0.4004 -> 98.7 inside
    e1 = write_eval(tmp_path, "omniglot", "maml", 5, 1, 0, alternating(98.5, 5.0))
    maml5 = base
    d = np.where(np.arange(N) % 2 == 0, 3.0, 1.0)
    e2 = write_eval(tmp_path, "omniglot", "maml", 5, 5, 0, maml5)
    e3 = write_eval(tmp_path, "omniglot", "fomaml", 5, 5, 0, maml5 + d)
    out = tmp_path / "reports" / "tables" / "maml_fewshot.md"
    md_path, csv_path = tables.make_table([e3, e2, e1], out, "MAML few-shot", paper)
    assert md_path.exists() and csv_path == out.with_suffix(".csv") and csv_path.exists()
    rows = read_csv(csv_path)
    assert rows[0].keys() >= {"dataset", "setting", "method", "backbone", "budget", "ours_mean", "ours_ci95",
                              "paper_value", "paper_ci95", "paper_backbone", "paper_source", "diff",
                              "paper_in_ci", "vs_maml_diff", "vs_maml_ci95", "vs_maml_p_t", "profile"}
    # 1-shot MAML, 5-shot MAML (two paper rows -> two lines), 5-shot FO-MAML (no paper number)
    assert [(r["setting"], r["method"], r["paper_value"]) for r in rows] == [
        ("5-way 1-shot", "maml", "98.7"), ("5-way 5-shot", "maml", "99.9"), ("5-way 5-shot", "maml", "99.0"),
        ("5-way 5-shot", "fomaml", "")]
    r1 = rows[0]
    assert float(r1["ours_mean"]) == pytest.approx(98.5)
    assert float(r1["ours_ci95"]) == pytest.approx(1.96 * 5 * math.sqrt(N / (N - 1)) / math.sqrt(N))
    assert float(r1["diff"]) == pytest.approx(-0.2)
    assert r1["paper_in_ci"] == "yes" and r1["backbone"] == "conv4-64" and r1["paper_backbone"] == "conv4-64"
    assert r1["budget"] == "500 it × 8 tasks (default)" and r1["profile"] == "default"
    assert r1["ci_over"] == "1 seed: episode CI only"
    assert rows[1]["paper_in_ci"] == "no"                   # mean ~80 vs 99.9
    assert rows[3]["paper_in_ci"] == "—" and rows[3]["diff"] == ""
    fo = rows[3]
    assert float(fo["vs_maml_diff"]) == pytest.approx(2.0)
    assert float(fo["vs_maml_ci95"]) == pytest.approx(1.96 * math.sqrt(N / (N - 1)) / math.sqrt(N))
    assert int(fo["vs_maml_n"]) == N and float(fo["vs_maml_p_t"]) < 1e-10
    # one seed: the episode CI, labelled, and never significant however small the episode p
    assert fo["vs_maml_ci_over"] == "1 seed: episode CI only" and fo["vs_maml_significant"] == "False"
    assert int(fo["vs_maml_seeds"]) == 1 and fo["vs_maml_same_sign"] == ""
    assert rows[0]["vs_maml_diff"] == ""                    # MAML is the reference
    md = md_path.read_text()
    assert md.startswith("# MAML few-shot\n")
    assert "| Dataset | Setting | Method |" in md and "| Omniglot | 5-way 1-shot | MAML | conv4-64 |" in md
    assert "98.50 ± 0.40" in md and "98.7 ± 0.4" in md and "+2.00 ± 0.08" in md
    assert "| +2.00 ± 0.08 | — | — | no (1 seed: episode CI only) |" in md     # no p, no claim for one seed
    assert "< 0.001" not in md
    assert "## Notes" in md and "1.96 · std / √n" in md and f"{N} fixed test episodes (15 query" in md
    assert "**default**" in md and "Finn et al. 2017 (MAML): MAML paper Table 1" in md
    assert "Other 2020: Other paper Table 9" in md and str(paper) in md


def test_paired_comparison_needs_same_episode_set(tmp_path, paper):
    a = write_eval(tmp_path, "omniglot", "maml", 5, 1, 0, alternating(90, 5), episode_set="E1")
    b = write_eval(tmp_path, "omniglot", "fomaml", 5, 1, 0, alternating(91, 5), episode_set="OTHER")
    _, csv_path = tables.make_table([a, b], tmp_path / "t.md", "t", paper)
    assert [r["vs_maml_diff"] for r in read_csv(csv_path)] == ["", ""]


def test_several_seeds_use_ci_across_seeds(tmp_path, paper):
    paths = [write_eval(tmp_path, "omniglot", "maml", 5, 1, s, alternating(m, 5)) for s, m in [(0, 90.0), (1, 92.0)]]
    _, csv_path = tables.make_table(paths, tmp_path / "t.md", "t", paper)
    (row,) = read_csv(csv_path)
    assert float(row["ours_mean"]) == pytest.approx(91.0)
    assert float(row["ours_ci95"]) == pytest.approx(12.7062 * math.sqrt(2.0) / math.sqrt(2), rel=1e-4)
    assert row["ci_over"] == f"2 seeds × {N} episodes" and row["seeds"] == "0 1"
    assert "t(0.975, s−1)" in (tmp_path / "t.md").read_text()


def test_compare_seeds_by_hand():
    # per-seed mean differences 1, 2, 3 on the same episodes: mean 2, sd 1, t(0.975, 2) = 4.302653
    pairs = [(alternating(50 + d, 5), alternating(50, 5)) for d in (1.0, 2.0, 3.0)]
    c = stats.compare_seeds(pairs)
    assert (c.mean, c.seeds, c.episodes, c.per_seed) == (pytest.approx(2.0), 3, N, pytest.approx((1.0, 2.0, 3.0)))
    assert c.ci95 == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)
    # t = 2 / (1 / sqrt 3); Student-t with 2 df has F(t) = 1/2 + t / (2 sqrt(2 + t^2)), so p = 1 - t / sqrt(2 + t^2)
    t = 2.0 * math.sqrt(3)
    assert c.p == pytest.approx(1 - t / math.sqrt(2 + t * t), abs=1e-9)
    assert c.same_sign == 1.0 and c.same_sign_text == "3/3" and c.span == f"3 seeds × {N} episodes"
    assert not c.significant                                             # same sign on 3/3, but 2 < 2.484
    tight = stats.compare_seeds([(alternating(50 + d, 5), alternating(50, 5)) for d in (2.0, 2.5, 3.0)])
    assert tight.ci95 == pytest.approx(4.302653 * 0.5 / math.sqrt(3), abs=1e-5) and tight.significant
    # a sign flip on one seed: 2/3 seeds share the mean's sign, the CI spans 0, no finding
    flip = stats.compare_seeds([(alternating(50 + d, 5), alternating(50, 5)) for d in (3.0, 2.0, -1.0)])
    assert flip.same_sign_text == "2/3" and not flip.significant and flip.ci95 > abs(flip.mean)
    # two seeds: a CI over seeds, but fewer than the 3 a finding needs
    two = stats.compare_seeds(pairs[:2])
    assert two.ci95 == pytest.approx(12.7062 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4) and not two.significant
    # one seed: the episode CI, labelled, never significant
    one = stats.compare_seeds(pairs[:1])
    assert one.span == "1 seed: episode CI only" and one.same_sign is None and not one.significant
    assert one.ci95 == pytest.approx(0.0) and one.p == 0.0              # a constant +1 on every episode
    # identical differences on every seed: CI 0, p 0 (scipy would say NaN)
    const = stats.compare_seeds([(alternating(51, 5), alternating(50, 5))] * 3)
    assert (const.ci95, const.p, const.significant) == (0.0, 0.0, True)


def test_paired_comparison_spans_seeds_not_episodes(tmp_path, paper):
    """Three seeds whose per-episode differences are each very significant but disagree in sign across seeds:
    the table's CI spans the seeds, so the comparison is not significant and the reproducibility column says 2/3."""
    paths = []
    for seed, delta in [(0, 3.0), (1, 2.0), (2, -1.0)]:
        ref = alternating(50, 5)
        paths.append(write_eval(tmp_path, "fc100", "metasgd", 5, 1, seed, ref))
        paths.append(write_eval(tmp_path, "fc100", "metasgd+cml", 5, 1, seed, ref + delta))
    md_path, csv_path = tables.make_table(paths, tmp_path / "t.md", "t", paper)
    rows = {r["method"]: r for r in read_csv(csv_path)}
    cml = rows["metasgd+cml"]
    assert cml["paired_with"] == "metasgd" and int(cml["vs_maml_seeds"]) == 3
    assert float(cml["vs_maml_diff"]) == pytest.approx(4 / 3)
    d = np.array([3.0, 2.0, -1.0])
    assert float(cml["vs_maml_ci95"]) == pytest.approx(4.302653 * d.std(ddof=1) / math.sqrt(3), abs=1e-5)
    assert cml["vs_maml_ci_over"] == f"3 seeds × {N} episodes" and cml["vs_maml_significant"] == "False"
    assert float(cml["vs_maml_same_sign"]) == pytest.approx(2 / 3)
    assert [float(x) for x in cml["vs_maml_per_seed"].split()] == pytest.approx([3.0, 2.0, -1.0])
    assert cml["ci_over"] == f"3 seeds × {N} episodes"
    md = md_path.read_text()
    assert "| 2/3 |" in md and f"| no (3 seeds × {N} episodes) |" in md and "ttest_1samp" in md


def test_sinusoid_compares_paper_with_one_inner_step(tmp_path, paper):
    steps = {str(k): {"mean": 3.0 / (k + 1), "ci95": 0.1} for k in range(11)}
    steps["1"] = {"mean": 0.9, "ci95": 0.1}
    # trained at 10 shots: the paper's 5-shot-trained model tested at 10 is another protocol, not matched
    e10 = write_eval(tmp_path / "t10", "sinusoid", "maml", 1, 10, 0, alternating(0.3, 0.5), metric="mse",
                     by_step=steps)
    _, csv10 = tables.make_table([e10], tmp_path / "sin10.md", "sinusoid", paper)
    assert read_csv(csv10)[0]["paper_method"] == ""
    # trained at 5 shots and tested at 10 (evaluate --shots 10): its own row, which the paper row matches
    e = write_eval(tmp_path, "sinusoid", "maml", 1, 5, 0, alternating(0.3, 0.5), metric="mse", by_step=steps)
    ev = json.loads(e.read_text())
    ev["test_shots"] = 10
    e = e.with_name("eval_10shot.json")
    e.write_text(json.dumps(ev))
    md_path, csv_path = tables.make_table([e], tmp_path / "sin.md", "sinusoid", paper)
    (row,) = read_csv(csv_path)
    assert row["method"] == "maml~train5" and row["method_label"] == "MAML (5-shot meta-training)"
    assert row["setting"] == "10-shot" and row["ways"] == "" and row["backbone"] == "mlp-40-40"
    assert row["paper_method"] == "MAML (5-shot meta-training)" and row["compared_at"] == "1 inner step"
    assert float(row["diff"]) == pytest.approx(0.9 - 0.85) and row["paper_in_ci"] == "yes"
    assert float(row["ours_step1_mean"]) == pytest.approx(0.9) and float(row["ours_mean"]) == pytest.approx(0.3)
    md = md_path.read_text()
    assert "Ours, 1 step (MSE)" in md and "Ours, K steps (MSE)" in md and "0.900 ± 0.100" in md
    assert "(K=10)" in md and "after one inner step" in md


def test_repo_paper_csv_is_a_full_copy_and_gives_one_line_per_matching_row(tmp_path):
    repo_csv = REPO / "config" / "paper_results.csv"
    shared = REPO.parent / "shared" / "reference" / "paper_results.csv"
    rows = tables.load_paper_results(repo_csv)
    if shared.exists():   # every published row, as given, plus the setup columns where a row needs them
        ours = [r[:10] for r in csv.reader(open(repo_csv, newline=""))]
        given = list(csv.reader(open(shared, newline="")))
        assert ours[:len(given)] == given
        # rows the shared file lacks (G-Meta's, found in its repository and a listing) follow, each with its source
        assert all(r[9].strip() for r in ours[len(given):])
    assert len(rows) >= 70 and {r.metric for r in rows} == {"accuracy", "mse"}
    e = write_eval(tmp_path, "miniimagenet", "maml", 5, 5, 0, alternating(60, 20))
    _, csv_path = tables.make_table([e], tmp_path / "mini.md", "mini", repo_csv)
    got = {(r["paper"], r["paper_value"]) for r in read_csv(csv_path)}
    assert ("Finn et al. 2017 (MAML)", "63.11") in got and ("Rajasegaran et al. 2020 (PAMELA)", "63.11") in got
    assert ("Abbas et al. 2022 (Sharp-MAML) as quoted", "62.2") in got   # the "MAML (re-run)" variant label
    assert all(p != "PAMELA" for p, _ in got)


@pytest.mark.parametrize("content, needle", [
    (None, "cannot read evaluation file"),
    ("{not json", "not valid JSON"),
    (json.dumps({"run": {"dataset": "omniglot"}, "metric": "accuracy", "mean": 1.0}), "missing key 'ci95'"),
    (json.dumps({"run": {"dataset": "omniglot", "method": "maml", "ways": 5, "shots": 1, "seed": 0},
                 "metric": "accuracy", "mean": "high", "ci95": 1.0}), "'mean' = 'high' is not a number"),
])
def test_bad_eval_json_names_the_file(tmp_path, paper, capsys, content, needle):
    bad = tmp_path / "results" / "x" / "eval.json"
    if content is not None:
        bad.parent.mkdir(parents=True)
        bad.write_text(content)
    with pytest.raises(MetareproError, match=needle) as exc:
        tables.make_table([bad], tmp_path / "t.md", "t", paper)
    assert str(bad) in str(exc.value)
    rc = cli.main(["table", "--name", "t", "--title", "T", "--paper", str(paper), "--out", str(tmp_path / "t.md"),
                   str(bad)])
    assert rc == 1 and str(bad) in capsys.readouterr().err
    assert not (tmp_path / "t.md").exists() and not (tmp_path / "t.csv").exists()


# ----------------------------------------------------------------------------- figures + index + CLI

def _train_log(run_dir: Path, final: float) -> None:
    lines = ["iteration,meta_loss,meta_metric,val_mean,val_ci95,lr,elapsed_s"]
    for it in range(1, 201):
        val = f"{final * it / 200:.3f},1.5" if it % 50 == 0 else ","
        lines.append(f"{it},{2.0 / it:.4f},{final * it / 200:.3f},{val},0.001,{it * 0.1:.1f}")
    (run_dir / "train_log.csv").write_text("\n".join(lines) + "\n")


def test_cli_end_to_end_figures_and_index(tmp_path, paper, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ev_maml = write_eval(tmp_path, "omniglot", "maml", 5, 1, 0, alternating(95, 5))
    ev_fo = write_eval(tmp_path, "omniglot", "fomaml", 5, 1, 0, alternating(94, 5))
    for ev, final in [(ev_maml, 95.0), (ev_fo, 94.0)]:
        _train_log(ev.parent, final)
    x = np.linspace(-5, 5, 50)
    fit = {"amplitude": 3.1, "phase": 1.2, "x_support": [-1.0, 0.0, 2.0], "y_support": [0.1, 2.9, -1.0],
           "x_grid": x.tolist(), "y_true": (3.1 * np.sin(x - 1.2)).tolist(),
           "y_pred": {"0": np.zeros(50).tolist(), "1": np.sin(x).tolist(), "10": (3 * np.sin(x - 1)).tolist()}}
    steps = {str(k): {"mean": 2.0 / (k + 1), "ci95": 0.1} for k in range(11)}
    ev_sin = write_eval(tmp_path, "sinusoid", "maml", 1, 10, 0, alternating(0.3, 0.2), metric="mse",
                        by_step=steps, fits=[fit, fit])

    assert cli.main(["table", "--name", "maml_fewshot", "--title", "MAML few-shot", "--paper", str(paper),
                     "--out", "reports/tables/maml_fewshot.md", str(ev_maml), str(ev_fo)]) == 0
    figs = {"curves": [str(ev_maml.parent), str(ev_fo.parent)], "inner_steps": [str(ev_maml), str(ev_fo), str(ev_sin)],
            "sinusoid_fits": [str(ev_sin)]}
    for kind, inputs in figs.items():
        assert cli.main(["report", "figure", "--kind", kind, "--out", f"reports/figures/maml_{kind}.png", *inputs]) == 0
        png = tmp_path / "reports" / "figures" / f"maml_{kind}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert figures.read_png_profile(png) == "default"

    files = ["reports/tables/maml_fewshot.md", "reports/tables/maml_fewshot.csv"] + \
        [f"reports/figures/maml_{k}.png" for k in figs]
    assert cli.main(["index", "--out", "reports/README.md", *files]) == 0
    readme = (tmp_path / "reports" / "README.md").read_text()
    assert "[MAML few-shot](tables/maml_fewshot.md)" in readme and "[csv](tables/maml_fewshot.csv)" in readme
    for kind in figs:
        assert f"(figures/maml_{kind}.png)" in readme
    assert "MAML: test score (mean ± 95% CI) vs number of inner gradient steps" in readme
    assert cli.figure_caption("fomaml_cifarfs_curves").startswith("FO-MAML CIFAR-FS: meta-training")
    assert "- **default**: table `maml_fewshot`, figure `maml_curves`" in readme


def test_index_lists_every_profiles_reports(tmp_path, monkeypatch):
    """The index lists the other profiles' report folders with the tables, figures and notes on disk, sorted;
    its own profile once; a profile with nothing rendered says how to render it and links nowhere."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text("profile: default\nreports_dir: reports\n")
    (tmp_path / "config" / "paper.yaml").write_text("profile: paper\nreports_dir: reports/paper\n")
    (tmp_path / "config" / "cpu_b.yaml").write_text("profile: cpu_b\nreports_dir: reports/cpu_b\n"
                                                     "figures_dir: reports/figures/cpu_b\n")
    for rel, text in {"reports/tables/t.md": "# Default table\n", "reports/cpu_b/tables/z.md": "# Zeta\n",
                      "reports/cpu_b/tables/z.csv": "a\n1\n", "reports/cpu_b/tables/a.md": "# Alpha\n",
                      "reports/cpu_b/findings.md": "x\n"}.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    (tmp_path / "reports/figures/cpu_b").mkdir(parents=True)
    (tmp_path / "reports/figures/cpu_b/z_curves.png").write_bytes(b"\x89PNG")
    profiles = ["config/paper.yaml", "config/config.yaml", "config/cpu_b.yaml"]
    assert cli.main(["index", "--out", "reports/README.md", "--profiles", *profiles, "--",
                     "reports/tables/t.md"]) == 0
    text = (tmp_path / "reports" / "README.md").read_text()
    others = text.split("## Other profiles", 1)[1].split("## Which config profile", 1)[0]
    assert "### default" not in others                      # the index's own profile is listed above it
    assert others.index("### cpu_b") < others.index("### paper")
    assert "### cpu_b (`config/cpu_b.yaml`): [reports/cpu_b/](cpu_b/)" in others
    assert ("- [findings.md](cpu_b/findings.md)\n- table [Alpha](cpu_b/tables/a.md)\n"
            "- table [Zeta](cpu_b/tables/z.md) ([csv](cpu_b/tables/z.csv))\n"
            "- figure [z_curves](figures/cpu_b/z_curves.png)") in others
    assert "### paper (`config/paper.yaml`): `reports/paper/`" in others and "](paper/" not in others
    assert "snakemake --cores N --configfile config/paper.yaml" in others
    first = text
    assert cli.main(["index", "--out", "reports/README.md", "--profiles", *reversed(profiles), "--",
                     "reports/tables/t.md"]) == 0
    assert (tmp_path / "reports" / "README.md").read_text() == first   # deterministic


def test_figure_errors_name_the_file(tmp_path):
    ev = write_eval(tmp_path, "omniglot", "maml", 5, 1, 0, alternating(95, 5))
    with pytest.raises(MetareproError, match="no 'fits'") as exc:
        figures.figure_sinusoid_fits([ev], tmp_path / "f.png")
    assert str(ev) in str(exc.value)
    with pytest.raises(MetareproError, match="train_log.csv"):
        figures.figure_curves([ev.parent], tmp_path / "c.png")          # no train_log.csv written
    assert cli.main(["index", "--out", str(tmp_path / "R.md"), str(tmp_path / "missing.md")]) == 1


def _with_gates(ev_path: Path, steps: int, start: float) -> Path:
    """Add a synthetic Meta-LSTM "gates" entry (eval.json format of metarepro.evaluate) to an eval.json."""
    ev = json.loads(ev_path.read_text())
    series = lambda a, b: {"mean": np.linspace(a, b, steps).tolist(), "ci95": [0.002] * steps}
    ev["gates"] = {"input": series(start, start / 2), "forget": series(0.99, 0.95),
                   "input_by_param": {"features.0.weight": np.full(steps, start).tolist()},
                   "forget_by_param": {"features.0.weight": np.full(steps, 0.98).tolist()}, "episodes": 50}
    ev_path.write_text(json.dumps(ev))
    return ev_path


def test_gates_figure_renders_and_names_an_eval_without_gates(tmp_path):
    one = _with_gates(write_eval(tmp_path, "miniimagenet", "metalstm", 5, 1, 0, alternating(43, 5)), 12, 0.02)
    five = _with_gates(write_eval(tmp_path, "miniimagenet", "metalstm", 5, 5, 0, alternating(60, 5)), 8, 0.01)
    out = tmp_path / "figures" / "metalstm_gates.png"
    assert cli.main(["figure", "--kind", "gates", "--out", str(out), str(one), str(five)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert figures.read_png_profile(out) == "default"
    assert cli.figure_caption("metalstm_gates").startswith("Meta-LSTM: input and forget gate values")

    plain = write_eval(tmp_path, "miniimagenet", "maml", 5, 1, 0, alternating(48, 5))
    with pytest.raises(MetareproError, match="no 'gates'") as exc:
        figures.figure_gates([one, plain], tmp_path / "g.png")
    assert str(plain) in str(exc.value)
    ev = json.loads(five.read_text())
    ev["gates"]["forget"]["ci95"] = ev["gates"]["forget"]["ci95"][:-1]
    five.write_text(json.dumps(ev))
    with pytest.raises(MetareproError, match="gates.forget") as exc:
        figures.figure_gates([five], tmp_path / "g.png")
    assert str(five) in str(exc.value) and not (tmp_path / "g.png").exists()


def test_method_labels():
    assert tables.method_label("maml") == "MAML" and tables.method_label("mamlpp+cml") == "MAML++ + CML"
    assert tables.method_label("nearest_neighbor") == "Nearest-neighbor baseline"
    assert tables.method_label("newthing") == "newthing"
    # method variants <method>@<tag>: the paper's row label where one is registered, else "<label> (<tag>)"
    assert tables.method_label("pamela@q_shared") == "MAML + single Q (multi-step)"
    assert tables.method_label("pamela@other") == "PAMELA (other)"
    assert tables.method_label("mamlpp@msl+cml") == "MAML + MSL + CML"
    assert tables._sort_key_method("pamela@skip")[0] == tables._sort_key_method("pamela")[0]


def test_report_package_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, metarepro.report.cli, metarepro.report.tables, metarepro.report.figures, "
            "metarepro.report.complexity; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO).returncode == 0


def test_budget_of_a_baseline_without_meta_training(tmp_path, paper):
    """A baseline on the pretrain stage's backbone (0 meta-iterations) is not credited with the train block."""
    p = write_eval(tmp_path, "omniglot", "nearest_neighbor", 5, 1, 0, alternating(90.0, 5.0))
    ev = json.loads(p.read_text())
    ev["run"]["pretrained"] = "results/omniglot/pretrain/conv4-64/seed0/backbone.pt"
    ev["checkpoint"]["iteration"] = 0
    p.write_text(json.dumps(ev))
    maml = write_eval(tmp_path, "omniglot", "maml", 5, 1, 0, alternating(91.0, 5.0))
    rows, _ = tables.build_rows([tables.load_eval(maml), tables.load_eval(p)], tables.load_paper_results(paper))
    budget = {r["method"]: r["budget"] for r in rows}
    assert budget["nearest_neighbor"] == "pretrained classifier, no meta-training (default)"
    assert budget["maml"] == "500 it × 8 tasks (default)"


def test_curves_draw_each_runs_published_number(tmp_path, paper, monkeypatch):
    ev = write_eval(tmp_path, "omniglot", "maml", 5, 1, 0, alternating(95, 5))
    _train_log(ev.parent, 95.0)
    drawn = []
    real = figures.plt.Axes.axhline

    def spy(ax, y, *a, **k):
        drawn.append((y, k.get("label")))
        return real(ax, y, *a, **k)
    monkeypatch.setattr(figures.plt.Axes, "axhline", spy)
    figures.figure_curves([ev.parent], tmp_path / "c.png", paper=paper)
    assert drawn == [(98.7, "MAML: published 98.7 (Finn et al. 2017 (MAML))")]
    drawn.clear()
    figures.figure_curves([ev.parent], tmp_path / "c.png")          # no paper csv: no line
    assert drawn == []


def test_wall_time_column_and_budget_of_train_ways_and_ensembles(tmp_path, paper):
    ev_path = write_eval(tmp_path, "omniglot", "protonet", 5, 1, 0, alternating(95, 5))
    ev = json.loads(ev_path.read_text())
    ev["checkpoint"]["train_wall_time_s"] = 1500.0          # 25 min of meta-training, 1 s of test
    ev["run"]["train"].update(ways=60, ensemble=5)
    ev_path.write_text(json.dumps(ev))
    md, csv_path = tables.make_table([ev_path], tmp_path / "t.md", "T", paper, wall_time=True)
    text = md.read_text()
    assert "| Wall time (min, train + test) |" in text
    assert "| 500 it × 8 tasks, 60-way, top-5 ensemble (default) | 25.0 + 0.0 |" in text
    row = read_csv(csv_path)[0]
    assert float(row["train_wall_s"]) == 1500.0 and float(row["test_wall_s"]) == 1.0
    assert "Wall time" not in tables.make_table([ev_path], tmp_path / "u.md", "U", paper)[0].read_text()


def test_addon_runs_are_paired_with_their_base_run(tmp_path, paper):
    """`boil+cml` is paired with `boil` and the noise control `maml@noise+cml` with `maml` (same episodes); a run
    without add-ons is paired with MAML as before."""
    base = np.round(np.random.default_rng(2).uniform(40, 60, N), 2)
    up = np.where(np.arange(N) % 2 == 0, 2.0, 0.0)
    evs = [write_eval(tmp_path, "fc100", m, 5, 1, 0, s) for m, s in
           (("maml", base), ("boil", base + 1.0), ("boil+cml", base + 1.0 + up), ("maml@noise+cml", base - up))]
    md, csv_path = tables.make_table(evs, tmp_path / "t.md", "t", paper)
    rows = {r["method"]: r for r in read_csv(csv_path)}
    assert rows["boil"]["paired_with"] == "maml" and float(rows["boil"]["vs_maml_diff"]) == pytest.approx(1.0)
    assert rows["boil+cml"]["paired_with"] == "boil" and float(rows["boil+cml"]["vs_maml_diff"]) == pytest.approx(1.0)
    assert rows["maml@noise+cml"]["paired_with"] == "maml"
    assert float(rows["maml@noise+cml"]["vs_maml_diff"]) == pytest.approx(-1.0)
    text = md.read_text()
    assert "(vs BOIL)" in text and "MAML + noise of CML's norm (control)" in text


def test_tables_state_our_choices_for_the_methods_and_addons_they_show(tmp_path, paper):
    """Where a paper leaves choices open (AMFS, O-AMFS, MTL, HT), the table that shows the method says what we
    chose; tables without such a method carry no such note."""
    a = write_eval(tmp_path, "omniglot", "maml", 5, 1, 0, alternating(90, 5))
    b = write_eval(tmp_path, "omniglot", "amfs+oamfs", 5, 1, 0, alternating(91, 5))
    md_path, _ = tables.make_table([a, b], tmp_path / "t.md", "t", paper)
    md = md_path.read_text()
    assert "**Our choices, AMFS.**" in md and "Cholesky" in md and "Srinivas et al. 2010" in md
    assert "**Our choices, O-AMFS.**" in md and "w_i = (1 + c_i) / 2" in md
    assert "Our choices, MTL" not in md and "Our choices, HT" not in md
    assert tables.choices_notes(["mtl@ft+ht"])[0].startswith("- **Our choices, MTL.** The backbone is pretrained")
    assert "lowest query accuracy" in tables.choices_notes(["mtl@ft+ht"])[1]
    md_path, _ = tables.make_table([a], tmp_path / "m.md", "m", paper)
    assert "Our choices" not in md_path.read_text()


def test_inner_steps_figure_draws_a_method_without_steps_as_a_level(tmp_path, monkeypatch):
    """I-AMFS's closed-form solve has no inner steps: its score is a dashed level across the panel, from step 0 to
    the last step of the stepped methods, not one dot at step 0."""
    maml = write_eval(tmp_path, "omniglot", "maml", 5, 1, 0, alternating(90, 5))
    amfs = write_eval(tmp_path, "omniglot", "amfs", 5, 1, 0, alternating(91, 5),
                      by_step={"0": {"mean": 91.0, "ci95": 0.4}})
    shown = []
    monkeypatch.setattr(figures, "_save", lambda fig, out, profiles: shown.append(fig) or Path(out))
    figures.figure_inner_steps([maml, amfs], tmp_path / "f.png")
    (ax,) = [a for a in shown[0].axes if a.get_visible()]
    levels = [c for c in ax.collections if type(c).__name__ == "LineCollection"]
    assert len(levels) == 1
    (segment,) = levels[0].get_segments()
    assert segment.tolist() == [[0.0, 91.0], [3.0, 91.0]] and levels[0].get_linestyle()[0][1] is not None
    labels = ax.get_legend_handles_labels()[1]
    assert labels == ["MAML (1 seed)", "AMFS (1 seed; no inner steps)"]
    assert [len(line.get_xdata()) for line in ax.lines if line.get_label() == "MAML (1 seed)"] == [4]


def test_cross_domain_table_spans_seeds(tmp_path):
    """Cross-domain rows aggregate over training seeds: in-domain and cross-domain means ± the t-CI over the seed
    means, and the paired comparisons per seed on the target's episodes, then over seeds."""
    from metarepro.report import xdomain

    def cross(method: str, seed: int, scores) -> Path:
        src = write_eval(tmp_path, "cifarfs", method, 5, 1, seed, alternating(60, 5))   # in-domain on the source
        ev = json.loads(src.read_text())
        ev.update(per_episode=list(map(float, scores)), mean=float(np.mean(scores)), episode_set="T",
                  cross_domain={"target": "miniimagenet", "input_shape": [3, 32, 32], "target_image_shape": [3, 32, 32]})
        path = src.parent / "eval_xdomain_miniimagenet.json"
        path.write_text(json.dumps(ev))
        return path

    paths = []
    for seed, (maml, proto) in enumerate([(40.0, 42.0), (41.0, 44.0), (42.0, 43.0)]):
        paths += [cross("maml", seed, alternating(maml, 5)), cross("protonet", seed, alternating(proto, 5))]
        paths += [write_eval(tmp_path, "miniimagenet", "maml", 5, 1, seed, alternating(maml + 1, 5), episode_set="T")]
    paths += list((tmp_path / "results" / "cifarfs").glob("*/5way1shot/seed*/eval.json"))   # the in-domain runs
    md_path, csv_path = xdomain.make_xdomain_table(paths, tmp_path / "x.md", "x")
    rows = {r["method"]: r for r in read_csv(csv_path)}
    maml, proto = rows["maml"], rows["protonet"]
    assert maml["seeds"] == "0 1 2" and maml["ci_over"] == f"3 seeds × {N} episodes"
    assert float(maml["cross_domain_mean"]) == pytest.approx(41.0)
    assert float(maml["cross_domain_ci95"]) == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)
    assert float(maml["in_domain_mean"]) == pytest.approx(60.0) and float(maml["in_domain_ci95"]) == 0.0
    # cross-domain − trained on the target: −1 on every seed (CI 0, significant)
    assert float(maml["vs_target_trained_diff"]) == pytest.approx(-1.0) and maml["vs_target_trained_significant"] == "True"
    # ProtoNet − MAML per seed: 2, 3, 1 -> mean 2, sd 1: CI 2.48 spans 0, 3/3 seeds positive
    assert float(proto["vs_reference_diff"]) == pytest.approx(2.0)
    assert float(proto["vs_reference_ci95"]) == pytest.approx(4.302653 / math.sqrt(3), abs=1e-5)
    assert proto["vs_reference_significant"] == "False" and float(proto["vs_reference_same_sign"]) == 1.0
    md = md_path.read_text()
    assert "| +2.00 ± 2.48 | 3/3 |" in md and f"no (3 seeds × {N} episodes)" in md
    # files without an overlap record: the concept overlap from the shipped split files, named per pair
    assert "| CIFAR-FS → miniImageNet | 2 of 20 | lion (lion), school bus (bus) |" in md
    assert maml["overlap_classes"] == "2" and "| Cross-domain without the overlap |" not in md


def test_published_rows_of_another_setup_are_shown_but_never_compared(tmp_path):
    """A Conv-4 run beside ResNet-12 published rows, a 32x32 run on a 60-per-class subset beside full 84x84
    miniImageNet, a 5-way-trained ProtoNet beside a 30-way-trained one: each published number is shown with the
    difference named, and none enters `Ours − paper` or `Paper in our CI`; the like-for-like row still does."""
    paper = write_paper(tmp_path / "paper.csv", [
        "Sun et al. 2019 (MTL),MTL (SS),fc100,resnet12,5,1,accuracy,43.6,1.8,MTL Table 2",
        "Lee et al. 2019 (MetaOptNet),ProtoNet (ResNet-12),fc100,resnet12,5,1,accuracy,37.5,0.6,MetaOptNet Table 2",
        "Oreshkin et al. 2018,ProtoNet,fc100,conv4-64,5,1,accuracy,35.3,0.6,TADAM",
        "Finn et al. 2017 (MAML),MAML,miniimagenet,conv4-32,5,1,accuracy,48.70,1.84,MAML Table 1",
    ])
    text = paper.read_text().splitlines()
    text[0] += ",image_size,variant,train_ways,train_shots"
    text = [text[0]] + [line + ",,,," for line in text[1:]]
    text.append("Snell et al. 2017 (ProtoNet),ProtoNet,fc100,conv4-64,5,1,accuracy,36.0,0.6,made up,,,30,")
    paper.write_text("\n".join(text) + "\n")
    data = tmp_path / "data" / "miniimagenet"
    data.mkdir(parents=True)
    (data / "meta.json").write_text(json.dumps({"splits": {"train": {"images": 3840, "classes": 64}}}))
    paths = [write_eval(tmp_path, "fc100", "mtl", 5, 1, 0, alternating(43.0, 5)),
             write_eval(tmp_path, "fc100", "protonet", 5, 1, 0, alternating(35.0, 5)),
             write_eval(tmp_path, "miniimagenet", "maml", 5, 1, 0, alternating(48.0, 5))]
    for p, args in ((paths[0], None), (paths[1], None), (paths[2], {"image_size": 32})):
        ev = json.loads(p.read_text())
        ev["run"]["backbone_args"] = {"filters": 32 if args else 64}
        ev["run"]["data_dir"] = str(data) if args else "nowhere"
        if args:
            ev["run"]["dataset_args"] = args
        p.write_text(json.dumps(ev))
    md_path, csv_path = tables.make_table(paths, tmp_path / "t.md", "t", paper)
    rows = read_csv(csv_path)
    by = {(r["method"], r["paper_value"]): r for r in rows}
    mtl = by[("mtl", "43.6")]
    assert mtl["like_for_like"] == "False" and mtl["diff"] == "" and mtl["paper_in_ci"] == "—"
    assert mtl["setup_difference"] == "resnet12; ours conv4-64"
    assert by[("protonet", "37.5")]["diff"] == "" and "resnet12" in by[("protonet", "37.5")]["setup_difference"]
    assert by[("protonet", "36.0")]["setup_difference"] == "meta-trained 30-way; ours 5-way"
    same = by[("protonet", "35.3")]
    assert same["like_for_like"] == "True" and float(same["diff"]) == pytest.approx(-0.3)
    mini = by[("maml", "48.7")]
    assert mini["dataset_variant"] == "subset (60 images per class)" and mini["image_size"] == "32"
    assert mini["setup_difference"] == ("84×84 images; ours 32×32; full dataset; ours subset (60 images per class)")
    assert mini["diff"] == ""
    md = md_path.read_text()
    assert "43.6 ± 1.8 [MTL (SS)] (resnet12; ours conv4-64)" in md and "Published, other setup" in md


def test_figure_cards_are_the_one_list_of_figure_kinds():
    """The config schema's figure names, the CLI's renderers and the renderer registries all come from the cards."""
    from metarepro.config import load_schema
    from metarepro.report_cards import FIGURE_CARDS, RENDERERS
    from metarepro.report.analysis import ANALYSIS_FIGURES
    from metarepro.report.cli import build_parser
    from metarepro.report.figures import FIGURES

    assert set(RENDERERS) == set(FIGURES) | set(ANALYSIS_FIGURES)
    enum = load_schema()["properties"]["reports"]["additionalProperties"]["properties"]["figures"]["items"]["enum"]
    assert enum == list(FIGURE_CARDS)
    parser = build_parser()
    assert parser.parse_args(["figure", "--kind", "sinusoid_fits", "--out", "x.png", "e.json"]).kind == "sinusoid_fits"
    with pytest.raises(SystemExit):
        parser.parse_args(["figure", "--kind", "fits", "--out", "x.png", "e.json"])   # a config name, not a renderer
    for card in FIGURE_CARDS.values():
        assert card.reads and card.caption.endswith(".")


def test_side_table_cards_name_a_report_subcommand_and_a_report_flag():
    from metarepro.config import load_schema
    from metarepro.report.cli import build_parser
    from metarepro.report_cards import SIDE_TABLE_CARDS, SIDE_TABLE_READS

    flags = load_schema()["properties"]["reports"]["additionalProperties"]["properties"]
    for kind, card in SIDE_TABLE_CARDS.items():
        assert flags[card.flag]["type"] == "boolean"
        assert card.reads in SIDE_TABLE_READS         # the workflow picks inputs by this field, never by the kind
        args = build_parser().parse_args([kind, "--name", "r", "--out", f"t/r_{kind}.md", "x"])
        assert args.command == kind
