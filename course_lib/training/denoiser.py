"""Lessons 03-05's runs: the unconditional denoiser (with its k-means clusters) and the class model.

    DenoiserRecipe, PRESETS              their sizes and steps per profile (the UNet's sizes serve the
                                         text, flow and unCLIP models too); ``recipe_config(profile)``
    sampling_defaults                    how each samples by default (written into its folder's config.json)
    unet_config                          the UNet size a profile asks for
    denoiser_config, class_config        the UNet configs, from the profile
    train_denoiser, train_class_model    one run each through ``loop.fit`` (L_simple, labels dropped for
                                         classifier-free guidance: ``guidance.drop_condition``)

The UNet is ``networks/unet.py``; the registry (``registry.py``) finds, trains or loads them by name.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import paths
from ..config import Profile, Runtime, get_runtime, recipe_preset
from ..data.clusters import kmeans
from ..data.mnist import batch_indices, load_mnist
from ..diffusion.forward import simple_loss
from ..diffusion.guidance import drop_condition
from ..diffusion.schedules import make_schedule
from ..networks.unet import UNetConfig, unet_from_config
from .checkpoints import export_config
from .loop import GuideSnapshot, LossByT, ProgressBar, TrainResult, fit

__all__ = ["DenoiserRecipe", "PRESETS", "recipe_config", "CLASS_GUIDANCE", "sampling_defaults", "unet_config",
           "denoiser_config", "class_config", "train_denoiser", "train_class_model"]


# --------------------------------------------------------------------------- the recipe's presets
@dataclass(frozen=True)
class DenoiserRecipe:
    """The denoiser's and the class model's sizes, steps and sampling defaults for one profile."""
    # the denoising UNet (lesson 03); the class, text-to-image, flow and unCLIP decoder UNets use it too
    channels: tuple[int, ...]        # channels per resolution level (after the space-to-depth stem)
    attention: bool                  # self-attention at the lowest resolution
    time_dim: int                    # width of the time embedding
    blocks: int                      # residual blocks per level, on the way down and on the way up
    # the unconditional denoiser (lessons 03-04)
    steps: int                       # its training steps
    batch: int                       # its batch size: on a CPU, more and smaller steps learn more per image
    lr: float                        # its AdamW learning rate
    guide_step: int                  # its EMA weights kept at this step, for autoguidance (lesson 04)
    clusters: int                    # k-means clusters of the training digits it is told (no labels)
    min_snr_gamma: float | None      # Min-SNR loss weighting (None: plain MSE)
    self_guidance: float             # default guidance scale towards a sample's cluster (lessons 03-04)
    autoguidance: float              # default autoguidance scale (lesson 04)
    # the class-conditional model (lesson 05): the profile's batch size and learning rate
    class_steps: int                 # its training steps
    guidance: float                  # its default classifier-free guidance scale (diffusers' convention)


PRESETS: dict[str, DenoiserRecipe] = {
    "test": DenoiserRecipe(channels=(16, 32), attention=True, time_dim=64, blocks=1,
                           steps=200, batch=64, lr=2e-3, guide_step=50, clusters=10, min_snr_gamma=5.0,
                           self_guidance=2.0, autoguidance=2.0, class_steps=300, guidance=3.0),
    # the denoiser: batches of 32 learn more per image than 128; a learning rate of 4e-3 measured best of
    # 2e-3, 4e-3 and 8e-3 in one run each, by about 3 points (bench/README.md, "How the cpu recipe of the
    # denoiser was chosen"); 4,900 steps fit in 10 minutes on 2 AVX2 cores (569 s; 5,200 took 615 s on
    # 2026-11-26). Told which of 100 k-means clusters each digit is in, then guided towards a drawn cluster:
    # 93.5 % of samples confident at w = 2 against 68 % for the same network without clusters
    # (bench/README.md, "Self-guidance")
    "cpu": DenoiserRecipe(channels=(32, 64), attention=False, time_dim=128, blocks=1,
                          steps=4_900, batch=32, lr=4e-3, guide_step=1_400, clusters=100, min_snr_gamma=5.0,
                          self_guidance=2.0, autoguidance=2.0, class_steps=4_000, guidance=3.0),
    "gpu": DenoiserRecipe(channels=(64, 128), attention=True, time_dim=256, blocks=2,
                          steps=8_000, batch=256, lr=1e-3, guide_step=1_000, clusters=100, min_snr_gamma=5.0,
                          self_guidance=2.0, autoguidance=2.0, class_steps=8_000, guidance=3.0),
}


def recipe_config(profile: Profile) -> DenoiserRecipe:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("denoiser", ...)`` changes."""
    return recipe_preset(PRESETS, "denoiser", profile)


