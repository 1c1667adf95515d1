"""MNIST, shipped with the course: the four original IDX files in ``data/MNIST/raw/``.

``load_mnist`` returns images as a float tensor ``(N, 1, 28, 28)`` scaled to ``[-1, 1]`` (the range the
diffusion process assumes: pure noise has unit variance around 0) and labels as a long tensor ``(N,)``.
Two readers give the same bytes:

- ``numpy``: the IDX format read directly (always available, what CI uses);
- ``torchvision``: ``torchvision.datasets.MNIST(root="data")`` where torchvision imports (Colab, laptops).
  It wants the decompressed files beside the ``.gz`` ones, so we decompress them once.

If the files are missing we try torchvision's download with a short timeout and otherwise fail with a
message saying what to do: nothing in the course waits on the network.
"""
from __future__ import annotations

import gzip
import hashlib
import shutil
import socket
from pathlib import Path

import numpy as np
import torch

from .. import paths
from ..config import Profile

__all__ = ["load_mnist", "FILES", "to_pixels", "batch_indices", "to_device"]

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
DOWNLOAD_TIMEOUT_S = 5.0


def _read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed IDX file (LeCun et al.'s format: magic, dims, then uint8 data)."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _missing_files(raw: Path) -> list[str]:
    return [f for pair in FILES.values() for f in pair if not (raw / f).is_file()]


def verify_checksums(raw: Path | None = None) -> None:
    """Check the ``.gz`` files against ``SHA256SUMS``; a file that differs (e.g. fetched again by torchvision,
    which compresses differently) is checked by its decompressed bytes against ``SHA256SUMS.uncompressed``.
    Raises ``ValueError`` naming a truncated or corrupted file and how to restore it."""
    raw = raw or paths.mnist_dir()
    sums = raw / "SHA256SUMS"
    unpacked = raw / "SHA256SUMS.uncompressed"
    plain = dict(reversed(line.split()) for line in unpacked.read_text().splitlines()) if unpacked.is_file() else {}
    for line in sums.read_text().splitlines():
        digest, name = line.split()
        got = hashlib.sha256((raw / name).read_bytes()).hexdigest()
        if got == digest:
            continue
        expected = plain.get(name[:-3]) if name.endswith(".gz") else None
        try:
            with gzip.open(raw / name, "rb") as f:
                same = expected is not None and hashlib.sha256(f.read()).hexdigest() == expected
        except (OSError, EOFError):                   # truncated, or not gzip at all
            same = False
        if not same:
            raise ValueError(f"{raw / name} is truncated or corrupted (sha256 {got[:12]}..., expected {digest[:12]}...); "
                             f"restore it with `git checkout -- data/MNIST` (or delete it to download it again).")


_VERIFIED: dict[Path, tuple] = {}


def _verify_once(raw: Path) -> None:
    """``verify_checksums`` on the first load of a process, and again whenever a file changed on disk
    (size or modification time), so a truncated or altered download is named instead of failing deep in
    the reader (about 50 ms for the 11 MB)."""
    files = sorted(raw.glob("*.gz"))
    stamp = tuple((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if _VERIFIED.get(raw) != stamp and (raw / "SHA256SUMS").is_file():
        verify_checksums(raw)
        _VERIFIED[raw] = stamp


def _try_torchvision_download(raw: Path) -> bool:
    """torchvision's own download, with a short socket timeout. False if unavailable or offline."""
    try:
        from torchvision.datasets import MNIST
    except Exception:
        return False
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        MNIST(root=str(raw.parent.parent), train=True, download=True)
        MNIST(root=str(raw.parent.parent), train=False, download=True)
        return not _missing_files(raw)
    except Exception:
        return False
    finally:
        socket.setdefaulttimeout(old)


def _torchvision_arrays(raw: Path, split: str):
    """Read through torchvision where it imports; None where it does not (e.g. a CUDA build on a CPU torch)."""
    try:
        from torchvision.datasets import MNIST
    except Exception:
        return None
    for gz in (*FILES["train"], *FILES["test"]):   # torchvision reads the decompressed files (same bytes),
        out = raw / gz[:-3]                          # and wants all four before it reads either split
        if not out.is_file() or out.stat().st_mtime_ns < (raw / gz).stat().st_mtime_ns:
            with gzip.open(raw / gz, "rb") as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    ds = MNIST(root=str(raw.parent.parent), train=(split == "train"), download=False)
    return ds.data.numpy(), ds.targets.numpy()


def to_pixels(x: torch.Tensor) -> torch.Tensor:
    """Map images from ``[-1, 1]`` back to ``[0, 1]`` for display (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


def load_mnist(split: str = "train", n: int | None = None, profile: Profile | None = None,
               device: torch.device | str | None = None, source: str = "auto", quiet: bool = False,
               value_range: tuple[float, float] = (-1.0, 1.0)) -> tuple[torch.Tensor, torch.Tensor]:
    """Load MNIST as tensors.

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000).
        n: how many images to keep (the first ``n``); default: the profile's ``n_train`` / ``n_test``.
        profile: decides ``n`` when ``n`` is None (None: all images).
        device: where the tensors live. On a GPU the whole set fits on the device and batches are drawn
            by index (``batch_indices``), with no DataLoader.
        source: ``"auto"`` (torchvision where it imports, else numpy), ``"numpy"`` or ``"torchvision"``.
        quiet: do not print the one-line report of source and size.
        value_range: ``(lo, hi)``, the values of a black and of a white pixel. Keep the default
            ``(-1, 1)``: the diffusion process assumes it. The option exists to reproduce the classic
            "data in [0, 1]" bug in appendix A1 (``value_range=(0, 1)``, what ``ToTensor()`` gives).

    Returns:
        images: ``(n, 1, 28, 28)`` float32 in ``value_range`` (default ``[-1, 1]``); labels: ``(n,)`` int64.
    """
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if source not in ("auto", "numpy", "torchvision"):
        raise ValueError(f"source must be 'auto', 'numpy' or 'torchvision', got {source!r}")
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")
    raw = paths.mnist_dir()
    if _missing_files(raw) and not _try_torchvision_download(raw):
        raise FileNotFoundError(
            f"MNIST files are missing from {raw} ({', '.join(_missing_files(raw))}) and could not be "
            f"downloaded (offline, or torchvision unavailable). They ship with the course: run "
            f"`git checkout -- data/MNIST` in the course folder (or re-clone it), or set COURSE_ROOT to "
            f"a course checkout that has them.")
    _verify_once(raw)
    arrays, used = None, "numpy IDX reader"
    if source in ("auto", "torchvision"):
        arrays = _torchvision_arrays(raw, split)
        if arrays is None and source == "torchvision":
            raise ImportError("source='torchvision' but torchvision does not import here; use source='numpy'.")
        used = "torchvision.datasets.MNIST" if arrays is not None else used
    if arrays is None:
        img_f, lab_f = FILES[split]
        arrays = _read_idx(raw / img_f), _read_idx(raw / lab_f)
    images, labels = arrays
    if n is None and profile is not None:
        n = profile.n_train if split == "train" else profile.n_test
    total = len(labels)
    if n is not None:
        if not 0 < n <= total:
            raise ValueError(f"n must be in 1..{total} for the {split} split, got {n}")
        images, labels = images[:n], labels[:n]
    x = torch.from_numpy(np.array(images)).float()
    if (lo, hi) == (-1.0, 1.0):
        x = x.div_(127.5).sub_(1.0).unsqueeze(1)                  # uint8 0..255 -> [-1, 1]
    else:                                                         # appendix A1's bug (e.g. [0, 1])
        x = x.div_(255.0).mul_(hi - lo).add_(lo).unsqueeze(1)
    y = torch.from_numpy(np.array(labels)).long()
    if device is not None:
        x, y = x.to(device), y.to(device)
    if not quiet:
        print(f"MNIST {split}: {len(y):,} of {total:,} images from {raw.relative_to(paths.root())} "
              f"via {used}" + (f", on {torch.device(device).type}" if device is not None else "")
              + (f", values in [{lo:g}, {hi:g}]" if (lo, hi) != (-1.0, 1.0) else ""))
    return x, y


def batch_indices(n: int, batch_size: int, generator: torch.Generator, device: torch.device | str = "cpu"
                  ) -> torch.Tensor:
    """Indices of one random batch, drawn with ``generator`` (so a saved generator state resumes exactly).

    Sampling is with replacement across batches (each batch has distinct indices when batch_size <= n).
    """
    idx = torch.randperm(n, generator=generator, device=generator.device)[:batch_size] if batch_size <= n else \
        torch.randint(n, (batch_size,), generator=generator, device=generator.device)
    return idx.to(device)


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``t`` on ``device``. From the host to a GPU the copy goes through pinned memory with
    ``non_blocking=True``, so the host does not wait for it (a plain ``.to("cuda")`` of a host tensor does)."""
    device = torch.device(device)
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
