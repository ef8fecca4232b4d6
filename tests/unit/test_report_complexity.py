"""Complexity table and the inner-loss variance figure, on run directories built here."""
from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import pytest
import yaml

from metarepro.report import cli, complexity, figures
from metarepro.utils import MetareproError

try:  # pytest's rootdir import mode puts tests/unit on sys.path
    from .test_report import alternating, write_eval
except ImportError:
    from test_report import alternating, write_eval


def write_run(root: Path, method: str, *, shots: int = 5, seed: int = 0, parameters: int = 32_000,
              iterations: int = 1000, wall: float = 500.0, adapt_s: float = 0.08, train_mem: float = 1500.0,
              eval_mem: float = 900.0, best_iteration: int = 800, dataset: str = "miniimagenet") -> Path:
    """A finished run directory: eval.json (as evaluate.py writes it) and config.yaml (config + provenance)."""
    ev_path = write_eval(root, dataset, method, 5, shots, seed, alternating(60.0, 5.0))
    ev = json.loads(ev_path.read_text())
    ev.update(parameters=parameters, adapt_time_per_task_s=adapt_s, peak_memory_mb=eval_mem, device="cpu",
              peak_gpu_memory_mb=None, curve_episodes=100)
    ev_path.write_text(json.dumps(ev))
    cfg = dict(ev["run"])
    cfg["train"] = {"iterations": iterations, "meta_batch": 2, "val_every": 200, "val_episodes": 50}
    cfg["provenance"] = {"git_revision": "abc", "torch_version": "2.x", "wall_time_s": wall,
                         "peak_memory_mb": train_mem, "best_iteration": best_iteration, "best_val_mean": 60.0}
    (ev_path.parent / "config.yaml").write_text(yaml.safe_dump(cfg))
    return ev_path.parent


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- complexity table

def test_complexity_numbers_ratio_to_maml_and_seed_means(tmp_path):
    maml = [write_run(tmp_path, "pamela@maml", seed=s, wall=w, adapt_s=a, train_mem=m)
            for s, w, a, m in [(0, 400.0, 0.06, 1400.0), (1, 600.0, 0.10, 1600.0)]]
    full = write_run(tmp_path, "pamela", parameters=32_000 + 8_000, wall=1500.0, adapt_s=0.2)
    tiny = write_run(tmp_path, "pamela@skip", parameters=32_001)
    one_shot = write_run(tmp_path, "pamela", shots=1, parameters=40_000)       # no MAML at 1 shot
    out = tmp_path / "reports" / "tables" / "pamela_ablation_complexity.md"
    md_path, csv_path = complexity.make_complexity_table([full, *maml, tiny, one_shot], out, "PAMELA complexity")
    assert csv_path == out.with_suffix(".csv")
    rows = {(r["shots"], r["method"]): r for r in read_csv(csv_path)}
    ref = rows[("5", "pamela@maml")]
    assert ref["seeds"] == "0 1" and ref["parameters"] == "32000" and ref["reference_method"] == "pamela@maml"
    assert float(ref["train_s_per_iteration"]) == pytest.approx(0.5)          # (400 + 600) / 2 / 1000 iterations
    assert float(ref["adapt_ms_per_task"]) == pytest.approx(80.0)             # mean of 60 and 100 ms
    assert float(ref["train_peak_memory_mb"]) == pytest.approx(1500.0)
    assert float(ref["eval_peak_memory_mb"]) == pytest.approx(900.0) and ref["eval_device"] == "cpu"
    assert float(ref["parameters_vs_reference_pct"]) == 0.0
    p = rows[("5", "pamela")]
    assert float(p["parameters_vs_reference_pct"]) == pytest.approx(25.0) and p["parameters_vs_reference"] == "8000"
    assert float(p["train_s_per_iteration"]) == pytest.approx(1.5) and float(p["adapt_ms_per_task"]) == 200.0
    assert rows[("1", "pamela")]["parameters_vs_reference_pct"] == "" and rows[("1", "pamela")]["reference_method"] == ""

    md = md_path.read_text()
    assert md.startswith("# PAMELA complexity\n")
    assert "| Parameters | vs MAML | Paper: vs MAML | Meta-trained parameters | Test score | Meta-train s / iteration | Adaptation ms / task | Test inner steps |" in md
    # the test score beside the parameters: one seed's mean; two seeds' mean with the CI over seeds
    assert "| miniImageNet | 5-way 5-shot | MAML | conv4-64 | 32,000 | reference (pamela@maml) | — | 32,000 | 60.00% ± 0.00 | 0.500 | 80.0 |" in md
    # PAMELA's paper count beside ours (its method card): about 34% more parameters than MAML
    assert "| 40,000 | +25.00% (+8,000) | +34% | 40,000 | 60.00% | 1.500 | 200.0 |" in md
    assert "PAMELA +34% (Rajasegaran et al. 2020" in md and rows[("5", "pamela")]["paper_vs_maml"] == "+34%"
    # the test-time inner steps behind the adaptation time (eval.json `inner_steps`)
    assert "| 40,000 | +25.00% (+8,000) | +34% | 40,000 | 60.00% | 1.500 | 200.0 | 3 | 1,500 | 900 | cpu |" in md
    assert float(rows[("5", "pamela")]["test_mean"]) == pytest.approx(60.0) and rows[("5", "pamela")]["metric"] == "accuracy"
    assert "| 32,001 | <+0.01% (+1) | — |" in md                                    # too small for two decimals
    assert "| 5-way 1-shot | PAMELA | conv4-64 | 40,000 | — |" in md
    assert "Machine-independent" in md and "Machine-dependent" in md and "here: cpu" in md


