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
import tempfile
from pathlib import Path

__all__ = ["root", "data_dir", "mnist_dir", "checkpoints_dir", "weights_dir", "build_dir", "find_model",
           "default_checkpoint", "check_output_file", "check_output_folder"]


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


# --------------------------------------------------------------------------- output paths, checked before compute
def _probe_folder(folder: Path, option: str, given) -> None:
    """Create the folder (and its parents) and then one file in it, and remove that file: the only test that
    also holds for root, for whom ``os.access`` says yes to ``/proc`` and ``/sys``.

    Raises:
        ValueError: one line naming the option, what was given and why it cannot be written.
    """
    for parent in (folder, *folder.parents):          # a file where a folder should be: name it
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot create the folder of {option} {given}: {parent} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".course-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"cannot write {option} {given}: no file can be created in {folder} "
                         f"({e.strerror or e.__class__.__name__})") from None


def check_output_file(given: str | os.PathLike, option: str = "--out", suffixes: tuple[str, ...] = (".png", ".pt")
                      ) -> Path:
    """The file a command will write, checked before any compute: ``~`` expanded and the path resolved (the
    caller writes to the path returned, never to what it was given), a suffix in ``suffixes``, not a folder,
    and a folder that can be created and written (``_probe_folder``); an existing file must open for writing.

    Raises:
        ValueError: one line, for the first check that fails.
    """
    path = Path(given).expanduser()
    names = " or ".join(suffixes)
    if path.name in suffixes:                              # ".png": a suffix without a name
        raise ValueError(f"{option} {given} has no file name before {path.name}; give one such as grid{path.name}")
    if path.suffix not in suffixes:
        raise ValueError(f"{option} must end in {names}, got {str(given)!r}")
    path = path.resolve()
    if path.is_dir():
        raise ValueError(f"{option} {given} is a folder; give a file name ending in {names}")
    _probe_folder(path.parent, option, given)
    if path.exists():
        try:
            with open(path, "ab"):                         # writable, and left as it is
                pass
        except OSError as e:
            raise ValueError(f"cannot write {option} {given}: {e.strerror or e.__class__.__name__}") from None
    return path


def check_output_folder(given: str | os.PathLike, option: str = "--out") -> Path:
    """A folder a command will write into, checked before any compute as ``check_output_file`` checks a file's
    folder: ``~`` expanded, resolved, created if missing, and a file created and removed in it."""
    path = Path(given).expanduser().resolve()
    _probe_folder(path, option, given)
    return path
