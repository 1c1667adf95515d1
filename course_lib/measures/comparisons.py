"""Part 2's side-by-side measures (lessons 10-12), moved out of the lessons so that a lesson cell is one call:

    mean_pairwise_distance(images)     how spread a group of images is: mean RMS pixel distance of all pairs
    spread_per_group(images, n)        that, for each consecutive group of n (one prompt's images)
    compare_with_pixels(...)           lesson 11: the latent model beside lesson 05's pixel model, same w and steps
    few_step_race(...)                 lesson 12: flow + Euler against DDPM + DDIM at a few step counts, live
    plot_sampler_race(bench)           lesson 12: the saved ``bench/flow_matching.py`` results, drawn

Every function takes the models it compares (it loads nothing), scores with the course classifier
(``networks.classifier``) and times on this machine.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from ..diffusion import flow
from ..diffusion.guidance import guided
from ..diffusion.samplers import sample as ddpm_family_sample
from ..diffusion.schedules import make_schedule
from ..networks.classifier import classify, label_accuracy
from .metrics import evaluate_samples

__all__ = ["mean_pairwise_distance", "spread_per_group", "compare_with_pixels", "few_step_race",
           "plot_sampler_race"]


def _check_n(n, name: str = "n", least: int = 1) -> int:
    if not (isinstance(n, int) and not isinstance(n, bool) and n >= least):
        raise ValueError(f"{name} must be a whole number >= {least}, got {n!r}")
    return n


# --------------------------------------------------------------------------- diversity (lesson 10)
def mean_pairwise_distance(images: torch.Tensor) -> float:
    """The mean over all pairs of a group of images of their RMS pixel distance (in [-1, 1] units): 0 for
    copies, about 0.7-0.8 for real MNIST digits of one class. Args: images: (n, ...), n >= 2."""
    _check_n(len(images), "the number of images", 2)
    flat = images.detach().float().cpu().flatten(1)                         # (n, P)
    d = torch.cdist(flat, flat) / flat.shape[1] ** 0.5                      # RMS distance
    iu = torch.triu_indices(len(flat), len(flat), 1)
    return float(d[iu[0], iu[1]].mean())


def spread_per_group(images: torch.Tensor, n_per_group: int) -> torch.Tensor:
    """``mean_pairwise_distance`` of each consecutive group of ``n_per_group`` images (prompt after prompt, as
    the pipelines return them). Returns (len(images) // n_per_group,) float32."""
    _check_n(n_per_group, "n_per_group", 2)
    if len(images) % n_per_group:
        raise ValueError(f"{len(images)} images do not split into groups of {n_per_group}")
    return torch.tensor([mean_pairwise_distance(images[i:i + n_per_group])
                         for i in range(0, len(images), n_per_group)])


# --------------------------------------------------------------------------- latents against pixels (lesson 11)
def compare_with_pixels(latent_model, pixel_model: Callable | None, classifier, n: int, guidance: float,
                        steps: int, seed: int = 0, records: dict | None = None, device="cpu") -> dict:
    """Lesson 11's side-by-side: ``n`` guided DDIM samples (labels 0-9 in turn, start noises from ``seed``) from
    the latent model (``LatentDiffusion.generate``) and, when ``pixel_model`` is given (lesson 05's class UNet,
    unguided; sampled on the latent model's schedule, the profile's, on which both were trained), from the
    pixel model, at the same guidance w and steps; each scored by the course classifier and timed here.

    Args: records: {"pixels": training.json dict, "latents": ...} to copy steps, batch and training seconds from.
    Returns: {"pixels": row (only with a pixel model), "latents": row}, row = {"accuracy", "confident", "n",
        "sample_seconds", and "step", "batch_size", "train_seconds" when a record is given}.
    """
    _check_n(n)
    labels = torch.arange(n) % 10
    runs = {}
    if pixel_model is not None:
        schedule = make_schedule(latent_model.schedule_name, latent_model.T, device)
        runs["pixels"] = lambda: ddpm_family_sample(guided(pixel_model, guidance), n, schedule, steps=steps,
                                                    generator=torch.Generator().manual_seed(seed),
                                                    cond=labels.to(device), device=device)
    runs["latents"] = lambda: latent_model.generate(labels=labels, guidance=guidance, steps=steps,
                                                    generator=torch.Generator().manual_seed(seed))
    out = {}
    for name, run in runs.items():
        t0 = time.perf_counter()
        x = run()
        seconds = time.perf_counter() - t0
        ev = evaluate_samples(classifier, x, labels)
        row = {"accuracy": float(ev["accuracy"]), "confident": float(ev["confident"]), "n": n,
               "sample_seconds": seconds}
        record = (records or {}).get(name)
        if record:
            row.update({k: record.get(k) for k in ("step", "batch_size", "train_seconds")})
        out[name] = row
    return out


# --------------------------------------------------------------------------- flow against DDPM (lesson 12)
def few_step_race(flow_model, ddpm_model, ddpm_schedule, classifier, *, n: int, step_counts=(2, 5, 10, 25),
                  w_flow: float, w_ddpm: float, seed: int = 0, device="cpu") -> list[dict]:
    """Lesson 12's live race: for each number of steps, ``n`` guided samples (labels 0-9 in turn, the same start
    noises from ``seed``) from the flow model with Euler (``flow.sample``) and from the DDPM class model with
    DDIM, each scored by the course classifier and timed on this machine.

    Returns: one row per (steps, model): {"model": "flow, Euler" or "DDPM, DDIM", "steps", "accuracy",
        "ms_per_image"}.
    """
    _check_n(n)
    labels = torch.arange(n) % 10
    cond = labels.to(device)
    runs = {"flow, Euler": lambda s: flow.sample(guided(flow_model, w_flow), n, steps=s, cond=cond, device=device,
                                                 generator=torch.Generator().manual_seed(seed)),
            "DDPM, DDIM": lambda s: ddpm_family_sample(guided(ddpm_model, w_ddpm), n, ddpm_schedule, sampler="ddim",
                                                       steps=s, cond=cond, device=device,
                                                       generator=torch.Generator().manual_seed(seed))}
    rows = []
    for steps in step_counts:
        for name, run in runs.items():
            t0 = time.perf_counter()
            x = run(steps).cpu().clamp(-1, 1)
            ms = 1000 * (time.perf_counter() - t0) / n
            rows.append({"model": name, "steps": steps, "ms_per_image": ms,
                         "accuracy": label_accuracy(classify(classifier, x)[0], labels)})
    return rows


def plot_sampler_race(bench: dict, axes=None):
    """Draw ``bench/results/flow_matching-<profile>.json`` (``bench/flow_matching.py``): accuracy and FID against
    network calls, and FID against time per image, one line per (sampler, guidance w), with the FID floor.
    Returns the figure."""
    import matplotlib.pyplot as plt
    rows = bench["rows"]
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    styles = {"euler": ("-o", bench["flow_ws"]), "heun": ("--s", bench["flow_ws"]), "ddim": (":^", bench["ddim_ws"])}
    for sampler, (style, ws) in styles.items():
        for w in ws:
            rs = sorted((r for r in rows if r["sampler"] == sampler and r["w"] == w), key=lambda r: r["steps"])
            if not rs:
                continue
            label = f"{'DDPM, ddim' if sampler == 'ddim' else 'flow, ' + sampler} w={w:g}"
            axes[0].plot([r["nfe"] for r in rs], [100 * r["accuracy"] for r in rs], style, label=label)
            axes[1].plot([r["nfe"] for r in rs], [r["fid"] for r in rs], style, label=label)
            axes[2].plot([r["ms_per_image"] for r in rs], [r["fid"] for r in rs], style, label=label)
    axes[1].axhline(rows[0]["fid_floor"], color="k", lw=0.8, label="floor (real vs real)")
    for ax, (xl, yl) in zip(axes, (("network calls", "asked-for digit (%)"), ("network calls", "FID"),
                                   ("ms per image (2 shared CPU cores)", "FID"))):
        ax.set_xscale("log"); ax.set_xlabel(xl); ax.set_ylabel(yl)
    axes[0].set_ylim(80, 100.5); axes[2].legend(fontsize=7, ncol=2)
    fig = axes[0].figure
    fig.tight_layout()
    return fig
