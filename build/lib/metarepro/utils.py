"""Small shared helpers: atomic writes, seeding, provenance, resource usage."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml


class MetareproError(RuntimeError):
    """An error caused by user input (config, data files); its message names the culprit."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories, so no half-written output is ever left at `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / ("out" + suffix)
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_yaml_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, yaml.safe_dump(obj, sort_keys=False))


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_hash(*parts: Any) -> int:
    """A process-independent 63-bit hash (Python's hash() is salted per process)."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        rev = out.stdout.strip()
        if out.returncode == 0 and rev:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                   text=True, timeout=5, cwd=Path(__file__).resolve().parent).stdout.strip()
            return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown"


def peak_memory_mb() -> float:
    """Peak resident set size of this process in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(max(1, int(n)))
    with contextlib.suppress(RuntimeError):  # may only be set once per process
        torch.set_num_interop_threads(1)


def resolve_device(name: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise MetareproError("--device cuda was requested but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise MetareproError(f"--device must be auto, cpu or cuda, got {name!r}")
    return name
