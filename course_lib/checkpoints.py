"""Checkpoints: one folder per model, safetensors only (nothing is ever unpickled).

    <folder>/
        config.json             the model's config (ours, or transformers' for CLIP): enough to rebuild it
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
checkpoint from those siblings and removes them (``recover_interrupted_write``). The shipped reference
weights in ``data/weights/`` keep only ``config.json``, ``model.safetensors`` and ``training.json``.

Nothing the user made is ever deleted: training writes only into a new or empty folder, or into a checkpoint
of its own (``check_training_target``), and never into the shipped ``data/weights/`` (``make weights``
refreshes those by copying). A file that cannot be read raises ``CheckpointError``, one line naming the
file and what to do.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from . import paths

__all__ = ["CheckpointError", "check_training_target", "recover_interrupted_write", "read_json", "save_checkpoint", "read_training", "load_trainer_state", "load_weights", "optimizer_to_tensors",
           "optimizer_from_tensors", "config_difference", "atomic_folder", "has_checkpoint", "load_guide_state",
           "GUIDE_FILE", "check_resumable"]


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


# --------------------------------------------------------------------------- where training may write
def _describe(folder: Path, limit: int = 4) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_training_target(folder: str | os.PathLike) -> Path:
    """Refuse, before any compute, a folder training must not write into: the shipped ``data/weights/``,
    a file, a folder that is neither empty nor a training checkpoint (a checkpoint write replaces the whole
    folder, so anything else in it would be lost), or one that cannot be written.

    Returns:
        the folder (it may not exist yet: the first checkpoint creates it).
    Raises:
        CheckpointError: naming the folder and what is in it.
    """
    folder = Path(folder)
    resolved = folder.resolve()
    if resolved == paths.weights_dir().resolve() or resolved.is_relative_to(paths.weights_dir().resolve()):
        raise CheckpointError(f"{folder} is inside the shipped weights ({paths.weights_dir()}): training never writes "
                              f"there (`make weights` refreshes them from checkpoints/); train into checkpoints/ "
                              f"(the default) or another --out folder")
    recover_interrupted_write(folder)
    if folder.exists() and not folder.is_dir():
        raise CheckpointError(f"{folder} is a file, not a folder: choose a new or empty folder for --out")
    if folder.is_dir() and any(folder.iterdir()) and not has_checkpoint(folder):
        raise CheckpointError(f"{folder} is not empty and is not a training checkpoint (it holds {_describe(folder)}); "
                              f"training replaces its folder at every checkpoint, so it refuses: choose a new or "
                              f"empty folder for --out")
    try:                                       # the folder beside which checkpoints are written: made now,
        folder.parent.mkdir(parents=True, exist_ok=True)          # as the first checkpoint would, and probed
        tempfile.TemporaryFile(dir=folder.parent).close()
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoints to {folder} ({e.strerror or e}: {e.filename or folder.parent}); "
                              f"check --out, or COURSE_HOME") from None
    return folder


def _saved_step(folder: Path) -> int | None:
    """The step of a complete checkpoint (``training.json`` is written last), else None."""
    try:
        if (folder / "trainer").is_dir():
            return int(json.loads((folder / "training.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def recover_interrupted_write(folder: str | os.PathLike) -> list[str]:
    """Clean up after a checkpoint write that was killed: ``atomic_folder`` leaves ``.NAME.tmp-*`` (a write in
    progress) and, killed between its two renames, ``.NAME.old-*`` (the previous checkpoint) with ``NAME``
    itself missing. The newest complete checkpoint among them and ``NAME`` becomes ``NAME``; the other
    siblings are removed (they are ours: only ``atomic_folder`` makes such names).

    Returns:
        one line per thing done, for the log (empty if there was nothing to recover).
    """
    folder = Path(folder)
    name = glob.escape(folder.name)
    siblings = sorted(folder.parent.glob(f".{name}.tmp-*")) + sorted(folder.parent.glob(f".{name}.old-*"))
    if not siblings:
        return []
    done = []
    if not folder.exists() or has_checkpoint(folder):
        best, best_step = (folder, _saved_step(folder)) if folder.exists() else (None, None)
        for p in siblings:                                       # tmp first: on a tie it is the newer write
            step = _saved_step(p)
            if step is not None and (best_step is None or step > best_step):
                best, best_step = p, step
        if best is not None and best != folder:
            if folder.exists():
                stale = folder.parent / f".{folder.name}.old-recovered"
                os.replace(folder, stale)
                siblings.append(stale)
            os.replace(best, folder)
            done.append(f"recovered the checkpoint of step {best_step} in {folder} from an interrupted write")
    for p in siblings:
        if p.exists():
            shutil.rmtree(p, ignore_errors=True)
            done.append(f"removed {p.name}, left by an interrupted write")
    for line in done:
        print(line)
    return done


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


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flatten ``opt.state_dict()`` into tensors (for safetensors) plus JSON-able param groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            tensors[f"state.{idx}.{name}"] = torch.as_tensor(v).detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]
                           ) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def _state_dict_cpu(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(folder: str | os.PathLike, *, model: torch.nn.Module, ema: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, rng: dict[str, torch.Tensor], training: dict,
                    export: Callable[[torch.nn.Module, Path], None] | None = None,
                    guide: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a full checkpoint atomically.

    Args:
        model: the raw model; ``ema``: its ``AveragedModel``.
        training: JSON-able dict (must hold ``"config"``: the model config used for the same-config check).
        export: writes ``config.json`` and ``model.safetensors`` for the EMA weights (default: ours;
            CLIP passes transformers' ``save_pretrained``).
        guide: a state dict saved as ``guide.safetensors`` (the early EMA weights ``fit(guide_step=...)``
            keeps for autoguidance), or None.
    """
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        (tmp / "trainer").mkdir()
        save_file(_state_dict_cpu(model), str(tmp / "trainer" / "raw_model.safetensors"))
        save_file(_state_dict_cpu(ema), str(tmp / "trainer" / "ema.safetensors"))
        tensors, groups = optimizer_to_tensors(optimizer)
        save_file(tensors, str(tmp / "trainer" / "optimizer.safetensors"))
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / "trainer" / "rng.safetensors"))
        (tmp / "trainer" / "optimizer_groups.json").write_text(json.dumps(groups))
        inner = ema.module if hasattr(ema, "module") else ema
        if export is not None:
            export(inner, tmp)
        else:
            save_file(_state_dict_cpu(inner), str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text(json.dumps(training["config"], indent=2))
        if guide is not None:
            save_file({k: v.contiguous() for k, v in guide.items()}, str(tmp / GUIDE_FILE))
        (tmp / "training.json").write_text(json.dumps(training, indent=1))
    return folder


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


def check_resumable(folder: str | os.PathLike | None, config: dict, steps: int | None = None,
                    meta: dict | None = None) -> dict | None:
    """Can a run of ``config`` resume the checkpoint in ``folder``? Its training record if so, None when
    there is nothing to resume (no folder, or no checkpoint in it).

    A checkpoint resumes only the run it came from; checked in this order:

    0. the kind of model (``meta["kind"]``, where both record one);
    1. the model config: equal field by field (``config_difference``);
    2. what ``meta`` recomputes at every start from the data: the denoiser's k-means ``cluster_sizes``
       (k-means runs again on each start, so another machine or torch version could find other clusters);
    3. the number of ``steps`` (None: not checked): the learning-rate schedule is a function of it.

    Raises:
        ValueError: naming what differs and how to start over.
    """
    if folder is None or not has_checkpoint(folder):
        return None
    out, saved, meta = Path(folder), read_training(folder), meta or {}
    kinds = saved.get("kind"), meta.get("kind")
    if None not in kinds and kinds[0] != kinds[1]:
        raise ValueError(f"{out} holds a checkpoint of the {kinds[0]} model, not of {kinds[1]}; "
                         f"use another --out folder, or delete {out} to start over.")
    diff = config_difference(saved.get("config"), config)
    if diff:
        raise ValueError(f"{out} holds a checkpoint of another model config ({diff}); "
                         f"use another --out folder, or delete {out} to start over.")
    if "cluster_sizes" in meta and saved.get("cluster_sizes", meta["cluster_sizes"]) != meta["cluster_sizes"]:
        raise ValueError(f"the k-means clusters computed here differ from those {out} was trained with "
                         f"(cluster sizes {saved['cluster_sizes'][:5]}... there, {meta['cluster_sizes'][:5]}... "
                         f"here; another machine or torch version?): resume it where it started, or train into "
                         f"another folder")
    if steps is not None and saved.get("steps", steps) != steps:
        raise ValueError(f"{out} holds a checkpoint of a {saved['steps']}-step run, not of this {steps}-step "
                         f"one (its learning-rate schedule would not match); use another --out folder, "
                         f"or delete {out} to start over.")
    return saved


def load_trainer_state(folder: str | os.PathLike, *, model: torch.nn.Module, ema: torch.nn.Module,
                       optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Restore raw weights, EMA and optimizer in place; return the saved RNG states."""
    t = Path(folder) / "trainer"
    load_state(model, read_tensors(t / "raw_model.safetensors"), t / "raw_model.safetensors")
    load_state(ema, read_tensors(t / "ema.safetensors"), t / "ema.safetensors")
    groups = read_json(t / "optimizer_groups.json")
    try:
        optimizer_from_tensors(optimizer, read_tensors(t / "optimizer.safetensors"), groups)
    except (ValueError, KeyError, TypeError, RuntimeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(f"{t / 'optimizer.safetensors'} does not fit this model's optimizer ({e}); "
                              f"{fix_for(Path(folder))}") from None
    rng = read_tensors(t / "rng.safetensors")
    if not {"generator", "cpu"} <= set(rng):
        raise CheckpointError(f"{t / 'rng.safetensors'} lacks the generator states; {fix_for(Path(folder))}")
    return rng


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