def test_plain_maml_is_the_reference_and_baselines_have_no_time_per_iteration(tmp_path):
    maml = write_run(tmp_path, "maml", parameters=30_000)
    variant = write_run(tmp_path, "pamela@maml", parameters=30_000)
    pam = write_run(tmp_path, "pamela", parameters=33_000)
    # a baseline: the config keeps its 1000 configured iterations, but train.py ran none (best_iteration 0)
    nn = write_run(tmp_path, "nearest_neighbor", parameters=30_000, wall=12.0, best_iteration=0)
    rows = complexity.build_rows([complexity.load_run_cost(d) for d in (pam, variant, nn, maml)])
    by = {r["method"]: r for r in rows}
    assert by["pamela"]["reference_method"] == "maml" and by["pamela@maml"]["_is_ref"] is False
    assert by["pamela@maml"]["parameters_vs_reference_pct"] == 0.0
    assert by["nearest_neighbor"]["train_iterations"] == "0" and by["nearest_neighbor"]["train_s_per_iteration"] is None
    cells = complexity._md_cells(by["nearest_neighbor"])
    assert cells[5] == "+0.00% (+0)" and cells[6] == "—" and cells[7] == "30,000" and cells[8] == "60.00%"
    assert cells[9] == "—"
    assert complexity._md_cells(by["maml"])[5] == "reference"
    csv_text = complexity.render_csv(rows)
    nn_row = next(r for r in csv.DictReader(csv_text.splitlines()) if r["method"] == "nearest_neighbor")
    assert nn_row["train_s_per_iteration"] == "" and float(nn_row["train_wall_time_s"]) == 12.0


def test_meta_trained_parameters_count_the_colearner_that_inference_drops(tmp_path):
    """MAML + CML infers with MAML's parameters; what it meta-trained includes the co-learner (eval.json
    `meta_trained_parameters`), the count CML's parameter-matched controls are held to. An older eval.json without
    the field: the same as `parameters` for a method without an outer-loss term, unknown (—) for one with it."""
    maml = write_run(tmp_path, "maml", shots=1, parameters=29_541)
    cml = write_run(tmp_path, "maml+cml", shots=1, parameters=29_541)
    ev = json.loads((cml / "eval.json").read_text())
    ev["meta_trained_parameters"] = 48_810
    (cml / "eval.json").write_text(json.dumps(ev))
    old = write_run(tmp_path, "boil+cml", shots=1, parameters=29_541)          # written before the field existed
    ht = write_run(tmp_path, "maml+ht", shots=1, parameters=29_541)            # a sampler: nothing dropped at test
    by = {r["method"]: r for r in complexity.build_rows([complexity.load_run_cost(d) for d in (maml, cml, old, ht)])}
    assert by["maml+cml"]["parameters"] == 29_541 and by["maml+cml"]["meta_trained_parameters"] == 48_810
    assert by["maml"]["meta_trained_parameters"] == 29_541 and by["maml+ht"]["meta_trained_parameters"] == 29_541
    assert by["boil+cml"]["meta_trained_parameters"] is None
    assert complexity._md_cells(by["maml+cml"])[4:8] == ["29,541", "+0.00% (+0)", "—", "48,810"]
    assert complexity._md_cells(by["boil+cml"])[6] == "—"


