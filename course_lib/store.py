"""Model folders: one folder per model, safetensors and JSON only (nothing is ever unpickled).

    <folder>/
        config.json             the model's config (ours, or transformers' for CLIP): enough to rebuild it,
                                and for a generative model its sampling defaults ("sampling")
        model.safetensors       the weights to use: the EMA average (what sampling and lessons load)
        guide.safetensors       (optional) the EMA weights early in the run, for autoguidance
        training.json           profile, step, total steps, data source, loss history, the model config again
        trainer/
            raw_model.safetensors   the raw (non-averaged) weights the optimizer updates
            ema.safetensors         the AveragedModel state (its weights and how many updates it has seen)
            optimizer.safetensors   AdamW's moments and step counts, as tensors
            rng.safetensors         the CPU RNG and the trainer's generator state

A write goes to a temporary sibling folder first, which then replaces the old one by renaming, so an
interrupted write leaves the previous checkpoint intact; the next training start recovers the newest complete
checkpoint from those siblings and removes them (``training.checkpoints.recover_interrupted_write``). The
shipped reference weights in ``data/weights/`` keep only ``config.json``, ``model.safetensors`` and
``training.json``.

Nothing the user made is ever deleted: training writes only into a new or empty folder, or into a checkpoint
of its own (``training.checkpoints.check_training_target``), and never into the shipped ``data/weights/``
(``make weights`` refreshes those by copying). A file that cannot be read raises ``CheckpointError``, one line naming the
file and what to do. ``read_model_config`` is the one reader of a folder's ``config.json`` for loading: it says
what the folder holds (``model_kind``: a registry name), so the pipelines and the command line never parse it
themselves.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from . import paths

__all__ = ["CheckpointError", "read_json", "read_config", "model_kind", "read_model_config", "atomic_folder",
           "has_checkpoint", "GUIDE_FILE", "load_guide_state", "read_training", "load_weights"]


class CheckpointError(ValueError):
    """A model or checkpoint folder that cannot be used as asked: a corrupted or missing file, another
    model's files, or a folder training must not write into. Its message is one line: the file, and what
    to do about it."""


def fix_for(folder: Path) -> str:
    """What to do about a bad file in ``folder``: the shipped weights come back from git, a user's
    checkpoint is retrained."""
    try:
        rel = Path(folder).resolve().relative_to(paths.weights_dir().resolve())
    except (OSError, ValueError):
        rel = None
    if rel is not None:
        target = "data/weights" + (f"/{rel.parts[0]}" if rel.parts else "")
        return f"restore the shipped weights with `git checkout -- {target}` (or re-clone the course)"
    return f"delete {folder} and train again (python -m course_lib train ...), or point to another folder"


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file of a model folder, or a ``CheckpointError`` naming it (missing or not valid JSON)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing {path}; {fix_for(path.parent)}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); {fix_for(path.parent)}") from None


def read_config(folder: str | os.PathLike, kind: str, what: str, example: str, needs: tuple[str, ...] = ()
                ) -> dict:
    """A model folder's ``config.json``, checked to be of ``kind`` (and to hold the keys ``needs``).

    Args:
        what: the model in words, for the messages ("an autoencoder", "the course classifier").
        example: a folder to suggest (e.g. "data/weights/autoencoder").
    Raises:
        FileNotFoundError: no ``config.json`` in ``folder``.
        CheckpointError: not valid JSON, or another kind of model's config.
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model at {folder} (looked for {path}; {what}'s folder holds one, e.g. "
                                f"{example})")
    cfg = read_json(path)
    if not isinstance(cfg, dict) or cfg.get("kind") != kind or any(k not in cfg for k in needs):
        found = cfg.get("kind") if isinstance(cfg, dict) else None
        raise CheckpointError(f"{path} is not {what}'s config (kind {found!r}); pass {what}'s folder "
                              f"(e.g. {example})")
    return cfg


def model_kind(cfg: Any) -> str | None:
    """What a model folder holds, from its ``config.json`` alone: a registry name (``"class"``, ``"unclip"``,
    ...), ``"unet"`` (an unconditional UNet without clusters), or None (no kind this course knows)."""
    if not isinstance(cfg, dict):
        return None
    if cfg.get("model") in ("text2image", "text2image-lm", "unclip", "mini-sd3"):
        return cfg["model"]
    if cfg.get("model_type") == "clip":
        return "clip"
    kind = cfg.get("kind", "unet" if "channels" in cfg else None)     # early UNet configs named no kind
    if kind in ("latent", "autoencoder", "classifier"):
        return kind
    if kind == "unet":
        if cfg.get("objective") == "flow":
            return "flow"
        if cfg.get("clusters"):
            return "denoiser"
        return "class" if cfg.get("num_classes") else "unet"
    return None


