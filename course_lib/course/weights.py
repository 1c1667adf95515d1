"""``make weights``: train every model for the active profile (resuming where it stopped), measure each,
and refresh the small reference weights shipped in ``data/weights/`` with a README that documents them.

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
from ..store import atomic_folder, read_training

__all__ = ["make_weights", "measure", "export", "write_readme"]

COMMANDS = {name: f"python -m course_lib train {name}" for name in
            ("classifier", "denoiser", "class", "clip", "text2image", "text2image-lm", "autoencoder", "latent", "flow", "unclip", "mini-sd3")}


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
    """One quality measure per model (what ``bench/`` reports in full)."""
    from ..registry import REGISTRY, get_model
    model = REGISTRY[name][2](folder, rt.device)
    g = torch.Generator().manual_seed(0)
    if name == "classifier":
        from ..training.classifier import classifier_test_accuracy
        return {"test_accuracy": round(classifier_test_accuracy(model, profile), 4)}
    if name in ("denoiser", "class"):
        from ..data.clusters import draw_clusters
        from ..diffusion.guidance import guided
        from ..diffusion.samplers import sample
        from ..diffusion.schedules import make_schedule
        from ..measures.metrics import evaluate_samples
        clf = get_model("classifier", profile, rt)
        n = profile.n_eval
        schedule = make_schedule(profile.schedule, profile.T, rt.device)
        if name == "class":                    # guided: DDIM with eta = 0
            labels = (torch.arange(n) % 10).to(rt.device)
            x = sample(guided(model, profile.guidance), n, schedule, steps=profile.sample_steps, generator=g,
                       cond=labels, device=rt.device)
            ev = evaluate_samples(clf, x, labels)
            return {"confident": round(float(ev["confident"]), 4), "accuracy": round(float(ev["accuracy"]), 4),
                    "n": n, "sampler": f"ddim-{profile.sample_steps}", "guidance": profile.guidance}
        # the denoiser: a cluster drawn per sample, ancestral sampling on a respaced chain (bench/)
        steps = 2 * profile.sample_steps
        out = {"n": n, "sampler": f"ddpm-{steps}"}
        clusters = draw_clusters(model.cluster_sizes, n, torch.Generator().manual_seed(0), rt.device)
        for key, w in (("confident_mixture", 1.0), ("confident", profile.self_guidance)):
            x = sample(guided(model, w), n, schedule, sampler="ddpm", steps=steps,
                       generator=torch.Generator().manual_seed(0), cond=clusters, device=rt.device)
            out[key] = round(float(evaluate_samples(clf, x)["confident"]), 4)
        out["self_guidance"] = profile.self_guidance
        return out
    if name == "flow":                         # lesson 12: guided Euler on the velocity
        from ..diffusion import flow
        from ..diffusion.guidance import guided
        from ..measures.metrics import evaluate_samples
        clf = get_model("classifier", profile, rt)
        n = profile.n_eval
        labels = (torch.arange(n) % 10).to(rt.device)
        x = flow.sample(guided(model, profile.flow_guidance), n, steps=profile.flow_steps, generator=g,
                        cond=labels, device=rt.device).clamp(-1, 1)
        ev = evaluate_samples(clf, x, labels)
        return {"confident": round(float(ev["confident"]), 4), "accuracy": round(float(ev["accuracy"]), 4),
                "n": n, "sampler": f"euler-{profile.flow_steps}", "guidance": profile.flow_guidance}
    if name == "clip":
        from ..training.clip import zero_shot_accuracy
        return {"zero_shot_accuracy": round(float(zero_shot_accuracy(model, profile, rt)), 4)}
    if name in ("autoencoder", "latent"):
        from ..training.latent import latent_quality, reconstruction_accuracy
        if name == "autoencoder":
            return {"reconstruction_accuracy": round(reconstruction_accuracy(model, profile, rt), 4)}
        return latent_quality(model, profile, rt)
    if name in ("text2image", "text2image-lm"):
        from ..training.text2image import prompt_accuracy
        return {"prompt_digit_accuracy": round(float(prompt_accuracy(model, profile, rt)), 4)}
    if name == "mini-sd3":                      # its own sampling defaults (Euler steps), from its folder
        from ..training.text2image import prompt_accuracy
        return {"prompt_digit_accuracy": round(float(prompt_accuracy(
            model, profile.replace(sample_steps=model.default_steps), rt)), 4),
            "sampler": f"euler-{model.default_steps}", "guidance": model.default_guidance}
    if name == "unclip":
        from ..training.text2image import prompt_accuracy
        return {"prompt_digit_accuracy": round(float(prompt_accuracy(model, profile, rt)), 4),
                "text_shortcut_accuracy": round(float(prompt_accuracy(model.using("text"), profile, rt)), 4)}
    return {}


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


def make_weights(profile: Profile, rt: Runtime, models=tuple(COMMANDS)) -> dict:
    """Train (or resume) every model in ``models``, measure it, export it, and update the README."""
    from ..registry import REGISTRY
    summary_path = paths.weights_dir() / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"models": {}}
    t_all = time.perf_counter()
    trained = []
    for name in models:
        t0 = time.perf_counter()
        res = REGISTRY[name][1](profile, None, rt, None, True)
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
