"""Image decoding, resizing and buffers for the prepare modules (PIL + numpy only, no torchvision)."""
from __future__ import annotations

import contextlib
import io
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np
from PIL import Image

from ..utils import MetareproError

# PIL filters by name. LANCZOS is the default everywhere: Ravi & Larochelle's miniImageNet
# script and Finn et al.'s Omniglot script both call Image.resize(..., LANCZOS).
RESAMPLE: dict[str, Image.Resampling] = {
    "lanczos": Image.Resampling.LANCZOS,
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "box": Image.Resampling.BOX,
    "nearest": Image.Resampling.NEAREST,
}

# Memory above which large datasets (tieredImageNet: ~16 GB at 84x84) are assembled in a
# memory-mapped scratch file instead of RAM.
MEMMAP_BYTES = 2 << 30


def open_image(src: bytes | bytearray | memoryview | np.ndarray | str | Path | IO[bytes], mode: str,
               name: str | Path) -> Image.Image:
    """Decode an image (file path, file object or encoded bytes) and convert it to `mode` ("L", "RGB")."""
    if isinstance(src, np.ndarray):
        src = src.tobytes()
    if isinstance(src, (bytes, bytearray, memoryview)):
        src = io.BytesIO(bytes(src))
    try:
        img = Image.open(src)
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise MetareproError(f"{name}: not a readable image ({e})") from e
    # Mode "1" (Omniglot's PNGs) becomes 0/255 "L"; PIL would otherwise silently resize mode "1"
    # with NEAREST whatever filter is asked for.
    return img if img.mode == mode else img.convert(mode)


def resize_square(img: Image.Image, size: int, resample: str = "lanczos") -> Image.Image:
    """Resize to size x size (aspect ratio not kept, as in the standard few-shot pipelines); no-op if already so."""
    if img.size == (size, size):
        return img
    if img.mode in ("1", "P"):
        img = img.convert("L" if img.mode == "1" else "RGB")
    return img.resize((size, size), resample=RESAMPLE[resample])


def to_hwc(img: Image.Image) -> np.ndarray:
    a = np.asarray(img, dtype=np.uint8)
    return a[..., None] if a.ndim == 2 else a             # (H, W) -> (H, W, 1)


def load_image(src: Any, *, mode: str, size: int, resample: str = "lanczos",
               name: str | Path = "image") -> np.ndarray:
    """Decode + convert + resize -> uint8 (size, size, C)."""
    return to_hwc(resize_square(open_image(src, mode, name), size, resample))


def resize_array(arr: np.ndarray, size: int, resample: str = "lanczos") -> np.ndarray:
    """Resize one uint8 (H, W) or (H, W, 3) array to (size, size[, 3])."""
    if arr.shape[:2] == (size, size):
        return arr
    return np.asarray(Image.fromarray(arr).resize((size, size), resample=RESAMPLE[resample]))


@contextlib.contextmanager
def scratch_beside(path: Path) -> Iterator[Path]:
    """A temporary folder next to `path` (same filesystem), removed afterwards whatever happens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".scratch", dir=path.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def allocate(n: int, size: int, channels: int, scratch: Path | None = None, name: str = "images") -> np.ndarray:
    """A uint8 (n, size, size, channels) buffer: in RAM, or memory-mapped in `scratch` when large."""
    shape = (n, size, size, channels)
    if scratch is not None and n * size * size * channels > MEMMAP_BYTES:
        return np.lib.format.open_memmap(scratch / f"{name}.npy", mode="w+", dtype=np.uint8, shape=shape)
    return np.empty(shape, dtype=np.uint8)


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only (the official CIFAR / tieredImageNet pickles)."""
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
        ("copy_reg", "_reconstructor"), ("copyreg", "_reconstructor"),
        ("__builtin__", "object"), ("builtins", "object"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")
        import warnings
        with warnings.catch_warnings():                   # numpy.core is a deprecated alias in numpy 2
            warnings.simplefilter("ignore", DeprecationWarning)
            return super().find_class(module, name)


def load_pickle(f: IO[bytes], name: str | Path) -> Any:
    """Load a (Python 2 or 3) data pickle safely; latin1 so Python 2 str keys become str."""
    try:
        return _SafeUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise MetareproError(f"{name}: not a readable data pickle ({e})") from e


def key(d: dict, k: str) -> Any:
    """d[k] for pickles written with str or bytes keys."""
    if k in d:
        return d[k]
    if k.encode() in d:
        return d[k.encode()]
    raise KeyError(k)


def as_str(x: Any) -> str:
    return x.decode("latin1") if isinstance(x, (bytes, bytearray)) else str(x)
