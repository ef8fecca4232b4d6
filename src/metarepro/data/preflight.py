"""Before the first job: does every dataset that a run must download have a source? One message if not.

The workflow calls `check_sources` when it starts (the Snakefile's `onstart:`, after Snakemake has planned the jobs
and before it runs any), with the datasets whose download job is planned. A dataset already downloaded
(<raw_dir>/<dataset>/MANIFEST.json) or prepared (<data_dir>/<dataset>/meta.json) is skipped. For each of the
others it follows `download.fetch`'s order of sources and asks only what can be known without fetching: the folder
named by METAREPRO_<DATASET>_DIR exists; the mirror, where it is used, exists and holds the dataset's folder; a URL
that must be downloaded (the user's METAREPRO_<DATASET>_URL, or the official ones) answers within a few seconds.
The download jobs still verify every checksum; this only turns "fails an hour in, after other jobs" into "stops
before the first job, saying for every dataset what to provide". Torch-free: Snakemake imports it.
"""
from __future__ import annotations

import concurrent.futures
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Callable, Iterable

from ..utils import MetareproError
from .download import MANIFEST, _how_to, resolve_mirror, source

PROBE_TIMEOUT_S = 5.0     # per host; the hosts are probed in parallel, so the check waits at most about this long


def probe(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None if `url`'s host answers an HTTP HEAD request (any status: the network is there), else why not.

    Uses urllib like the downloads, so proxies set in the environment (https_proxy) apply."""
    req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "metarepro"})
    try:
        with urllib.request.urlopen(req, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None                                   # 403 / 405 / 404 to a HEAD: the host is reachable
    except (urllib.error.URLError, OSError, ValueError) as e:
        return str(getattr(e, "reason", e))


def _host(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/"


def _how(dataset: str) -> str:
    """The dataset's how-to, with the generic routes (a URL of the archive, a mirror) its text leaves out."""
    src, env, text = source(dataset), f"METAREPRO_{dataset.upper()}_", _how_to(dataset)
    if src.user_archive is not None and env + "URL" not in text:
        text += f"; or {env}URL=<a URL of {src.user_archive.name}> (optionally {env}SHA256=<its sha256>)"
    if src.mirror is not None and "METAREPRO_MIRROR" not in text:
        text += f"; or a mirror holding {src.mirror.folder}/ (data.mirror in the config, or METAREPRO_MIRROR)"
    return text


def _problem(dataset: str, mirror: Path | None, mirror_error: str | None,
             unreachable: Callable[[str], str | None]) -> str | None:
    """Why `dataset` has no usable source (None: it has one), in fetch's order of sources."""
    src, env = source(dataset), f"METAREPRO_{dataset.upper()}_"
    if mirror_error:                                  # the download step resolves the mirror first, for any source
        return f"the mirror is unusable (above); then: {_how(dataset)}"
    if os.environ.get(env + "DIR"):
        folder = Path(os.environ[env + "DIR"]).expanduser()
        return None if folder.is_dir() else f"{env}DIR={folder} is not a directory"
    if os.environ.get(env + "URL"):
        why = unreachable(os.environ[env + "URL"])
        return None if why is None else f"{env}URL={os.environ[env + 'URL']} cannot be reached ({why})"
    if mirror is not None and src.mirror is not None:
        if (mirror / src.mirror.folder).is_dir():
            return None
        return f"the mirror {mirror} has no {src.mirror.folder}/; {_how(dataset)}"
    urls = [rf.url for rf in src.official]
    if urls and all(urls):
        down = sorted({f"{_host(u)} ({why})" for u in urls if (why := unreachable(u)) is not None})
        return None if not down else f"cannot reach {', '.join(down)}: {_how(dataset)}"
    return _how(dataset)


def check_sources(datasets: Iterable[str], mirror: str | None, raw_dir: str | Path, data_dir: str | Path,
                  probe_url: Callable[[str], str | None] | None = None) -> str | None:
    """None when every dataset of `datasets` that is neither downloaded nor prepared has a source; else one
    message naming each one that has none and what to provide for it.

    `mirror` is the configured mirror (data.mirror; METAREPRO_MIRROR overrides it, as in download.resolve_mirror).
    `probe_url` (default `probe`) is asked once per host, all hosts at once."""
    probe_url = probe_url or probe
    raw_dir, data_dir = Path(raw_dir), Path(data_dir)
    todo = sorted({d for d in datasets if not (raw_dir / d / MANIFEST).is_file()
                   and not (data_dir / d / "meta.json").is_file()})
    if not todo:
        return None
    mirror_path, mirror_error = None, None
    try:
        mirror_path = resolve_mirror(mirror)
    except MetareproError as e:
        mirror_error = str(e)

    # every URL a dataset would be downloaded from (none where a folder or the mirror serves it), probed once per
    # host and in parallel
    urls = set()
    for d in todo:
        env = f"METAREPRO_{d.upper()}_"
        if mirror_error or os.environ.get(env + "DIR"):
            continue
        if os.environ.get(env + "URL"):
            urls.add(os.environ[env + "URL"])
        elif mirror_path is None or source(d).mirror is None:
            urls |= {rf.url for rf in source(d).official if rf.url}
    hosts = {_host(u): u for u in sorted(urls)}
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, len(hosts)))) as pool:
        answers = dict(zip(hosts, pool.map(probe_url, hosts.values())))

    problems = {d: p for d in todo
                if (p := _problem(d, mirror_path, mirror_error, lambda u: answers.get(_host(u)))) is not None}
    if not problems:
        return None
    lines = [f"no source for the raw data of {len(problems)} dataset(s) that this run must download "
             f"({', '.join(problems)}), so no job was started. Provide one for each, then run the same command "
             f"again:"]
    if mirror_error:
        lines.append(f"- mirror: {mirror_error} (METAREPRO_MIRROR=none switches it off)")
    lines += [f"- {d}: {p}" for d, p in problems.items()]
    lines.append(f"(A dataset needs no source once {raw_dir}/<dataset>/{MANIFEST} or {data_dir}/<dataset>/meta.json "
                 f"exists; `snakemake -n` plans without checking.)")
    return "\n".join(lines)


__all__ = ["check_sources", "probe", "PROBE_TIMEOUT_S"]
