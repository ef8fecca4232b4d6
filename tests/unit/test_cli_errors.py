"""Bad input at every entry point: each `python -m metarepro` verb with missing or wrong arguments gives one clear
error line that names the key, file or value, exits non-zero, prints no traceback and writes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = {"experiment": "x", "dataset": "sinusoid", "dataset_args": {}, "data_dir": "data/sinusoid", "backbone": "mlp",
       "backbone_args": {}, "method": "maml", "method_args": {}, "ways": 1, "shots": 5, "seed": 0,
       "train": {"iterations": 1}, "evaluation": {"episodes": 10, "queries": 5, "seed": 0}}


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metarepro", *args], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO / "src")}, stdin=subprocess.DEVNULL, timeout=120)


CASES = {
    "download, unknown dataset": (["download", "--dataset", "imagenet", "--out", "raw"], "unknown dataset 'imagenet'"),
    "download, missing --out": (["download", "--dataset", "omniglot"], "--out"),
    "download, mirror folder missing": (["download", "--dataset", "omniglot", "--mirror", "/nowhere", "--out", "raw"],
                                        "/nowhere"),
    "prepare, options not JSON": (["prepare", "--dataset", "cifarfs", "--options", "{bad", "--raw", "r", "--out", "o"],
                                  "--options is not valid JSON"),
    "prepare, raw folder missing": (["prepare", "--dataset", "cifarfs", "--raw", "raw/cifarfs", "--out", "o"],
                                    "raw/cifarfs"),
    "prepare, generated dataset": (["prepare", "--dataset", "sinusoid", "--raw", "r", "--out", "o"],
                                   "generated on the fly"),
    "pretrain, neither --run nor --dataset": (["pretrain"], "--dataset, --backbone"),
    "pretrain, --run missing keys": (["pretrain", "--run", "{}"], "pretrain config is missing keys"),
    "metatrain, --run not JSON": (["metatrain", "--run", "[1, 2"], "--run is not valid JSON"),
    "metatrain, unknown key": (["metatrain", "--run", json.dumps({**RUN, "lr": 1})], "unknown run config keys ['lr']"),
    "metatrain, unknown experiment": (["metatrain", "--config", "config.yaml", "--experiment", "e", "--method", "maml",
                                       "--shots", "1"], "config.yaml not found"),
    "metatrain, negative --gpus": (["metatrain", "--run", json.dumps(RUN), "--gpus", "-1"], "--gpus must be >= 0"),
    "evaluate, run folder without model": (["evaluate", "--run-dir", "runs/a"], "runs/a/model.pt not found"),
    "evaluate, target without data": (["evaluate", "--run-dir", "runs/a", "--target", "cifarfs"], "--target-data"),
    "evaluate, data without target": (["evaluate", "--run-dir", "runs/a", "--target-data", "d"], "give --target"),
    "report table, eval file missing": (["report", "table", "--name", "t", "--out", "t.md", "missing/eval.json"],
                                        "missing/eval.json"),
    "report figure, unknown kind": (["report", "figure", "--kind", "pie", "--out", "f.png", "x"], "pie"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_one_clear_error(tmp_path, case):
    args, needle = CASES[case]
    out = cli(tmp_path, *args)
    assert out.returncode != 0, out.stdout
    assert needle in out.stderr, out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing is written"


def test_malformed_paper_results_row_is_named(tmp_path):
    from metarepro.report.tables import PAPER_COLUMNS, load_paper_results
    from metarepro.utils import MetareproError
    bad = tmp_path / "paper_results.csv"
    bad.write_text(",".join(PAPER_COLUMNS) + "\nFinn et al. 2017,MAML,omniglot,conv4,5,1,accuracy,high,,Table 1\n")
    with pytest.raises(MetareproError, match=r"paper_results.csv.*(line|row) 2.*value.*high"):
        load_paper_results(bad)


def test_dataset_folder_with_a_missing_split_file_is_named(tmp_path):
    import numpy as np

    from metarepro.data.store import load_split, write_dataset
    from metarepro.utils import MetareproError
    img = np.zeros((2, 4, 4, 1), dtype=np.uint8)
    d = write_dataset(tmp_path / "d", "toy", {s: (img, np.array([0, 1]), [f"{s}0", f"{s}1"])
                                              for s in ("train", "val", "test")}, {}, "test")
    (d / "val.npz").unlink()
    with pytest.raises(MetareproError, match=r"val.npz not found \(split 'val'"):
        load_split(d, "val")
