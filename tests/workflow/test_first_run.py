"""A first run without any source (mirror off, no network) stops before the first job with one message."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_no_source_stops_before_any_job(tmp_path: Path) -> None:
    for name in ("Snakefile", "workflow", "config", "src", "profiles"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    (tmp_path / "tests" / "workflow").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "workflow" / "config.yaml", tmp_path / "tests" / "workflow")
    env = {k: v for k, v in os.environ.items() if not k.startswith("METAREPRO_") and k.lower() != "no_proxy"}
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}", METAREPRO_MIRROR="none",
               https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")   # no network: refused at once
    proc = subprocess.run([str(BIN / "snakemake"), "--cores", "1", "--configfile", "tests/workflow/config.yaml"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert text.count("metarepro: no source for the raw data") == 1, text
    assert "\n- cifarfs: " in text and "\n- omniglot: " in text and "METAREPRO_OMNIGLOT_DIR" in text
    assert "rule download" not in text and "localrule download" not in text     # no job was started
    assert not any((tmp_path / d).exists() for d in ("results", "logs", "resources", "data"))
