"""Lessons 03-05's runs: the unconditional denoiser (with its k-means clusters) and the class model.

    denoiser_config, class_config        the UNet configs, from the profile
    train_denoiser, train_class_model    one run each through ``loop.fit`` (L_simple, labels dropped for
                                         classifier-free guidance: ``guidance.drop_condition``)

The UNet is ``networks/unet.py``; the registry (``registry.py``) finds, trains or loads them by name.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from .. import paths
from ..config import Profile, Runtime, get_runtime
from ..data.clusters import kmeans
from ..data.mnist import batch_indices, load_mnist
from ..diffusion.forward import simple_loss
from ..diffusion.guidance import drop_condition
from ..diffusion.schedules import make_schedule
from ..networks.unet import unet_config_from_profile, unet_from_config
from .loop import TrainResult, fit

__all__ = ["denoiser_config", "class_config", "train_denoiser", "train_class_model"]


# --------------------------------------------------------------------------- configs
def denoiser_config(profile: Profile) -> dict:
    """The unconditional denoiser: told the k-means cluster of each digit (``num_classes`` = clusters, found
    without labels, ``clusters.py``), or "no cluster" with probability ``p_uncond``."""
    return {**unet_config_from_profile(profile, num_classes=profile.denoiser_clusters).to_dict(),
            "T": profile.T, "schedule": profile.schedule, "n_train": profile.n_train,
            "min_snr_gamma": profile.min_snr_gamma, "batch_size": profile.denoiser_batch,
            "lr": profile.denoiser_lr, "clusters": "k-means on pixels, seed 0", "p_uncond": profile.p_uncond}


def class_config(profile: Profile) -> dict:
    return {**unet_config_from_profile(profile, num_classes=10).to_dict(), "T": profile.T,
            "schedule": profile.schedule, "n_train": profile.n_train, "p_uncond": profile.p_uncond}


# --------------------------------------------------------------------------- training
def _train_unet(name: str, cfg: dict, profile: Profile, steps: int, out, runtime, progress, stop_after,
                seed: int = 0, guide_step: int | None = None) -> TrainResult:
    """Train a UNet on (image, condition) pairs, the condition dropped to "none" with probability
    ``cfg["p_uncond"]``: the label for the class model, the k-means cluster for the denoiser."""
    rt = runtime or get_runtime()
    out = Path(out) if out is not None else paths.default_checkpoint(name)
    x, y = load_mnist("train", profile=profile, device=rt.device)
    meta = {"kind": name, "profile": profile.name, "data": f"MNIST train, {len(x)} images"}
    if cfg.get("clusters"):                    # the denoiser: k-means clusters replace the labels
        start = time.perf_counter()
        found = kmeans(x.cpu(), cfg["num_classes"], seed=0)
        y = found.assign.to(rt.device)
        meta.update(cluster_sizes=found.sizes.tolist(),                 # p(c), for sampling (draw_clusters)
                    cluster_seconds=round(time.perf_counter() - start, 1))   # (fit resumes only the same ones)
    schedule = make_schedule(profile.schedule, profile.T, rt.device)
    torch.manual_seed(seed)                    # the initial weights do not depend on what ran before
    model = unet_from_config(cfg)
    batch_size = cfg.get("batch_size", profile.batch_size)     # the denoiser's config names its own
    lr = cfg.get("lr", profile.lr)                              # (batch size and learning rate)

    def get_batch(g):
        idx = batch_indices(len(x), batch_size, g, rt.device)
        return x[idx], y[idx]

    def loss_fn(m, batch, g):
        x0, labels = batch
        cond = drop_condition(labels, cfg["p_uncond"], g)
        return simple_loss(m, x0, schedule, generator=g, cond=cond, min_snr_gamma=cfg.get("min_snr_gamma"),
                           return_parts=True)                                      # DDPM Eq. (14)

    result = fit(model, loss_fn, get_batch, steps=steps, lr=lr, warmup_steps=profile.warmup_steps,
                 batch_size=batch_size, ema_decay=profile.ema_decay, config=cfg, meta=meta, out=out,
                 checkpoint_every=profile.checkpoint_every, runtime=rt, desc=f"train {name}",
                 progress=progress, T=profile.T, stop_after=stop_after, seed=seed, guide_step=guide_step,
                 rng_device=rt.device)
    if "cluster_sizes" in meta:                # as load_unet gives them, so the result samples the same way
        result.model.cluster_sizes = result.ema_model.cluster_sizes = torch.tensor(meta["cluster_sizes"])
    return result


def train_denoiser(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                   progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the unconditional denoiser for ``profile`` (resumes from ``out`` when it holds one).

    It is told the k-means cluster of each training digit (``profile.denoiser_clusters`` clusters, found
    without labels), or "no cluster" with probability ``profile.p_uncond``; the cluster sizes are saved in
    ``training.json`` (``cluster_sizes``), and ``load_unet`` sets them as ``model.cluster_sizes`` for
    ``clusters.draw_clusters``. Batches hold ``profile.denoiser_batch`` images, at learning rate
    ``profile.denoiser_lr``. The EMA weights after ``profile.guide_step`` steps are kept too
    (``guide.safetensors``), for autoguidance; a run shorter than that keeps none.
    """
    steps = steps or profile.train_steps
    guide_step = profile.guide_step if profile.guide_step < steps else None
    return _train_unet("denoiser", denoiser_config(profile), profile, steps, out,
                       runtime, progress, stop_after, guide_step=guide_step)


def train_class_model(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                      progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the class-conditional denoiser, dropping labels with probability ``profile.p_uncond``."""
    return _train_unet("class", class_config(profile), profile, steps or profile.class_train_steps, out,
                       runtime, progress, stop_after)
