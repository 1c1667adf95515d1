"""The speedrun (issue 38): the fastest recipe from nothing to good digits on a laptop CPU, through ``loop.fit``.

One recipe, written so that each lever the study in ``bench/speedrun.py`` pulls is a field of it: pixels or the
shipped autoencoder's latents (``space``), the noise or the velocity target (``objective``), logit-normal or
uniform times, Min-SNR, learning rate and warm-up, EMA decay, batch, width and depth, ``channels_last`` and
``torch.compile`` on the CPU. Lesson 05's class model, lesson 11's latent model and lesson 12's flow model are
points of this space (``STUDY_BASES``: their UNet, loss, batch and optimiser settings), so the bench times them
with the same code, the same hook and the same clock as the winner.

    SpeedrunRecipe, PRESETS     the registered model's recipe per profile; ``recipe_config(profile)``,
                                ``sampling_defaults(profile)``
    speedrun_config(recipe, profile)   the config saved beside the weights (a flow model: FlowToImage samples it)
    build_run(recipe, profile, rt)     what ``fit`` needs (model, loss, batches) and how to sample the model
    train_speedrun(profile, out, runtime, steps, progress, stop_after)  ``python -m course_lib train speedrun``
    Every                        a ``fit`` hook: call a function every N seconds of *training* time, the time it
                                 takes kept off the clock (the bench's curve, the lesson's grid every minute)
    flops_per_image(recipe, profile)   the FLOPs of one training image (forward and backward), counted by torch

The registered ``speedrun`` model is a pixel-space flow model (its folder is a flow model's, so ``FlowToImage``
and ``sample --checkpoint`` sample it with its folder's defaults); the study's other points are timed by the
bench only.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import paths
from ..config import Profile, Runtime, get_runtime, recipe_preset
from ..data.mnist import batch_indices, load_mnist
from ..diffusion import flow
from ..diffusion.forward import simple_loss
from ..diffusion.guidance import drop_condition, guided
from ..diffusion.samplers import sample as ddpm_sample
from ..diffusion.schedules import make_schedule
from ..networks.unet import UNetConfig, unet_from_config
from .checkpoints import export_config
from .loop import Hook, LossByT, ProgressBar, Run, TrainResult, fit

__all__ = ["SpeedrunRecipe", "PRESETS", "STUDY_BASES", "recipe_config", "sampling_defaults", "check_recipe",
           "speedrun_config", "speedrun_config_from_profile", "SpeedrunRun", "build_run", "train_speedrun", "Every", "flops_per_image"]

SPACES = ("pixel", "latent")
OBJECTIVES = ("flow", "eps")


@dataclass(frozen=True)
class SpeedrunRecipe:
    """Every lever of the speedrun, for one profile."""
    space: str                       # "pixel" (28x28) or "latent" (the shipped autoencoder's 4x7x7, frozen)
    objective: str                   # "flow" (velocity, flow matching) or "eps" (noise, DDPM's L_simple)
    time: str                        # flow: training times "logit-normal" or "uniform" (``flow.sample_time``)
    min_snr_gamma: float | None      # Min-SNR-gamma weighting (Hang et al. 2023); None: plain MSE
    channels: tuple[int, int]        # UNet width at its two levels
    blocks: int                      # residual blocks per level
    time_dim: int                    # time-embedding width
    steps: int                       # training steps
    batch: int                       # batch size
    lr: float                        # AdamW peak learning rate
    warmup: int                      # linear warm-up steps (then cosine to 10 %)
    ema_decay: float                 # EMA decay (warmed up: d_n = min(decay, (1 + n) / (10 + n)), loop.EMA)
    channels_last: bool              # NHWC tensors for the convolutions
    compile: bool                    # torch.compile the training forward and backward (CPU: inductor)
    sample_steps: int                # default sampling steps (Euler for flow, DDIM for eps)
    guidance: float                  # default classifier-free guidance scale


PRESETS: dict[str, SpeedrunRecipe] = {
    "test": SpeedrunRecipe(space="pixel", objective="flow", time="logit-normal", min_snr_gamma=None,
                           channels=(16, 32), blocks=1, time_dim=64, steps=60, batch=32, lr=4e-3, warmup=10,
                           ema_decay=0.99, channels_last=False, compile=False, sample_steps=5, guidance=1.5),
    # bench/speedrun.py (bench/README.md, "bench/speedrun.py"): lesson 12's flow model with a quarter of its batch
    # at twice its learning rate and half its warm-up (batch 32 beat 64, and 64 beat lesson 12's 128, at every
    # 30 s of the study), channels_last (1.35x the training rate on this project's CPU, the same arithmetic);
    # 2,200 steps: about 3.5 minutes on 1 thread of the shared 2 cores, so that `train speedrun` fits in 5 with
    # its start-up
    "cpu": SpeedrunRecipe(space="pixel", objective="flow", time="logit-normal", min_snr_gamma=None,
                          channels=(32, 64), blocks=1, time_dim=128, steps=2_200, batch=32, lr=4e-3, warmup=50,
                          ema_decay=0.999, channels_last=True, compile=False, sample_steps=10, guidance=1.5),
    "gpu": SpeedrunRecipe(space="pixel", objective="flow", time="logit-normal", min_snr_gamma=None,
                          channels=(64, 128), blocks=1, time_dim=128, steps=3_000, batch=256, lr=2e-3, warmup=100,
                          ema_decay=0.999, channels_last=False, compile=False, sample_steps=10, guidance=1.5),
}

# the other lessons' recipes as points of this space, for the bench's curves (their UNet, loss, batch, optimiser)
STUDY_BASES: dict[str, dict] = {
    "class (lesson 05)": dict(space="pixel", objective="eps", time="uniform", min_snr_gamma=None, batch=128,
                              lr=2e-3, warmup=100, ema_decay=0.999, sample_steps=25, guidance=2.0),
    "flow (lesson 12)": dict(space="pixel", objective="flow", time="logit-normal", min_snr_gamma=None, batch=128,
                             lr=2e-3, warmup=100, ema_decay=0.999, sample_steps=10, guidance=1.5),
    "latent (lesson 11)": dict(space="latent", objective="eps", time="uniform", min_snr_gamma=None, batch=128,
                               lr=2e-3, warmup=100, ema_decay=0.999, sample_steps=25, guidance=3.0),
    "latent flow": dict(space="latent", objective="flow", time="logit-normal", min_snr_gamma=None, batch=128,
                        lr=2e-3, warmup=100, ema_decay=0.999, sample_steps=10, guidance=1.5),
}


def check_recipe(r: SpeedrunRecipe) -> SpeedrunRecipe:
    """Refuse a recipe with an unknown choice or a size that cannot train, in one line, before any compute."""
    if r.space not in SPACES:
        raise ValueError(f"space must be one of {', '.join(SPACES)}, got {r.space!r}")
    if r.objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {r.objective!r}")
    if r.time not in flow.TIMES:
        raise ValueError(f"time must be one of {', '.join(flow.TIMES)}, got {r.time!r}")
    for name in ("steps", "batch", "blocks", "time_dim", "sample_steps"):
        v = getattr(r, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {v!r}")
    if not (0 < r.lr < 1) or not (0 <= r.ema_decay < 1) or r.warmup < 0 or r.guidance < 0:
        raise ValueError(f"lr must be in (0, 1), ema_decay in [0, 1), warmup and guidance >= 0; got lr={r.lr}, "
                         f"ema_decay={r.ema_decay}, warmup={r.warmup}, guidance={r.guidance}")
    if r.min_snr_gamma is not None and not r.min_snr_gamma > 0:
        raise ValueError(f"min_snr_gamma must be a positive number or None, got {r.min_snr_gamma!r}")
    if len(r.channels) != 2 or any(c % 8 for c in r.channels):
        raise ValueError(f"channels must be two multiples of 8 (GroupNorm's 8 groups), got {r.channels!r}")
    return r


def recipe_config(profile: Profile) -> SpeedrunRecipe:
    """The registered speedrun's preset for ``profile``, with the profile's ``with_recipe("speedrun", ...)``."""
    return check_recipe(recipe_preset(PRESETS, "speedrun", profile))


def sampling_defaults(profile: Profile) -> dict[str, dict]:
    """How the speedrun model samples by default: {"speedrun": {sampler, steps, guidance}}."""
    r = recipe_config(profile)
    return {"speedrun": {"sampler": "euler" if r.objective == "flow" else "ddim", "steps": r.sample_steps,
                         "guidance": r.guidance}}


def _unet_config(r: SpeedrunRecipe) -> UNetConfig:
    latent = r.space == "latent"
    return UNetConfig(channels=tuple(r.channels), attention=False, time_dim=r.time_dim, blocks=r.blocks,
                      num_classes=10, in_channels=4 if latent else 1, image_size=7 if latent else 28,
                      patch=1 if latent else 2)


def speedrun_config(r: SpeedrunRecipe, profile: Profile) -> dict:
    """The model config: a flow model's (``"objective": "flow"``, so ``FlowToImage`` loads a pixel one) or a
    DDPM class model's (T and schedule), with every lever of the recipe beside it."""
    cfg = {**_unet_config(r).to_dict(), "n_train": profile.n_train, "p_uncond": profile.p_uncond,
           "recipe": "speedrun", "space": r.space, "min_snr_gamma": r.min_snr_gamma, "batch_size": r.batch,
           "lr": r.lr, "warmup": r.warmup, "ema_decay": r.ema_decay}
    if r.objective == "flow":
        return {**cfg, "objective": "flow", "time": r.time, "time_scale": flow.TIME_SCALE}
    return {**cfg, "T": profile.T, "schedule": profile.schedule}


