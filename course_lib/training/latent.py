"""Latent diffusion on digits (lesson 11): train the autoencoder, then the class-conditional UNet on its latents.

    1. autoencoder:  L = |x - decode(z)|_1 + kl_weight * KL(q(z|x) || N(0, I)),   z ~ q(z|x)
                     then the scaling factor s = 1 / std(z) over training images (so s * z has unit variance)
                     and the latent bound b, the 99.9th percentile of |s * z| (the latents' range)
    2. latent model: the training set encoded once; each step draws z ~ q(z|x) for a batch, and the class UNet
                     learns DDPM's L_simple on z0 = s * z (``forward.simple_loss``), labels dropped with
                     probability p_uncond (``guidance.drop_condition``) for classifier-free guidance
    3. sampling:     z0 from ``samplers.sample(..., shape=(C, 7, 7), clip_x0=b)`` with ``guidance.guided``;
                     images = decode(z0 / s). Clipping x0_hat to [-b, b] matters: the cosine schedule ends at
                     alpha_bar_T ~ 2e-9, so at the first step x0_hat = (z_T - sqrt(1 - alpha_bar) eps_hat) /
                     sqrt(alpha_bar) multiplies eps_hat's error by ~2e4 (the first, 2,000-step model unclipped:
                     46.5 % of samples showed the asked-for digit; clipped, 99 %: bench/README.md; the bound b
                     is the course's heuristic, not a Stable Diffusion step)

(Rombach et al. 2022, "High-Resolution Image Synthesis with Latent Diffusion Models", Sec. 3 and Appendix G.)
Both trainings run through ``training.loop.fit``: atomic checkpoints, EMA, resuming. The latent model records the
autoencoder's config and the SHA-256 of its weights; ``load_latent`` refuses another autoencoder.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import paths, store
from ..config import Profile, Runtime, autocast, get_runtime, inference_autocast, recipe_preset
from ..data.mnist import batch_indices, load_mnist
from ..diffusion.forward import simple_loss
from ..diffusion.guidance import drop_condition, guided
from ..diffusion.schedules import make_schedule
from ..networks.autoencoder import (
    Autoencoder,
    AutoencoderConfig,
    Posterior,
    kl_divergence,
    load_autoencoder,
    weights_sha256,
)
from ..networks.unet import UNet, UNetConfig, unet_from_config
from ..pipelines.latent import LatentDiffusion, _config_of
from . import checkpoints
from .denoiser import recipe_config as denoiser_recipe
from .loop import LossByT, ProgressBar, TrainResult, fit

__all__ = ["LatentRecipe", "PRESETS", "recipe_config", "sampling_defaults", "SCALE_IMAGES", "autoencoder_config",
           "autoencoder_loss", "measure_scaling_factor", "measure_latent_bound", "train_autoencoder", "latent_config",
           "encode_dataset", "train_latent", "reconstruct", "reconstruction_accuracy", "latent_quality", "step_costs",
           "scaling_factor_by_kl_weight"]

SCALE_IMAGES = 10_000        # training images the scaling factor is measured on (the first ones)

LATENT_BOUND_QUANTILE = 0.999  # the latent bound holds this fraction of the scaled latents' values


# --------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class LatentRecipe:
    """The autoencoder's and the latent model's sizes, steps and sampling defaults for one profile (the latent
    UNet's attention, time width and blocks are the denoiser recipe's; its batch and lr the profile's)."""
    latent_channels: int             # C of the 7x7xC latent (2 vs 4 measured: bench/README.md, "Latent diffusion")
    ae_channels: tuple[int, ...]     # autoencoder widths at 28x28, 14x14 and 7x7
    ae_steps: int                    # autoencoder training steps
    ae_batch: int
    ae_lr: float
    ae_kl_weight: float              # weight of the KL term, per pixel as in Stable Diffusion (1e-6 there)
    unet_channels: tuple[int, ...]   # the latent UNet's widths at 7x7 and 4x4
    steps: int                       # its training steps (batch_size images each)
    guidance: float                  # its default classifier-free guidance scale


PRESETS: dict[str, LatentRecipe] = {
    "test": LatentRecipe(latent_channels=4, ae_channels=(8, 16, 32), ae_steps=100, ae_batch=32, ae_lr=2e-3,
                         ae_kl_weight=1e-4, unet_channels=(16, 32), steps=200, guidance=3.0),
    "cpu": LatentRecipe(latent_channels=4, ae_channels=(16, 32, 64), ae_steps=600, ae_batch=128, ae_lr=2e-3,
                        ae_kl_weight=1e-4, unet_channels=(32, 64), steps=4_000, guidance=3.0),
    "gpu": LatentRecipe(latent_channels=4, ae_channels=(32, 64, 128), ae_steps=3_000, ae_batch=256, ae_lr=1e-3,
                        ae_kl_weight=1e-4, unet_channels=(64, 128), steps=8_000, guidance=3.0),
}


def recipe_config(profile: Profile) -> LatentRecipe:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("latent", ...)`` changes."""
    return recipe_preset(PRESETS, "latent", profile)


def sampling_defaults(profile: Profile) -> dict[str, dict]:
    """How the latent model samples by default: {"latent": {sampler, steps, guidance}}."""
    return {"latent": {"sampler": "ddim", "steps": profile.sample_steps, "guidance": recipe_config(profile).guidance}}


# --------------------------------------------------------------------------- 1. the autoencoder
def autoencoder_config(profile: Profile) -> dict:
    r = recipe_config(profile)
    return {**AutoencoderConfig(latent_channels=r.latent_channels, channels=tuple(r.ae_channels)).to_dict(),
            "n_train": profile.n_train, "kl_weight": r.ae_kl_weight, "batch_size": r.ae_batch, "lr": r.ae_lr}


def autoencoder_loss(model: Autoencoder, x: torch.Tensor, kl_weight: float, generator: torch.Generator
                     ) -> tuple[torch.Tensor, dict]:
    """|x - x_hat|_1 + kl_weight * KL, both summed over an image and divided by its 784 pixels, as Stable
    Diffusion's ``LPIPSWithDiscriminator`` weighs them (less its perceptual and adversarial terms).

    Returns: (loss, {"rec": mean L1 per pixel, "kl": mean KL per image}), the second part detached.
    """
    x_hat, post = model(x, generator)
    rec = (x_hat.float() - x).abs().flatten(1).mean(1)                    # (B,) L1 per pixel
    kl = kl_divergence(post.mean.float(), post.logvar.float())            # (B,) nats per image
    loss = (rec + kl_weight * kl / x[0].numel()).mean()
    return loss, {"rec": rec.mean().detach(), "kl": kl.mean().detach()}


@torch.no_grad()
def measure_scaling_factor(model: Autoencoder, x: torch.Tensor, generator: torch.Generator,
                           batch_size: int = 1000) -> float:
    """s = 1 / std(z), z ~ q(z | x) over the images ``x``: the latents the diffusion model sees, s * z, then
    have unit variance (Rombach et al. 2022, Sec. 4.3.2; Stable Diffusion's 0.18215)."""
    zs = [model.encode(x[i:i + batch_size]).sample(generator).float() for i in range(0, len(x), batch_size)]
    return float(1.0 / torch.cat(zs).std())


@torch.no_grad()
def measure_latent_bound(model: Autoencoder, x: torch.Tensor, scaling_factor: float, generator: torch.Generator,
                         q: float = LATENT_BOUND_QUANTILE, batch_size: int = 1000) -> float:
    """b = the ``q`` quantile of |s * z|, z ~ q(z | x) over the images ``x``: the range of the latents the
    diffusion model learns, the latent space's [-1, 1]. A sampler clips its x0 prediction to [-b, b]."""
    zs = [model.encode(x[i:i + batch_size]).sample(generator).float() for i in range(0, len(x), batch_size)]
    a = (scaling_factor * torch.cat(zs)).abs().flatten().sort().values
    return float(a[min(len(a) - 1, int(q * (len(a) - 1)))])


def train_autoencoder(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                      progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the autoencoder for ``profile`` (resumes from ``out``). Every checkpoint's ``config.json`` holds
    the ``scaling_factor`` and ``latent_bound`` measured with its EMA weights on the first ``SCALE_IMAGES``
    training images."""
    rt = runtime or get_runtime()
    cfg = autoencoder_config(profile)
    out = Path(out) if out is not None else paths.default_checkpoint("autoencoder")
    x, _ = load_mnist("train", profile=profile, device=rt.device)
    torch.manual_seed(0)
    model = Autoencoder(AutoencoderConfig.from_dict(cfg))

    def get_batch(g):
        return x[batch_indices(len(x), cfg["batch_size"], g, rt.device)]

    def loss_fn(m, batch, g):
        return autoencoder_loss(m, batch, cfg["kl_weight"], g)[0]

    def export(inner: Autoencoder, folder: Path) -> None:
        g = torch.Generator(device=rt.device).manual_seed(0)
        s = measure_scaling_factor(inner, x[:SCALE_IMAGES], g)
        b = measure_latent_bound(inner, x[:SCALE_IMAGES], s, g)
        save_file({k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**cfg, "scaling_factor": s, "latent_bound": b},
                                                        indent=2))

    meta = {"kind": "autoencoder", "profile": profile.name, "data": f"MNIST train, {len(x)} images"}
    return fit(model, loss_fn, get_batch, steps=steps or recipe_config(profile).ae_steps, lr=cfg["lr"],
               warmup_steps=profile.warmup_steps, batch_size=cfg["batch_size"], ema_decay=profile.ema_decay,
               config=cfg, meta=meta, out=out, checkpoint_every=profile.checkpoint_every, runtime=rt,
               export=export, stop_after=stop_after, hooks=[ProgressBar("train autoencoder", progress)],
               rng_device=rt.device)


def scaling_factor_by_kl_weight(profile: Profile, kl_weights=(1e-4, 1e-6), steps: int = 150,
                                runtime: Runtime | None = None, n_images: int = 2_000, seed: int = 0) -> dict:
    """What the KL weight does to the scaling factor: for each weight, a fresh autoencoder of the profile's size
    trained ``steps`` steps (the profile's batch and learning rate, plain AdamW, no EMA or checkpoints: a quick
    study, not the shipped recipe), then s = 1 / std(z) measured on ``n_images`` training digits.

    Returns: {kl_weight: {"scaling_factor": s, "rec_l1": the last batch's mean L1 per pixel}}.
    """
    if steps < 1 or not kl_weights or any(w < 0 for w in kl_weights):
        raise ValueError(f"need steps >= 1 and non-negative KL weights, got steps={steps}, kl_weights={kl_weights}")
    rt = runtime or get_runtime()
    cfg = autoencoder_config(profile)
    x, _ = load_mnist("train", n=max(n_images, cfg["batch_size"]), profile=profile, device=rt.device, quiet=True)
    out = {}
    for w in kl_weights:
        torch.manual_seed(seed)
        model = Autoencoder(AutoencoderConfig.from_dict(cfg)).to(rt.device)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"])
        g = torch.Generator(device=rt.device).manual_seed(seed)
        for _ in range(steps):
            with autocast(rt):
                loss, parts = autoencoder_loss(model, x[batch_indices(len(x), cfg["batch_size"], g, rt.device)], w, g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        out[w] = {"scaling_factor": measure_scaling_factor(model, x[:n_images], g),
                  "rec_l1": float(parts["rec"])}
    return out


# --------------------------------------------------------------------------- 2. the latent diffusion model
def latent_config(profile: Profile) -> dict:
    """The class-conditional UNet at 7x7 on C channels (no space-to-depth stem), the chain, and the
    autoencoder it works in (its config; the hash of its weights is added when training starts)."""
    r, d = recipe_config(profile), denoiser_recipe(profile)
    unet = UNetConfig(channels=tuple(r.unet_channels), attention=d.attention, time_dim=d.time_dim, blocks=d.blocks,
                      num_classes=10, in_channels=r.latent_channels, image_size=7, patch=1)
    return {**unet.to_dict(), "kind": "latent", "T": profile.T, "schedule": profile.schedule,
            "n_train": profile.n_train, "p_uncond": profile.p_uncond, "autoencoder": autoencoder_config(profile)}


@torch.no_grad()
def encode_dataset(model: Autoencoder, x: torch.Tensor, batch_size: int = 1000) -> Posterior:
    """q(z | x) for every image, once: (mean, logvar), each (N, C, 7, 7)."""
    parts = [model.encode(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return Posterior(torch.cat([p.mean for p in parts]), torch.cat([p.logvar for p in parts]))


def _autoencoder_for(profile: Profile, rt: Runtime, progress: bool) -> Path:
    """The finished autoencoder of ``profile`` (the user's, else the shipped one), trained now if missing."""
    from ..registry import find_usable, train_missing
    found = find_usable("autoencoder", profile)
    if found is not None and found[1] is profile:
        return found[0]
    return train_missing("autoencoder", profile, rt, progress)[0]


def train_latent(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                 progress: bool = True, stop_after: int | None = None, autoencoder: str | Path | None = None
                 ) -> TrainResult:
    """Train the class-conditional latent diffusion model (resumes from ``out``, but only on the same
    autoencoder: another one's latents would mean nothing to it).

    Args:
        autoencoder: the autoencoder folder (default: the profile's finished one, trained now if missing).
    Raises:
        ValueError: ``out`` holds a run on another autoencoder (another weights hash).
    """
    rt = runtime or get_runtime()
    cfg = latent_config(profile)
    out = Path(out) if out is not None else paths.default_checkpoint("latent")
    checkpoints.check_training_target(out)
    ae_folder = Path(autoencoder) if autoencoder is not None else _autoencoder_for(profile, rt, progress)
    ae = load_autoencoder(ae_folder, rt.device)
    diff = store.config_difference(_config_of(ae_folder), cfg["autoencoder"])
    if diff:
        raise ValueError(f"the autoencoder in {ae_folder} is not the one this profile's latent model uses "
                         f"({diff})")
    sha = weights_sha256(ae_folder)
    if store.has_checkpoint(out):
        saved = store.read_training(out).get("autoencoder_sha256")
        if saved not in (None, sha):
            raise ValueError(f"{out} holds a latent model trained on another autoencoder (weights sha256 "
                             f"{saved[:12]}..., {ae_folder} has {sha[:12]}...); delete {out} to start over")
    x, y = load_mnist("train", profile=profile, device=rt.device)
    start = time.perf_counter()
    post = encode_dataset(ae, x)                                        # once: (N, C, 7, 7) mean and logvar
    encode_seconds = time.perf_counter() - start
    s = ae.scaling_factor
    schedule = make_schedule(profile.schedule, profile.T, rt.device)
    torch.manual_seed(0)
    model = unet_from_config(cfg)

    def get_batch(g):
        idx = batch_indices(len(x), profile.batch_size, g, rt.device)
        z = Posterior(post.mean[idx], post.logvar[idx]).sample(g)       # z ~ q(z | x), fresh every step
        return s * z, y[idx]                                            # unit variance: z0 of the chain

    def loss_fn(m, batch, g):
        z0, labels = batch
        return simple_loss(m, z0, schedule, generator=g, cond=drop_condition(labels, cfg["p_uncond"], g),
                           return_parts=True)                           # DDPM Eq. (14), on latents

    def export(inner: UNet, folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in inner.state_dict().items()},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**cfg, "autoencoder_sha256": sha,
                                                        "sampling": sampling_defaults(profile)["latent"]}, indent=2))

    meta = {"kind": "latent", "profile": profile.name, "data": f"MNIST train, {len(x)} images, encoded",
            "autoencoder_sha256": sha, "scaling_factor": s,
            "encode_seconds": round(encode_seconds, 1)}
    return fit(model, loss_fn, get_batch, steps=steps or recipe_config(profile).steps, lr=profile.lr,
               warmup_steps=profile.warmup_steps, batch_size=profile.batch_size, ema_decay=profile.ema_decay,
               config=cfg, meta=meta, out=out, checkpoint_every=profile.checkpoint_every, runtime=rt,
               export=export, stop_after=stop_after, hooks=[ProgressBar("train latent", progress), LossByT(profile.T)],
               rng_device=rt.device)


# --------------------------------------------------------------------------- measuring
@torch.no_grad()
def reconstruct(model: Autoencoder, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """decode(mean of q(z | x)), clamped to [-1, 1]: the deterministic reconstruction. x: (N, 1, 28, 28)."""
    return torch.cat([model.decode(model.encode(x[i:i + batch_size]).mean).clamp(-1, 1)
                      for i in range(0, len(x), batch_size)])


def reconstruction_accuracy(model: Autoencoder, profile: Profile, runtime: Runtime | None = None,
                            return_original: bool = False):
    """The course classifier's accuracy on the reconstructions of the first ``profile.n_test`` test digits
    (with ``return_original``: (that, its accuracy on the originals))."""
    from ..networks.classifier import classify, label_accuracy
    from ..registry import get_model
    rt = runtime or get_runtime()
    clf = get_model("classifier", profile, rt, progress=False)
    x, y = load_mnist("test", profile=profile, device=rt.device, quiet=True)
    acc = label_accuracy(classify(clf, reconstruct(model.to(rt.device), x))[0], y)
    return (acc, label_accuracy(classify(clf, x)[0], y)) if return_original else acc


def latent_quality(model: LatentDiffusion, profile: Profile, runtime: Runtime | None = None) -> dict:
    """``profile.n_eval`` guided samples (labels 0-9 in turn, with the recipe's ``sampling_defaults``: DDIM
    steps and guidance w), as ``course.weights.measure`` gives the pixel class model's."""
    from ..measures.metrics import evaluate_samples
    from ..registry import get_model
    rt = runtime or get_runtime()
    clf = get_model("classifier", profile, rt, progress=False)
    n = profile.n_eval
    d = sampling_defaults(profile)["latent"]
    labels = torch.arange(n) % 10
    x = model.generate(labels=labels, guidance=d["guidance"], steps=d["steps"],
                       generator=torch.Generator().manual_seed(0))
    ev = evaluate_samples(clf, x, labels)
    return {"confident": round(float(ev["confident"]), 4), "accuracy": round(float(ev["accuracy"]), 4),
            "n": n, "sampler": f"ddim-{d['steps']}", "guidance": d["guidance"]}


def step_costs(profile: Profile, runtime: Runtime | None = None, steps: int = 3, rounds: int = 1,
               guidance: float | None = None) -> dict:
    """What one UNet step costs on pixels and on latents: lesson 05's class UNet on (1, 28, 28) and the
    latent UNet on (C, 7, 7), both freshly made at the profile's sizes (timing needs no trained weights) and
    fed one batch of ``profile.batch_size`` random inputs of their shape.

    Per model: a training step (DDPM's L_simple forward under the runtime's autocast, backward, AdamW) and a
    guided sampling step (one doubled batch), each timed ``steps`` times after two warm-up steps, in
    ``rounds`` rounds that alternate the models; wall-clock and this process's CPU time.

    Returns: {"pixel": {...}, "latent": {...}, "batch", "steps_timed", "train_ratio_wall",
    "train_ratio_cpu_time", "sample_ratio_cpu_time"}; each model's entry holds ``train_step_s``,
    ``train_images_per_s_wall``, ``train_images_per_s_cpu_time``, ``sample_step_s``, ``sample_step_cpu_s``
    and ``numbers_per_image``.
    """
    from .denoiser import class_config
    rt = runtime or get_runtime()
    w = recipe_config(profile).guidance if guidance is None else guidance
    B = profile.batch_size
    schedule = make_schedule(profile.schedule, profile.T, rt.device)
    g = torch.Generator(device=rt.device).manual_seed(0)
    labels = (torch.arange(B) % 10).to(rt.device)
    t = torch.randint(0, profile.T, (B,), generator=g, device=rt.device)
    torch.manual_seed(0)
    shapes = {"pixel": (1, 28, 28), "latent": (recipe_config(profile).latent_channels, 7, 7)}
    nets = {"pixel": unet_from_config(class_config(profile)).to(rt.device),
            "latent": unet_from_config(latent_config(profile)).to(rt.device)}
    opts = {name: torch.optim.AdamW(net.parameters(), lr=profile.lr) for name, net in nets.items()}
    x0s = {name: torch.randn(B, *shapes[name], generator=g, device=rt.device) for name in nets}

    def train_step(name: str) -> None:
        with autocast(rt):
            loss = simple_loss(nets[name], x0s[name], schedule, generator=g,
                               cond=drop_condition(labels, profile.p_uncond, g))
        opts[name].zero_grad(set_to_none=True)
        loss.backward()
        opts[name].step()

    @torch.no_grad()
    def sample_step(name: str) -> None:
        with inference_autocast(rt.device):
            guided(nets[name], w)(x0s[name], t, labels)

    totals = {(name, kind): [0.0, 0.0] for name in nets for kind in ("train", "sample")}
    for _ in range(rounds):
        for name in nets:
            for kind, fn in (("train", train_step), ("sample", sample_step)):
                for _ in range(2):                                       # warm-up
                    fn(name)
                w0, c0 = time.perf_counter(), time.process_time()
                for _ in range(steps):
                    fn(name)
                totals[name, kind][0] += time.perf_counter() - w0
                totals[name, kind][1] += time.process_time() - c0
    n = steps * rounds
    out: dict = {"batch": B, "steps_timed": n}
    for name, shape in shapes.items():
        (tw, tc), (sw, sc) = totals[name, "train"], totals[name, "sample"]
        out[name] = {"train_step_s": tw / n, "train_images_per_s_wall": B * n / tw,
                     "train_images_per_s_cpu_time": B * n / tc, "sample_step_s": sw / n, "sample_step_cpu_s": sc / n,
                     "numbers_per_image": shape[0] * shape[1] * shape[2]}
    out["train_ratio_wall"] = out["latent"]["train_images_per_s_wall"] / out["pixel"]["train_images_per_s_wall"]
    out["train_ratio_cpu_time"] = (out["latent"]["train_images_per_s_cpu_time"]
                                   / out["pixel"]["train_images_per_s_cpu_time"])
    out["sample_ratio_cpu_time"] = out["pixel"]["sample_step_cpu_s"] / out["latent"]["sample_step_cpu_s"]
    return out
