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
interrupted write leaves the previous checkpoint intact. The shipped reference weights in ``data/weights/``
keep only ``config.json``, ``model.safetensors`` and ``training.json``.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "read_training", "load_trainer_state", "load_weights", "optimizer_to_tensors",
           "optimizer_from_tensors", "config_difference", "atomic_folder", "has_checkpoint", "load_guide_state",
           "GUIDE_FILE", "check_resumable"]


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
    return load_file(str(path)) if path.is_file() else None


def read_training(folder: str | os.PathLike) -> dict:
    path = Path(folder) / "training.json"
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {Path(folder)} (looked for {path})")
    return json.loads(path.read_text())


def check_resumable(folder: str | os.PathLike | None, config: dict, steps: int | None = None,
                    meta: dict | None = None) -> dict | None:
    """Can a run of ``config`` resume the checkpoint in ``folder``? Its training record if so, None when
    there is nothing to resume (no folder, or no checkpoint in it).

    A checkpoint resumes only the run it came from; checked in this order:

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
    diff = config_difference(saved["config"], config)
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
    model.load_state_dict(load_file(str(t / "raw_model.safetensors")))
    ema.load_state_dict(load_file(str(t / "ema.safetensors")))
    groups = json.loads((t / "optimizer_groups.json").read_text())
    optimizer_from_tensors(optimizer, load_file(str(t / "optimizer.safetensors")), groups)
    return load_file(str(t / "rng.safetensors"))


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
    module.load_state_dict(load_file(str(path), device=str(device)))
    return module.to(device)