def speedrun_config_from_profile(profile: Profile) -> dict:
    """The registered model's config under ``profile`` (``registry.find_matching`` compares it)."""
    return speedrun_config(recipe_config(profile), profile)


def _flow_min_snr(gamma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """Min-SNR-gamma on the straight path (x_t = (1 - t) x0 + t eps, SNR = ((1 - t) / t)^2): the x0 error
    weighted by min(SNR, gamma) (Hang et al. 2023, Eq. 8), written on the velocity error (x0 error = t * v
    error), divided by gamma so the weight is at most 1."""
    def weight(t: torch.Tensor) -> torch.Tensor:
        t = t.clamp(1e-4, 1.0)
        return torch.minimum(((1 - t) / t) ** 2, torch.full_like(t, gamma)) * t ** 2 / gamma
    return weight


@dataclass
class SpeedrunRun:
    """One speedrun, ready for ``fit``: the fresh model, its loss and batches, and how to sample it."""
    recipe: SpeedrunRecipe
    config: dict
    model: torch.nn.Module
    loss_fn: Callable
    get_batch: Callable
    prepare_seconds: float           # loading (and encoding, in latent space) the training digits
    n_train: int
    sample: Callable[..., torch.Tensor]   # sample(model, labels, seed=0, guidance=None, steps=None) -> images


def build_run(r: SpeedrunRecipe, profile: Profile, rt: Runtime | None = None, autoencoder=None,
              seed: int = 0) -> SpeedrunRun:
    """The model, loss, batches and sampler of recipe ``r`` (checked first). ``autoencoder``: the frozen
    ``networks.autoencoder.Autoencoder`` a latent recipe encodes the digits with (its encoding is timed)."""
    rt = rt or get_runtime()
    check_recipe(r)
    if r.space == "latent" and autoencoder is None:
        raise ValueError("a latent recipe needs the frozen autoencoder: pass autoencoder= (the shipped one: "
                         "registry.get_model('autoencoder', profile))")
    cfg = speedrun_config(r, profile)
    t0 = time.perf_counter()
    x, y = load_mnist("train", profile=profile, device=rt.device)
    post, scale = None, 1.0
    if r.space == "latent":
        from .latent import encode_dataset                           # the latent recipe's own, once per run
        ae = autoencoder.to(rt.device).eval()
        post, scale = encode_dataset(ae, x), ae.scaling_factor
    prepare = time.perf_counter() - t0
    torch.manual_seed(seed)
    model = unet_from_config(cfg)
    fmt = torch.channels_last if r.channels_last else torch.contiguous_format
    if r.channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if r.compile else model           # shares the weights fit trains
    schedule = make_schedule(profile.schedule, profile.T, rt.device) if r.objective == "eps" else None
    weight = _flow_min_snr(r.min_snr_gamma) if (r.min_snr_gamma and r.objective == "flow") else None

    def get_batch(g):
        idx = batch_indices(len(x), r.batch, g, rt.device)
        if post is None:
            return x[idx].contiguous(memory_format=fmt), y[idx]
        from ..networks.autoencoder import Posterior
        z = Posterior(post.mean[idx], post.logvar[idx]).sample(g)
        return (scale * z).contiguous(memory_format=fmt), y[idx]

    def loss_fn(m, batch, g):
        x0, labels = batch
        cond = drop_condition(labels, profile.p_uncond, g)          # Ho & Salimans 2022, Algorithm 1
        if r.objective == "flow":
            return flow_loss_parts(forward, x0, r.time, g, cond, weight)
        return simple_loss(forward, x0, schedule, generator=g, cond=cond, min_snr_gamma=r.min_snr_gamma,
                           return_parts=True)

    shape = (4, 7, 7) if r.space == "latent" else (1, 28, 28)

    @torch.no_grad()
    def sample(net, labels, seed: int = 0, guidance: float | None = None, steps: int | None = None):
        net = net.eval()
        labels = torch.as_tensor(labels).long().to(rt.device)
        w = r.guidance if guidance is None else guidance
        g = torch.Generator().manual_seed(seed)
        n, k = len(labels), steps or r.sample_steps
        if r.objective == "flow":
            z = flow.sample(guided(net, w), n, steps=k, generator=g, cond=labels, device=rt.device, shape=shape)
        else:
            bound = (autoencoder.latent_bound or False) if r.space == "latent" else None
            z = ddpm_sample(guided(net, w), n, schedule, sampler="ddim", steps=k, generator=g, cond=labels,
                            device=rt.device, shape=shape, clip_x0=bound)
        if r.space == "latent":
            z = torch.cat([autoencoder.from_latent(z[i:i + 500]).float() for i in range(0, n, 500)])
        return z.float().cpu().clamp(-1, 1)

    return SpeedrunRun(r, cfg, model, loss_fn, get_batch, prepare, len(x), sample)


def flow_loss_parts(model, x0, time_, g, cond, weight):
    """``flow.flow_loss`` with its parts for ``LossByT``."""
    return flow.flow_loss(model, x0, time=time_, generator=g, cond=cond, weight=weight, return_parts=True)


class Every(Hook):
    """Call ``fn(ema_model, train_seconds, step)`` every ``seconds`` of training time, and once after the last
    step. The time ``fn`` takes is kept off the clock (``train_seconds`` is the training alone); its results
    are in ``records``, each with ``train_s`` and ``step`` added. The EMA model is handed over in eval mode
    and put back in train mode after."""

    def __init__(self, seconds: float, fn: Callable[[torch.nn.Module, float, int], dict | None],
                 at_end: bool = True):
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        self.seconds, self.fn, self.at_end = float(seconds), fn, at_end
        self.records: list[dict] = []
        self.paused = 0.0
        self.next = self.seconds

    def train_seconds(self, run: Run) -> float:
        return time.perf_counter() - run.t0 - self.paused

    def _call(self, run: Run, step: int) -> None:
        t = self.train_seconds(run)
        start = time.perf_counter()
        model = run.ema.module
        was_training = model.training
        rec = self.fn(model.eval(), t, step + 1) or {}
        model.train(was_training)
        self.records.append({"train_s": round(t, 2), "step": step + 1, **rec})
        self.paused += time.perf_counter() - start

    def after_step(self, run: Run, step: int, extras: dict) -> None:
        if step + 1 == run.end and self.at_end:
            self._call(run, step)
        elif self.train_seconds(run) >= self.next:
            self._call(run, step)
            while self.next <= self.records[-1]["train_s"]:
                self.next += self.seconds


def run_fit(run: SpeedrunRun, profile: Profile, rt: Runtime, *, out=None, steps: int | None = None,
            progress: bool = True, stop_after: int | None = None, seed: int = 0, hooks=(), export=None,
            meta: dict | None = None) -> TrainResult:
    """``loop.fit`` on a built run, with the recipe's batch, learning rate, warm-up and EMA."""
    r = run.recipe
    meta = {"kind": "speedrun", "profile": profile.name, "data": f"MNIST train, {run.n_train} images"
            + (", encoded" if r.space == "latent" else ""), "prepare_seconds": round(run.prepare_seconds, 2),
            **(meta or {})}
    return fit(run.model, run.loss_fn, run.get_batch, steps=steps or r.steps, lr=r.lr, warmup_steps=r.warmup,
               batch_size=r.batch, ema_decay=r.ema_decay, config=run.config, meta=meta, out=out,
               checkpoint_every=profile.checkpoint_every if out is not None else 0, runtime=rt,
               stop_after=stop_after, seed=seed, export=export, rng_device=rt.device,
               hooks=[ProgressBar("train speedrun", progress), *hooks,
                      LossByT(int(flow.TIME_SCALE) if r.objective == "flow" else profile.T)])


def train_speedrun(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                   progress: bool = True, stop_after: int | None = None, seed: int = 0, hooks=()) -> TrainResult:
    """Train the registered speedrun model from nothing (resumes from ``out``, default
    ``checkpoints/speedrun/``); ``hooks``: more ``fit`` hooks (the lesson's ``Every`` grid)."""
    rt = runtime or get_runtime()
    r = recipe_config(profile)
    if (r.space, r.objective) != ("pixel", "flow"):
        raise ValueError(f"the registered speedrun model is a pixel flow model (FlowToImage samples it), not "
                         f"{r.space} {r.objective}: time the others with bench/speedrun.py")
    out = Path(out) if out is not None else paths.default_checkpoint("speedrun")
    run = build_run(r, profile, rt, seed=seed)
    export = export_config({**run.config, "sampling": sampling_defaults(profile)["speedrun"]})
    return run_fit(run, profile, rt, out=out, steps=steps, progress=progress, stop_after=stop_after, seed=seed,
                   hooks=hooks, export=export)


def flops_per_image(r: SpeedrunRecipe, profile: Profile, batch: int = 16) -> dict:
    """The FLOPs of one training image of recipe ``r`` (forward and backward of its UNet, counted by
    ``torch.utils.flop_counter``: convolutions and matrix products, each multiply-add 2 FLOPs), in all and by
    operator."""
    from torch.utils.flop_counter import FlopCounterMode
    r = check_recipe(dataclasses.replace(r, compile=False, channels_last=False))
    model = unet_from_config(speedrun_config(r, profile))
    shape = (4, 7, 7) if r.space == "latent" else (1, 28, 28)
    x = torch.randn(batch, *shape)
    t = torch.rand(batch) * 999
    labels = torch.arange(batch) % 10
    with FlopCounterMode(display=False) as counter:
        model(x, t, labels).pow(2).mean().backward()
    by_op = {str(k).split(".")[-1]: v / batch for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": counter.get_total_flops() / batch, "by_operator": by_op}