# How the class model is guided by default (issue 36, bench/results/guidance_methods-cpu.json "defaults"):
# CFG only at t in [500, 999] (Kynkaenniemi et al. 2024, Sec. 3), the conditional prediction alone below, so
# 38 network passes instead of 50 at DDIM-25; at N = 1,000, 99.7 % of the asked digits either way, FID 34.9
# against 40.8 for CFG at every step (bench/README.md, "Guidance methods, measured").
CLASS_GUIDANCE = {"method": "interval", "interval": [500, 999]}


def sampling_defaults(profile: Profile) -> dict[str, dict]:
    """How each model of this recipe samples by default: {model name: {sampler, steps, guidance, ...}}."""
    r = recipe_config(profile)
    return {"denoiser": {"sampler": "ddim", "steps": profile.sample_steps, "guidance": r.self_guidance},
            "class": {"sampler": "ddim", "steps": profile.sample_steps, "guidance": r.guidance, **CLASS_GUIDANCE}}


def unet_config(profile: Profile, **changes) -> UNetConfig:
    """The UNet size a profile asks for (the recipe's ``channels``, ``attention``, ``time_dim``, ``blocks``)."""
    r = recipe_config(profile)
    return UNetConfig(channels=tuple(r.channels), attention=r.attention, time_dim=r.time_dim, blocks=r.blocks,
                      **changes)




# --------------------------------------------------------------------------- configs
def denoiser_config(profile: Profile) -> dict:
    """The unconditional denoiser: told the k-means cluster of each digit (``num_classes`` = clusters, found
    without labels, ``clusters.py``), or "no cluster" with probability ``p_uncond``."""
    r = recipe_config(profile)
    return {**unet_config(profile, num_classes=r.clusters).to_dict(),
            "T": profile.T, "schedule": profile.schedule, "n_train": profile.n_train,
            "min_snr_gamma": r.min_snr_gamma, "batch_size": r.batch,
            "lr": r.lr, "clusters": "k-means on pixels, seed 0", "p_uncond": profile.p_uncond}


def class_config(profile: Profile) -> dict:
    return {**unet_config(profile, num_classes=10).to_dict(), "T": profile.T,
            "schedule": profile.schedule, "n_train": profile.n_train, "p_uncond": profile.p_uncond}


# --------------------------------------------------------------------------- training
def _train_unet(name: str, cfg: dict, profile: Profile, steps: int, out, runtime, progress, stop_after,
                seed: int = 0, guide_step: int | None = None, sampling: dict | None = None) -> TrainResult:
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
                 checkpoint_every=profile.checkpoint_every, runtime=rt, stop_after=stop_after, seed=seed,
                 hooks=[ProgressBar(f"train {name}", progress), LossByT(profile.T)]
                 + ([GuideSnapshot(guide_step)] if guide_step is not None else []), rng_device=rt.device,
                 export=export_config({**cfg, "sampling": sampling}) if sampling else None)
    if "cluster_sizes" in meta:                # as load_unet gives them, so the result samples the same way
        result.model.cluster_sizes = result.ema_model.cluster_sizes = torch.tensor(meta["cluster_sizes"])
    return result


def train_denoiser(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                   progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the unconditional denoiser for ``profile`` (resumes from ``out`` when it holds one).

    It is told the k-means cluster of each training digit (the recipe's ``clusters``, found without
    labels), or "no cluster" with probability ``profile.p_uncond``; the cluster sizes are saved in
    ``training.json`` (``cluster_sizes``), and ``load_unet`` sets them as ``model.cluster_sizes`` for
    ``clusters.draw_clusters``. Batches hold the recipe's ``batch`` images, at learning rate ``lr``. The
    EMA weights after ``guide_step`` steps are kept too (``guide.safetensors``), for autoguidance; a run
    shorter than that keeps none. ``steps`` defaults to the recipe's.
    """
    r = recipe_config(profile)
    steps = steps or r.steps
    guide_step = r.guide_step if r.guide_step < steps else None
    return _train_unet("denoiser", denoiser_config(profile), profile, steps, out,
                       runtime, progress, stop_after, guide_step=guide_step, sampling=sampling_defaults(profile)["denoiser"])


def train_class_model(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                      progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the class-conditional denoiser, dropping labels with probability ``profile.p_uncond``
    (``steps`` defaults to the recipe's ``class_steps``)."""
    return _train_unet("class", class_config(profile), profile, steps or recipe_config(profile).class_steps, out,
                       runtime, progress, stop_after, sampling=sampling_defaults(profile)["class"])
