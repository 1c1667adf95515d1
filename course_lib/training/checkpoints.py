"""The trainer's side of a model folder: its state, resumed exactly, and which runs may write where.

    save_checkpoint, load_trainer_state   weights, EMA, optimizer and RNG states, written atomically
    check_resumable                       may this run resume the folder (same config, same profile)?
    check_training_target                 is this a folder training may write into (before any compute)?

Reading a folder for inference (``read_json``, ``load_weights``, ``CheckpointError``) is ``store.py``.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from .. import paths
from ..store import (
    GUIDE_FILE,
    CheckpointError,
    atomic_folder,
    config_difference,
    fix_for,
    has_checkpoint,
    load_state,
    read_json,
    read_tensors,
    read_training,
)

__all__ = ["check_training_target", "recover_interrupted_write", "optimizer_to_tensors",
           "optimizer_from_tensors", "save_checkpoint", "check_resumable", "load_trainer_state"]


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


def export_config(config: dict) -> Callable[[torch.nn.Module, Path], None]:
    """A ``fit`` export hook: the EMA weights as ``model.safetensors`` and ``config`` as ``config.json`` (the
    model's config with its ``"sampling"`` defaults, which the pipelines read)."""
    def export(inner: torch.nn.Module, folder: Path) -> None:
        save_file(_state_dict_cpu(inner), str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(config, indent=2))
    return export


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
        guide: a state dict saved as ``guide.safetensors`` (the early EMA weights ``loop.GuideSnapshot``
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
