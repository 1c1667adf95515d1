"""Where things live. The one module that knows the repository root, ``data/``, the user's checkpoints and
the shipped reference weights. Nothing depends on the current directory: nbval runs notebooks from
``lessons/``, Colab from ``/content``, the command line from anywhere.

Lookup order for a model called ``name`` (``"denoiser"``, ``"class"``, ``"clip"``, ...):

1. an explicit path, if one is given;
2. the user's trained checkpoint: ``$COURSE_HOME/<name>`` (default ``<root>/checkpoints/<name>``);
3. the shipped reference weights: ``<root>/data/weights/<name>``.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["root", "data_dir", "mnist_dir", "checkpoints_dir", "weights_dir", "build_dir", "find_model",
           "default_checkpoint"]


def _looks_like_root(p: Path) -> bool:
    return (p / "course_lib").is_dir() and (p / "data").is_dir()


def root() -> Path:
    """The course's root folder: ``$COURSE_ROOT`` if set, else the folder holding the ``course_lib`` package
    (an editable install or a path insertion), else the first parent of the current directory that looks
    like the course (a clone beside a non-editable install)."""
    env = os.environ.get("COURSE_ROOT")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve().parent.parent
    if _looks_like_root(here):
        return here
    cwd = Path.cwd().resolve()
    for p in (cwd, *cwd.parents):
        if _looks_like_root(p):
            return p
    raise FileNotFoundError(
        f"cannot find the course folder (one holding course_lib/ and data/) from {here} or {cwd}; "
        f"set COURSE_ROOT to the folder you cloned the course into.")


def data_dir() -> Path:
    return root() / "data"


def mnist_dir() -> Path:
    """``data/MNIST/raw``: the four IDX files, where torchvision's ``MNIST(root="data")`` also looks."""
    return data_dir() / "MNIST" / "raw"


def checkpoints_dir() -> Path:
    """The user's own checkpoints: ``$COURSE_HOME`` (e.g. a folder on Google Drive) or ``<root>/checkpoints``."""
    env = os.environ.get("COURSE_HOME")
    return Path(env).expanduser().resolve() if env else root() / "checkpoints"


def weights_dir() -> Path:
    """The small reference weights that ship with the course."""
    return data_dir() / "weights"


def build_dir() -> Path:
    """Where ``make course`` writes executed lessons and the HTML course book."""
    return root() / "build"


def default_checkpoint(name: str) -> Path:
    """Where training writes model ``name`` unless told otherwise."""
    return checkpoints_dir() / name


def find_model(name: str, path: str | os.PathLike | None = None, must_exist: bool = True) -> Path | None:
    """Resolve a model folder: ``path`` if given, else the user's checkpoint, else the shipped weights.

    A folder counts as a model when it holds ``config.json``.

    Raises:
        FileNotFoundError: naming every place it looked, and how to make the model.
    """
    candidates = [Path(path).expanduser()] if path is not None else [default_checkpoint(name),
                                                                     weights_dir() / name]
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    if not must_exist:
        return None
    looked = "\n  ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"no {name!r} model found. Looked in:\n  {looked}\n"
        f"Train one with `python -m course_lib train {name}` (or `make weights` for all of them).")