def read_model_config(folder: str | os.PathLike, example: str = "data/weights/class") -> tuple[dict, str]:
    """Any model folder's ``config.json`` and what it holds (``model_kind``): the one reader every loader and
    the command line use.

    Raises:
        FileNotFoundError: no ``config.json`` in ``folder``.
        CheckpointError: not valid JSON, or a config of no kind this course knows (one line each).
    """
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no model at {folder} (looked for {path}); pass a model folder such as {example}")
    cfg = read_json(path)
    kind = model_kind(cfg)
    if kind is None:
        raise CheckpointError(f"{path} describes no model this course knows (no 'kind' or 'model' in it); pass a "
                              f"model folder such as {example}")
    return cfg, kind


def read_tensors(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file`` with a ``CheckpointError`` naming the file if it is truncated, empty
    or not a safetensors file at all (safetensors never runs code from the file: nothing is unpickled)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"missing {path}; {fix_for(path.parent)}")
    try:
        return load_file(str(path), device=str(device))
    except Exception as e:                      # SafetensorError, OSError, or a header that is not JSON
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{path} is corrupted or not a safetensors file ({why}); "
                              f"{fix_for(path.parent)}") from None


def load_state(module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """``module.load_state_dict(tensors)``, or a ``CheckpointError`` naming ``path`` when its tensors do not
    fit the module (another model's weights, or a config.json that does not describe them)."""
    try:
        module.load_state_dict(tensors)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        detail = lines[1] if len(lines) > 1 else (lines[0] if lines else "")
        raise CheckpointError(f"the weights in {path} do not fit the model its folder's config.json describes "
                              f"({detail[:200]}); {fix_for(Path(path).parent)}") from None


class atomic_folder:
    """``with atomic_folder(dst) as tmp:`` write into ``tmp``; on success ``tmp`` replaces ``dst``.

    On an exception (or a crash) ``dst`` is untouched and ``tmp`` is removed (or left as a dot-folder).
    """

    def __init__(self, dst: str | os.PathLike):
        self.dst = Path(dst)
        self.tmp = self.dst.parent / f".{self.dst.name}.tmp-{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Path:
        self.dst.parent.mkdir(parents=True, exist_ok=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        old = self.dst.parent / f".{self.dst.name}.old-{uuid.uuid4().hex[:8]}"
        if self.dst.exists():
            os.replace(self.dst, old)            # two renames: dst is only ever missing between them
        os.replace(self.tmp, self.dst)
        shutil.rmtree(old, ignore_errors=True)
        return False


def has_checkpoint(folder: str | os.PathLike) -> bool:
    folder = Path(folder)
    return (folder / "training.json").is_file() and (folder / "trainer").is_dir()

GUIDE_FILE = "guide.safetensors"


def load_guide_state(folder: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """The guide weights a checkpoint folder holds (``guide.safetensors``), or None."""
    path = Path(folder) / GUIDE_FILE
    return read_tensors(path) if path.is_file() else None


def read_training(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "training.json"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {Path(folder)} (looked for {path})")
    return read_json(path)


def load_weights(module: torch.nn.Module, folder: str | os.PathLike, device: torch.device | str = "cpu",
                 raw: bool = False, guide: bool = False) -> torch.nn.Module:
    """Load ``model.safetensors`` (the EMA weights), with ``raw=True`` the raw trained weights, or with
    ``guide=True`` the early EMA weights kept for autoguidance."""
    folder = Path(folder)
    if raw and guide:
        raise ValueError("choose raw=True or guide=True, not both")
    path = folder / ("trainer/raw_model.safetensors" if raw else GUIDE_FILE if guide else "model.safetensors")
    if not path.is_file():
        why = (" (shipped weights keep only the EMA ones)" if raw else
               " (this model was trained without guide_step: retrain it with the current profile to get one)"
               if guide else "")
        raise FileNotFoundError(f"no weights at {path}{why}")
    load_state(module, read_tensors(path, device=device), path)
    return module.to(device)


def config_difference(saved: Any, new: Any, prefix: str = "") -> str | None:
    """The first field where two JSON-like configs differ, as ``"field: saved -> new"``; None if equal."""
    if isinstance(saved, dict) and isinstance(new, dict):
        for k in sorted(set(saved) | set(new)):
            if k not in saved or k not in new:
                return f"{prefix}{k}: {saved.get(k, '<missing>')!r} -> {new.get(k, '<missing>')!r}"
            d = config_difference(saved[k], new[k], f"{prefix}{k}.")
            if d:
                return d
        return None
    if isinstance(saved, (list, tuple)) and isinstance(new, (list, tuple)):
        saved, new = list(saved), list(new)
    return None if saved == new else f"{prefix.rstrip('.')}: {saved!r} -> {new!r}"
