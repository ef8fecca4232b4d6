"""The report stage's inputs, read and checked: eval.json files, config/paper_results.csv, run configs.

Torch-free (reports run in the Snakemake environment); every problem raises MetareproError naming the file.
"""
from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .. import yaml_io
from ..config import MethodName
from ..dataset_cards import STANDARD_IMAGE_SIZE
from ..formats import EVAL_REQUIRED, EVAL_RUN_REQUIRED
from ..utils import MetareproError

PAPER_COLUMNS = ["paper", "method", "dataset", "backbone", "ways", "shots", "metric", "value", "ci95", "source"]
# Optional columns after those: the setup a published number was measured in, beyond backbone and setting. Empty
# means the dataset's standard (the image size of STANDARD_IMAGE_SIZE, the full dataset, training at the tested
# ways and shots). A published number is compared with our run only when the whole setup matches (report/tables).
PAPER_SETUP_COLUMNS = ["image_size", "variant", "train_ways", "train_shots"]
RUN_REQUIRED = EVAL_RUN_REQUIRED


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def load_eval(path: str | os.PathLike) -> dict:
    """Read and check one eval.json; any problem raises MetareproError naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MetareproError(f"cannot read evaluation file {path}: {exc.strerror or exc}") from exc
    try:
        ev = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetareproError(f"evaluation file {path} is not valid JSON: {exc}") from exc
    problems = []
    if not isinstance(ev, dict):
        raise MetareproError(f"evaluation file {path} is malformed: expected a JSON object, got {type(ev).__name__}")
    problems += [f"missing key '{k}'" for k in EVAL_REQUIRED if k not in ev]
    run = ev.get("run")
    if "run" in ev and not isinstance(run, dict):
        problems.append("'run' is not an object")
    elif isinstance(run, dict):
        problems += [f"missing key 'run.{k}'" for k in RUN_REQUIRED if k not in run]
    if "metric" in ev and ev["metric"] not in ("accuracy", "mse"):
        problems.append(f"'metric' = {ev['metric']!r}; allowed: accuracy, mse")
    for k in ("mean", "ci95"):
        if k in ev and not _is_number(ev[k]):
            problems.append(f"'{k}' = {ev[k]!r} is not a number")
    pe = ev.get("per_episode")
    if pe is not None and not (isinstance(pe, list) and all(_is_number(v) for v in pe)):
        problems.append("'per_episode' is not a list of numbers")
    bs = ev.get("by_step")
    if bs is not None:
        if not isinstance(bs, dict):
            problems.append("'by_step' is not an object")
        else:
            for step, v in bs.items():
                if not (str(step).lstrip("-").isdigit() and isinstance(v, dict) and _is_number(v.get("mean"))):
                    problems.append(f"'by_step.{step}' must map an integer step to {{mean, ci95}}")
                    break
    if problems:
        raise MetareproError(f"evaluation file {path} is malformed: " + "; ".join(problems))
    ev = dict(ev)
    ev["_path"] = str(path)
    ts = ev.get("test_shots")
    if _is_number(ts) and int(ts) != int(ev["run"]["shots"]):
        # tested at other shots than trained: a row of its own at the tested shots, labelled by its training shots
        run = ev["run"]
        method = MethodName.read(run["method"]).with_train_shots(int(run["shots"]))
        ev["run"] = {**run, "shots": int(ts), "method": str(method)}
    return ev


@dataclass(frozen=True)
class PaperRow:
    paper: str
    method: str
    dataset: str
    backbone: str
    ways: int | None
    shots: int
    metric: str
    value: float
    value_text: str     # as printed in the paper / csv (keeps its precision, e.g. "48.70")
    ci95: float | None
    ci95_text: str
    source: str
    image_size: int | None = None     # None: the dataset's standard size (STANDARD_IMAGE_SIZE)
    variant: str = "full"             # "full" dataset, or a named subset
    train_ways: int | None = None     # None: meta-trained at the tested ways
    train_shots: int | None = None    # None: meta-trained at the tested shots

    @property
    def size(self) -> int | None:
        return self.image_size if self.image_size is not None else STANDARD_IMAGE_SIZE.get(self.dataset)


def load_paper_results(path: str | os.PathLike) -> list[PaperRow]:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise MetareproError(f"cannot read paper results {path}: {exc.strerror or exc}") from exc
    reader = csv.DictReader(io.StringIO(text))
    header = [f.strip() for f in reader.fieldnames or []]
    if header not in (PAPER_COLUMNS, PAPER_COLUMNS + PAPER_SETUP_COLUMNS):
        raise MetareproError(f"paper results {path}: header must be {','.join(PAPER_COLUMNS)} (optionally followed "
                             f"by {','.join(PAPER_SETUP_COLUMNS)}), got {','.join(reader.fieldnames or [])}")

    def opt_int(r: dict, k: str) -> int | None:
        v = (r.get(k) or "").strip()
        return int(v) if v else None
    rows = []
    for lineno, r in enumerate(reader, start=2):
        try:
            rows.append(PaperRow(
                paper=r["paper"].strip(), method=r["method"].strip(), dataset=r["dataset"].strip(),
                backbone=r["backbone"].strip(), ways=int(r["ways"]) if r["ways"].strip() else None,
                shots=int(r["shots"]), metric=r["metric"].strip(), value=float(r["value"]),
                value_text=r["value"].strip(), ci95=float(r["ci95"]) if r["ci95"].strip() else None,
                ci95_text=r["ci95"].strip(), source=r["source"].strip(), image_size=opt_int(r, "image_size"),
                variant=(r.get("variant") or "").strip() or "full", train_ways=opt_int(r, "train_ways"),
                train_shots=opt_int(r, "train_shots")))
        except (TypeError, ValueError, AttributeError) as exc:
            raise MetareproError(f"paper results {path}, line {lineno}: cannot parse {dict(r)}: {exc}") from exc
    return rows


def read_run_config(path: str | os.PathLike) -> Any:
    """A run's config.yaml, parsed; unreadable or invalid YAML raises MetareproError naming the file."""
    path = Path(path)
    try:
        return yaml_io.safe_load(path.read_text())
    except OSError as exc:
        raise MetareproError(f"cannot read run config {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise MetareproError(f"run config {path} is not valid YAML: {exc}") from exc