def test_complexity_cli_and_errors_name_the_file(tmp_path, capsys):
    good = write_run(tmp_path, "maml")
    out = tmp_path / "t" / "x_complexity.md"
    assert cli.main(["complexity", "--name", "x", "--out", str(out), str(good)]) == 0
    assert out.exists() and out.with_suffix(".csv").exists() and "# x: Complexity (parameters, time, memory)" in out.read_text()
    assert cli.main(["complexity", "--name", "y", "--out", str(out), str(good)]) == 1     # name/out mismatch
    assert "does not match --name y" in capsys.readouterr().err

    bad = write_run(tmp_path, "pamela")
    (bad / "config.yaml").unlink()
    with pytest.raises(MetareproError, match="cannot read run config") as exc:
        complexity.make_complexity_table([good, bad], tmp_path / "e_complexity.md", "t")
    assert str(bad / "config.yaml") in str(exc.value)
    assert not (tmp_path / "e_complexity.md").exists() and not (tmp_path / "e_complexity.csv").exists()

    cfg = yaml.safe_load((good / "config.yaml").read_text())
    del cfg["provenance"]["wall_time_s"]
    (bad / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(MetareproError, match=r"missing number 'provenance.wall_time_s'"):
        complexity.load_run_cost(bad)
    (bad / "config.yaml").write_text(yaml.safe_dump({**cfg, "provenance": None}))
    with pytest.raises(MetareproError, match="missing 'provenance'"):
        complexity.load_run_cost(bad)

    ev = json.loads((good / "eval.json").read_text())
    del ev["parameters"]
    (bad / "eval.json").write_text(json.dumps(ev))
    (bad / "config.yaml").write_text((good / "config.yaml").read_text())
    with pytest.raises(MetareproError, match=r"missing number\(s\) \['parameters'\]") as exc:
        complexity.load_run_cost(bad)
    assert str(bad / "eval.json") in str(exc.value)
    (bad / "eval.json").unlink()
    assert cli.main(["complexity", "--name", "z", "--out", str(tmp_path / "z_complexity.md"), str(bad)]) == 1
    assert str(bad / "eval.json") in capsys.readouterr().err


def test_eval_and_config_of_different_runs_are_refused(tmp_path):
    a, b = write_run(tmp_path, "maml"), write_run(tmp_path, "pamela")
    (b / "config.yaml").write_text((a / "config.yaml").read_text())
    with pytest.raises(MetareproError, match=r"describe different runs \(they differ in \['method'\]\)"):
        complexity.load_run_cost(b)


# ----------------------------------------------------------------------------- loss-variance figure

def write_train_log(run_dir: Path, *, inner: bool = True, filled: bool = True, iterations: int = 200,
                    var0: float = 0.5) -> None:
    """train_log.csv as train.py writes it; inner-loss columns filled on validation rows (every 50) only."""
    cols = ["iteration", "meta_loss", "meta_metric", "val_mean", "val_ci95"]
    cols += ["val_inner_loss", "val_inner_loss_var"] if inner else []
    lines = [",".join(cols + ["lr", "elapsed_s"])]
    for it in range(1, iterations + 1):
        val = it % 50 == 0
        cells = [str(it), f"{2.0 / it:.4f}", "50.0", f"{40 + it / 10:.2f}" if val else "", "1.5" if val else ""]
        if inner:
            cells += [f"{1.0 / it:.4f}", f"{var0 / it:.6f}"] if val and filled else ["", ""]
        lines.append(",".join(cells + ["0.001", f"{it * 0.1:.1f}"]))
    (run_dir / "train_log.csv").write_text("\n".join(lines) + "\n")


def test_loss_variance_figure_renders_and_skips_baselines(tmp_path, caplog):
    runs = [write_run(tmp_path, m, shots=k) for m in ("maml", "pamela") for k in (1, 5)]
    for i, d in enumerate(runs):
        write_train_log(d, var0=0.5 * (i + 1))
    base = write_run(tmp_path, "nearest_neighbor", best_iteration=0)
    (base / "train_log.csv").write_text("iteration,meta_loss,meta_metric,val_mean,val_ci95,lr,elapsed_s\n"
                                        "0,,,55.0,1.2,,3.0\n")                          # an older baseline log
    caplog.set_level(logging.INFO, logger="metarepro.report")
    out = tmp_path / "figures" / "pamela_main_loss_variance.png"
    assert cli.main(["figure", "--kind", "loss_variance", "--out", str(out), *map(str, runs), str(base)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert figures.read_png_profile(out) == "default"
    assert any("skipping" in r.message and str(base) in r.message for r in caplog.records)
    assert cli.figure_caption(out.stem).startswith("PAMELA main: variance of the inner-loop loss")

    with pytest.raises(MetareproError, match="at least one meta-trained run"):
        figures.figure_loss_variance([base], tmp_path / "none.png")


@pytest.mark.parametrize("inner, filled, needle", [
    (False, True, r"lacks columns \['val_inner_loss', 'val_inner_loss_var'\]"),
    (True, False, "no filled 'val_inner_loss_var'"),
])
def test_loss_variance_figure_errors_name_the_log(tmp_path, inner, filled, needle):
    ok, bad = write_run(tmp_path, "maml"), write_run(tmp_path, "pamela")
    write_train_log(ok)
    write_train_log(bad, inner=inner, filled=filled)
    with pytest.raises(MetareproError, match=needle) as exc:
        figures.figure_loss_variance([ok, bad], tmp_path / "f.png")
    assert str(bad / "train_log.csv") in str(exc.value) and not (tmp_path / "f.png").exists()


def test_loss_variance_keeps_a_linear_axis_for_zero_variance(tmp_path, monkeypatch):
    d = write_run(tmp_path, "maml")
    write_train_log(d, var0=0.0)
    scales = []
    monkeypatch.setattr(figures, "_save", lambda fig, out, profiles: scales.append(
        [ax.get_yscale() for ax in fig.axes]) or Path(out))
    figures.figure_loss_variance([d], tmp_path / "f.png")
    assert scales == [["linear", "linear"]]
    write_train_log(d, var0=1.0)
    figures.figure_loss_variance([d], tmp_path / "f.png")
    assert scales[-1] == ["log", "linear"]
