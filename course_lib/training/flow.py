"""Training the class-conditional flow model (lesson 12) through ``training.loop.fit``: the class model's UNet, data,
batch, steps, learning rate and label dropout (lesson 05), with the flow-matching loss in place of DDPM's.

    FlowRecipe, PRESETS         its steps and sampling defaults per profile; ``recipe_config(profile)``,
                                ``sampling_defaults(profile)``
    flow_config(profile)        the config saved beside the weights ("objective": "flow", "time": ...)
    train_flow(profile, out, runtime, steps, progress, stop_after)   ``python -m course_lib train flow``
    load_flow(path, device)     the EMA model in eval mode, ``objective = "flow"`` (``networks.unet.load_unet``)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .. import paths
from ..config import Profile, Runtime, cpu_runtime, get_runtime, recipe_preset
from ..data.mnist import batch_indices, load_mnist
from ..diffusion.flow import TIME_SCALE, flow_loss
from ..diffusion.guidance import drop_condition
from ..networks.toy import ToyDenoiser
from ..networks.unet import UNet, load_unet, unet_from_config
from . import toy
from .denoiser import unet_config
from .checkpoints import export_config
from .loop import LossByT, ProgressBar, TrainResult, fit

__all__ = ["FlowRecipe", "PRESETS", "recipe_config", "sampling_defaults", "flow_config", "train_flow", "load_flow",
           "train_toy_flow", "TIME"]

TIME = "logit-normal"        # training times t = sigmoid(N(0, 1)) (Esser et al. 2024, SD3: their best)


@dataclass(frozen=True)
class FlowRecipe:
    """The flow model's training steps and sampling defaults for one profile (its UNet is the class model's,
    ``denoiser.unet_config``; batch and learning rate the profile's)."""
    steps: int                       # training steps (the class model's, for an equal-budget comparison)
    sample_steps: int                # Euler/Heun steps used by default
    guidance: float                  # default classifier-free guidance scale on the velocity


PRESETS: dict[str, FlowRecipe] = {
    "test": FlowRecipe(steps=150, sample_steps=10, guidance=2.0),
    # the class model's steps and batch; w = 1.5 from bench/flow_matching.py's grid
    "cpu": FlowRecipe(steps=4_000, sample_steps=10, guidance=1.5),
    "gpu": FlowRecipe(steps=8_000, sample_steps=10, guidance=2.0),
}


def recipe_config(profile: Profile) -> FlowRecipe:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("flow", ...)`` changes."""
    return recipe_preset(PRESETS, "flow", profile)


def sampling_defaults(profile: Profile) -> dict[str, dict]:
    """How the flow model samples by default: {"flow": {sampler, steps, guidance}}."""
    r = recipe_config(profile)
    return {"flow": {"sampler": "euler", "steps": r.sample_steps, "guidance": r.guidance}}


def flow_config(profile: Profile) -> dict:
    """The class model's UNet (``training.denoiser.class_config``) told it predicts a velocity on the straight path."""
    return {**unet_config(profile, num_classes=10).to_dict(), "objective": "flow", "time": TIME,
            "time_scale": TIME_SCALE, "n_train": profile.n_train, "p_uncond": profile.p_uncond}


def train_flow(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
               progress: bool = True, stop_after: int | None = None, seed: int = 0) -> TrainResult:
    """Train the flow model for ``profile`` (resumes from ``out``, default ``checkpoints/flow/``): the class
    model's recipe (batch ``profile.batch_size``, learning rate ``profile.lr``, labels dropped to "none"
    with probability ``profile.p_uncond``) for the recipe's ``steps``, on ``flow.flow_loss``."""
    rt = runtime or get_runtime()
    cfg = flow_config(profile)
    out = Path(out) if out is not None else paths.default_checkpoint("flow")
    x, y = load_mnist("train", profile=profile, device=rt.device)
    torch.manual_seed(seed)                    # the initial weights do not depend on what ran before
    model = unet_from_config(cfg)

    def get_batch(g):
        idx = batch_indices(len(x), profile.batch_size, g, rt.device)
        return x[idx], y[idx]

    def loss_fn(m, batch, g):
        x0, labels = batch
        cond = drop_condition(labels, cfg["p_uncond"], g)                 # Ho & Salimans 2022, Algorithm 1
        return flow_loss(m, x0, time=cfg["time"], generator=g, cond=cond, return_parts=True)

    meta = {"kind": "flow", "profile": profile.name, "data": f"MNIST train, {len(x)} images"}
    return fit(model, loss_fn, get_batch, steps=steps or recipe_config(profile).steps, lr=profile.lr,
               warmup_steps=profile.warmup_steps, batch_size=profile.batch_size, ema_decay=profile.ema_decay,
               config=cfg, meta=meta, out=out, checkpoint_every=profile.checkpoint_every, runtime=rt,
               stop_after=stop_after, seed=seed, hooks=[ProgressBar("train flow", progress), LossByT(int(TIME_SCALE))],
               rng_device=rt.device, export=export_config({**cfg, "sampling": sampling_defaults(profile)["flow"]}))


def load_flow(path: str | Path, device: torch.device | str = "cpu") -> UNet:
    """The flow model in ``path`` (EMA weights, eval mode), refusing a folder that holds a DDPM model."""
    model, cfg = load_unet(path, device)
    if cfg.get("objective") != "flow":
        raise ValueError(f"{path} holds a DDPM model (it predicts the noise), not a flow model: "
                         f"train one with `python -m course_lib train flow`")
    return model


def train_toy_flow(profile: Profile, data: str = "ring", runtime: Runtime | None = None,
                   steps: int | None = None, pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
                   progress: bool = True) -> tuple[torch.nn.Module, TrainResult]:
    """Lesson 03's 2-D toy network (``networks.toy.ToyDenoiser``) trained as a flow: it predicts v at
    t * TIME_SCALE, times uniform (Liu et al. 2023). With ``pairs`` = (x0, z) from ``flow.reflow_pairs`` it
    learns the flow of that coupling instead of fresh noise ("reflow"). Returns (EMA model, training result)."""
    rt = runtime or cpu_runtime()                   # tiny MLPs are faster on the CPU than on a GPU
    makers = {"ring": toy.ring, "swiss_roll": toy.swiss_roll}
    if data not in makers:
        raise ValueError(f"data must be one of {', '.join(makers)}, got {data!r}")
    points = makers[data](20_000, torch.Generator().manual_seed(0)) if pairs is None else pairs[0]
    noise = None if pairs is None else pairs[1].to(rt.device)
    points = points.to(rt.device)

    def get_batch(g):
        idx = torch.randint(0, len(points), (256,), generator=g).to(rt.device)
        return points[idx], (None if noise is None else noise[idx])

    def loss_fn(m, batch, g):
        x0, eps = batch
        return flow_loss(m, x0, time="uniform", generator=g, eps=eps)

    torch.manual_seed(0)
    kind = "toy flow" + (" (reflow)" if pairs is not None else "")
    steps = steps or toy.recipe_config(profile).steps
    res = fit(ToyDenoiser(), loss_fn, get_batch, steps=steps, lr=3e-3, warmup_steps=50,
              batch_size=256, ema_decay=0.99, config={"kind": kind, "data": data}, runtime=rt,
              hooks=[ProgressBar(kind, progress)])
    return res.ema_model, res
