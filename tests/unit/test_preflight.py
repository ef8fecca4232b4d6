"""The check before the first job: every planned download has a source, else one message naming each dataset."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from metarepro.data import preflight
from metarepro.data.preflight import check_sources

IMAGES = ["cifarfs", "cub", "fc100", "miniimagenet", "omniglot", "tieredimagenet"]


@pytest.fixture(autouse=True)
def _no_user_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in [v for v in os.environ if v.startswith("METAREPRO_")]:
        monkeypatch.delenv(var)


def offline(url: str) -> str:
    return "Name or service not known"


def test_mirror_off_and_no_network_names_every_dataset(tmp_path: Path) -> None:
    asked = []

    def probe(url: str) -> str:
        asked.append(url)
        return offline(url)
    msg = check_sources(IMAGES, None, tmp_path / "raw", tmp_path / "data", probe)
    assert msg is not None and msg.count("\n- ") == len(IMAGES)
    assert f"{len(IMAGES)} dataset(s)" in msg and "no job was started" in msg
    for d in IMAGES:
        assert f"\n- {d}: " in msg and f"METAREPRO_{d.upper()}_DIR" in msg
    assert "METAREPRO_MINIIMAGENET_URL" in msg and "METAREPRO_CIFARFS_URL" in msg and "zenodo.org" in msg
    assert "cannot reach https://github.com/" in msg
    # one probe per host, whatever the number of files and datasets behind it
    assert len(asked) == len({u.split("/")[2] for u in asked}) == 4


def test_sources_that_exist_pass(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    online = lambda url: None                               # noqa: E731
    assert check_sources(["omniglot", "cifarfs", "miniimagenet", "cub"], "none", tmp_path, tmp_path, online) is None
    # downloaded or prepared datasets need no source; a user folder is one
    (tmp_path / "raw" / "omniglot").mkdir(parents=True)
    (tmp_path / "raw" / "omniglot" / "MANIFEST.json").write_text("{}")
    (tmp_path / "data" / "cifarfs").mkdir(parents=True)
    (tmp_path / "data" / "cifarfs" / "meta.json").write_text("{}")
    monkeypatch.setenv("METAREPRO_CUB_DIR", str(tmp_path))
    msg = check_sources(["omniglot", "cifarfs", "cub", "tieredimagenet"], None, tmp_path / "raw", tmp_path / "data",
                        offline)
    assert msg is not None and msg.count("\n- ") == 1 and "\n- tieredimagenet: " in msg
    monkeypatch.setenv("METAREPRO_TIEREDIMAGENET_DIR", str(tmp_path / "nowhere"))
    assert "nowhere is not a directory" in check_sources(["tieredimagenet"], None, tmp_path, tmp_path, offline)


def test_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mirror" / "omniglot").mkdir(parents=True)
    asked = []
    assert check_sources(["omniglot"], str(tmp_path / "mirror"), tmp_path, tmp_path, asked.append) is None
    assert asked == []                                        # what the mirror serves needs no network
    # the mirror serves what it carries, without network; CUB (not in it) still needs its official host
    assert check_sources(["omniglot"], str(tmp_path / "mirror"), tmp_path, tmp_path, offline) is None
    msg = check_sources(["omniglot", "miniimagenet", "cub"], str(tmp_path / "mirror"), tmp_path, tmp_path, offline)
    assert "\n- miniimagenet: the mirror" in msg and "has no miniimagenet-subset60/" in msg
    assert "\n- cub: cannot reach https://data.caltech.edu/" in msg and "omniglot:" not in msg
    # a configured mirror that is not there (a fresh clone without ../shared/datasets): said once, on top
    msg = check_sources(["omniglot"], str(tmp_path / "absent"), tmp_path, tmp_path, offline)
    assert "\n- mirror: " in msg and "does not exist" in msg and "METAREPRO_MIRROR=none" in msg
    monkeypatch.setenv("METAREPRO_MIRROR", "none")            # the switch-off wins over the config
    assert check_sources(["omniglot"], str(tmp_path / "absent"), tmp_path, tmp_path, lambda u: None) is None


def test_probe_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")   # a closed port: refused at once
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert preflight.probe("https://zenodo.org/record/7978538", timeout=2) is not None
