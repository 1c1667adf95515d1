"""``make weights``: train every model for the active profile (resuming where it stopped), measure each,
and refresh the small reference weights shipped in ``data/weights/`` with a README that documents them.
The models and how each is measured come from the registry (``ModelSpec.measure``); the generative models
are measured through their pipelines, with the sampling defaults their folders hold.

Only what a user needs to *use* a model is shipped: ``config.json``, ``model.safetensors`` (the EMA
weights), ``training.json`` and, for CLIP and text-to-image, the tokenizer files. The optimizer state stays
in the user's ``checkpoints/``.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from .. import paths
from ..config import Profile, Runtime
from ..registry import MODELS, load_pipeline
from ..store import atomic_folder, read_training

__all__ = ["make_weights", "measure", "export", "write_readme"]

COMMANDS = {name: f"python -m course_lib train {name}" for name in MODELS}


def export(name: str, src: Path | None = None) -> Path:
    """Copy a finished checkpoint (without ``trainer/``, also in sub-checkpoints such as unclip's decoder/ and
    prior/) to ``data/weights/<name>``, atomically."""
    src = Path(src) if src is not None else paths.default_checkpoint(name)
    dst = paths.weights_dir() / name
    with atomic_folder(dst) as tmp:
        for p in src.iterdir():
            if p.is_file():
                shutil.copy2(p, tmp / p.name)
            elif p.is_dir() and p.name != "trainer":
                shutil.copytree(p, tmp / p.name, ignore=shutil.ignore_patterns("trainer", ".*"))
    return dst


@torch.no_grad()
def measure(name: str, folder: Path, profile: Profile, rt: Runtime) -> dict:
    """One quality measure per model (what ``bench/`` reports in full): ``ModelSpec.measure`` on the model's
    pipeline (``load_pipeline``: the folder's sampling defaults) or, for the classifier, CLIP and the
    autoencoder, on the network."""
    spec = MODELS[name]
    model = load_pipeline(folder, rt.device) if spec.pipeline is not None else spec.load(folder, rt.device)
    return spec.measure(model, profile, rt)


def write_readme(summary: dict) -> Path:
    lines = ["# Reference weights", "",
             "Small models trained by the course itself, so a CPU laptop gets good samples without waiting.",
             "Each folder holds `config.json`, `model.safetensors` (the EMA weights) and `training.json` "
             "(profile, steps, loss history, data source); lessons load them through `course_lib.registry.get_model`,",
             "which prefers your own finished checkpoint in `checkpoints/`.", "",
             "Reproduce them all with `make weights` (resumes where it stopped), or one with the command below.", "",
             "| model | command | profile | data | steps | training time | size | measured quality |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in summary["models"].items():
        q = ", ".join(f"{k} {v}" for k, v in s["quality"].items())
        lines.append(f"| {name} | `{COMMANDS[name]}` | {s['profile']} | {s['data']} | {s['steps']} | "
                     f"{s['train_seconds']:.0f} s | {s['size_kb']:.0f} kB | {q} |")
    lines += ["", f"Machine: {summary['machine']}; torch {summary['torch']}. "
              f"Training times are wall-clock seconds as recorded in each `training.json`.", ""]
    run = summary.get("last_run")
    if run:
        lines += [f"The last `make weights` run took {run['wall_seconds']:.0f} s of wall-clock time in all "
                  f"({run['threads']} threads, {run['precision']}), training "
                  f"{', '.join(run['trained']) or 'nothing (all were finished)'} and measuring and exporting "
                  f"{', '.join(run['models'])}.", ""]
    if summary.get("note"):
        lines += [f"Note: {summary['note']}", ""]
    path = paths.weights_dir() / "README.md"
    path.write_text("\n".join(lines))
    return path


def make_weights(profile: Profile, rt: Runtime, models=tuple(MODELS)) -> dict:
    """Train (or resume) every model in ``models``, measure it, export it, and update the README."""
    summary_path = paths.weights_dir() / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"models": {}}
    t_all = time.perf_counter()
    trained = []
    for name in models:
        t0 = time.perf_counter()
        res = MODELS[name].train(profile, None, rt, None, True)
        if res.step > res.resumed_from:
            trained.append(name)
        folder = paths.default_checkpoint(name)
        quality = measure(name, folder, profile, rt)
        dst = export(name, folder)
        tr = read_training(dst)
        last = sum(res.losses[-50:]) / max(1, len(res.losses[-50:]))
        size_kb = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file()) / 1e3   # sub-folders too (unclip)
        summary["models"][name] = {"profile": profile.name, "steps": tr["step"], "data": tr.get("data", "MNIST"),
                                   "train_seconds": tr.get("train_seconds", 0.0), "final_loss": round(last, 5),
                                   "quality": quality, "size_kb": round(size_kb, 1)}
        q = ", ".join(f"{k} {v}" for k, v in quality.items())
        print(f"[weights] {name:<10} {time.perf_counter() - t0:6.0f} s  loss {last:.4f}  {q}  -> {dst}")
        summary.update(machine=f"{platform.machine()}, {os.cpu_count()} cores, {rt.device.type}", torch=torch.__version__)
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary["last_run"] = {"wall_seconds": round(time.perf_counter() - t_all, 1), "trained": trained,
                               "models": list(models)[:list(models).index(name) + 1],
                               "threads": torch.get_num_threads(), "precision": rt.precision}
        summary_path.write_text(json.dumps(summary, indent=1))
        write_readme(summary)
    print(f"[weights] all done in {time.perf_counter() - t_all:.0f} s")
    return summary
