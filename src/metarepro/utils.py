"""Small shared helpers: atomic writes, seeding, provenance, resource usage."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
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
    """Intra-op threads of this job (one under strict numerics: reductions then split the same way everywhere)."""
    import torch

    from .numerics import strict_requested
    torch.set_num_threads(1 if strict_requested() else max(1, int(n)))
    with contextlib.suppress(RuntimeError):  # may only be set once per process
        torch.set_num_interop_threads(1)


def resolve_device(name: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'. 'cuda' (what a job that was given a GPU asks for) is
    checked at job start: a CPU-only torch or no visible device fails loudly instead of training on the CPU."""
    import torch

    if name not in ("auto", "cpu", "cuda"):
        raise MetareproError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if torch.version.cuda is None:
            raise MetareproError(f"--device cuda: this torch ({torch.__version__}) is a CPU-only build; install a "
                                 "CUDA build (environment.cuda.yml, or pip's CUDA wheel index) on GPU nodes")
        if not torch.cuda.is_available():
            raise MetareproError(f"--device cuda: torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA "
                                 f"device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')!r}); "
                                 "was the job given a GPU?")
    return name


def rng_state(device: str) -> dict:
    """The RNG states a resumed run must restore to continue exactly: torch's CPU generator, and on a GPU the
    CUDA generators of every device."""
    import torch

    state = {"cpu": torch.get_rng_state()}
    if device == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict, device: str) -> None:
    import torch

    torch.set_rng_state(state["cpu"].cpu())
    if device == "cuda":
        if "cuda" not in state:
            raise MetareproError("the resume checkpoint was written on the CPU and holds no CUDA RNG state; "
                                 "resume it on the CPU (--device cpu) or delete it to restart on the GPU")
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def set_determinism(on: bool) -> None:
    """With `on`, every torch op takes its deterministic implementation (and errors where none exists), so a
    GPU run repeats bit for bit; costs speed on GPUs (cuDNN's fastest kernels are non-deterministic), nothing
    measurable on CPU. CUBLAS_WORKSPACE_CONFIG must be set before CUDA initialises."""
    import torch

    if on:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # torch.use_deterministic_algorithms sets this same flag, but first imports torch._inductor (and dynamo) to set
    # Inductor's own switch: 1.2 s of every strict job's start-up here, for a compiler this project never runs.
    # Inductor's switch is set too when something imported Inductor already.
    inductor = sys.modules.get("torch._inductor.config")
    if inductor is not None:
        inductor.deterministic = bool(on)
    setter = getattr(torch._C, "_set_deterministic_algorithms", None)
    if setter is None:    # another torch: the public call
        torch.use_deterministic_algorithms(bool(on))
    else:
        setter(bool(on))
    torch.backends.cudnn.deterministic = bool(on)
    torch.backends.cudnn.benchmark = False
