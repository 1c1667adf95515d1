"""Training unCLIP on digits: the decoder on (digit, its own CLIP image embedding), the prior on (caption's CLIP
text embedding, the digit's image embedding), both through the course's one loop (``training.loop.fit``); then the
measures of lesson 10 (image variations; prompt accuracy and attributes reuse ``text2image_training``).

    UnclipRecipe, PRESETS  its steps, prior sizes and sampling defaults per profile; ``recipe_config(profile)``,
                         ``sampling_defaults(profile)`` (written into the folder's ``config.json``)
    unclip_config        the model config: decoder UNet, prior MLP, schedules, the CLIP they are built on
    check_unclip_target  refuse, before any compute, a folder training must not write into
    train_unclip         the run: CLIP embeddings computed once, then the decoder, then the prior (resuming)
    variation_measures   do variations keep the source's class, and how diverse are they?

**The embeddings are computed once.** The course CLIP is frozen: every training digit's image embedding is one
batched pass (``clip.embed_images``, no grad) into a table, and every caption training can draw
(``captions.all_captions``) is embedded once (``clip.embed_text``); the loops only index the tables.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import paths, store
from ..config import Profile, Runtime, get_runtime, recipe_preset
from ..data import captions
from ..data.mnist import batch_indices, load_mnist, to_device
from ..diffusion.forward import q_sample, simple_loss
from ..diffusion.guidance import drop_condition
from ..diffusion.schedules import Schedule, make_schedule
from ..networks.clip import embed_images, embed_text, save_clip
from ..networks.prior import DiffusionPrior, PriorConfig, embed_scale
from ..networks.unet import UNet, UNetConfig
from ..pipelines.unclip import UnCLIP
from ..text import vocabulary
from . import checkpoints
from .clip import clip_config_from_profile, get_clip
from .denoiser import unet_config
from .loop import LossByT, ProgressBar, TrainResult, fit
from .text2image import P_MENTION

__all__ = ["UnclipRecipe", "PRESETS", "recipe_config", "sampling_defaults", "PRIOR_GUIDANCE", "unclip_config",
           "check_unclip_target", "train_unclip", "variation_measures", "prior_loss"]

PRIOR_GUIDANCE = 1.0     # the prior's default guidance w: plain conditional (bench/unclip.py also measures 2 and 4)


# ---------------------------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class UnclipRecipe:
    """unCLIP's decoder and prior for one profile (the decoder's UNet sizes are the denoiser recipe's,
    ``denoiser.unet_config``; its batch size and learning rate the profile's)."""
    decoder_steps: int               # the decoder UNet's training steps (batches of the profile's batch_size)
    prior_steps: int                 # the diffusion prior's training steps
    prior_batch: int                 # its batch size (an MLP over 64-d vectors: a step costs little)
    prior_width: int                 # its hidden width
    prior_blocks: int                # its residual MLP blocks
    guidance: float                  # the decoder's default classifier-free guidance scale


PRESETS: dict[str, UnclipRecipe] = {
    "test": UnclipRecipe(decoder_steps=100, prior_steps=300, prior_batch=128, prior_width=128, prior_blocks=2,
                         guidance=3.0),
    "cpu": UnclipRecipe(decoder_steps=4_000, prior_steps=3_000, prior_batch=256, prior_width=256, prior_blocks=3,
                        guidance=3.0),
    "gpu": UnclipRecipe(decoder_steps=10_000, prior_steps=20_000, prior_batch=1_024, prior_width=512,
                        prior_blocks=4, guidance=3.0),
}


def recipe_config(profile: Profile) -> UnclipRecipe:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("unclip", ...)`` changes."""
    return recipe_preset(PRESETS, "unclip", profile)


def sampling_defaults(profile: Profile) -> dict[str, dict]:
    """How unCLIP samples by default: {"unclip": {sampler, steps, guidance, prior_steps, prior_guidance}}."""
    return {"unclip": {"sampler": "ddim", "steps": profile.sample_steps, "guidance": recipe_config(profile).guidance,
                       "prior_steps": profile.sample_steps, "prior_guidance": PRIOR_GUIDANCE}}


def unclip_config(profile: Profile, clip_config: dict | None = None) -> dict:
    """The JSON-able config (compared before resuming and by ``registry.find_matching``): the decoder (a flat UNet
    config with ``embed_dim``, so ``networks.unet.load_unet`` reads it), the prior, and the CLIP they depend on."""
    clip_cfg = clip_config if clip_config is not None else clip_config_from_profile(profile)
    D = clip_cfg["embed"]
    r = recipe_config(profile)
    decoder = {**unet_config(profile, embed_dim=D).to_dict(), "T": profile.T,
               "schedule": profile.schedule, "n_train": profile.n_train, "p_uncond": profile.p_uncond,
               "batch_size": profile.batch_size, "steps": r.decoder_steps}
    prior = {**PriorConfig(embed_dim=D, width=r.prior_width, blocks=r.prior_blocks
                           ).to_dict(), "T": profile.T, "schedule": profile.schedule, "p_uncond": profile.p_uncond,
             "batch_size": r.prior_batch, "steps": r.prior_steps,
             "embed_scale": embed_scale(D), "prediction": "x0", "p_mention": P_MENTION}
    return {"model": "unclip", "decoder": decoder, "prior": prior, "clip": clip_cfg}


def _sampling(profile: Profile) -> dict:
    """The ``"sampling"`` entry the folder's ``config.json`` has held so far."""
    return {k: v for k, v in sampling_defaults(profile)["unclip"].items() if k != "sampler"}


# ---------------------------------------------------------------------------------------------- the folder
def check_unclip_target(out: str | Path) -> Path:
    """Refuse, before any compute, an ``out`` training must not write into: the shipped weights, a file, or a
    non-empty folder that is not an unCLIP checkpoint (it holds ``decoder/`` and ``prior/`` sub-checkpoints,
    each checked by ``checkpoints.check_training_target``)."""
    out = Path(out)
    resolved = out.resolve()
    if resolved == paths.weights_dir().resolve() or resolved.is_relative_to(paths.weights_dir().resolve()):
        checkpoints.check_training_target(out)                  # raises, naming the shipped weights
    if out.exists() and not out.is_dir():
        raise store.CheckpointError(f"{out} is a file, not a folder: choose a new or empty folder for --out")
    if out.is_dir():
        known = {"decoder", "prior", "clip", "config.json", "training.json"}
        other = sorted(p.name for p in out.iterdir() if p.name not in known)
        if other:
            raise store.CheckpointError(f"{out} is not empty and is not an unCLIP checkpoint (it holds "
                                              f"{', '.join(other[:5])}); choose a new or empty folder for --out")
    for part in ("decoder", "prior"):
        checkpoints.check_training_target(out / part)
    return out


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- training
def train_unclip(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                 progress: bool = True, stop_after: int | None = None, clip=None) -> TrainResult:
    """Train unCLIP's decoder and prior on the digits, the course CLIP frozen (resumes both from ``out``).

    1. The CLIP: ``clip`` when given (``get_clip``'s (model, tokenizer, record)), else the one saved in
       ``out/clip`` by an earlier start, else ``get_clip(profile, fallback=False)``; saved into ``out/clip``.
    2. The image embedding of every training digit, once (N, D), unit length.
    3. The decoder (``out/decoder``): DDPM's simple loss on (digit, its embedding), the embedding replaced by
       "no condition" with probability ``p_uncond``.
    4. The prior (``out/prior``): ``unclip.prior_loss`` on (a fresh random true caption's text embedding,
       the digit's image embedding * sqrt(D)), the text dropped with probability ``p_uncond``.
    5. ``out/config.json`` and ``out/training.json`` (written when both are finished): the pipeline folder.

    Args:
        steps: the decoder's total steps (default the recipe's ``decoder_steps``; the prior's are the recipe's).
        stop_after: stop (with checkpoints) after this many steps of each part in this call.
    Returns:
        the decoder's ``TrainResult`` with ``out`` the pipeline folder, ``seconds`` both parts' time, ``step``
        the decoder's (``load_unclip(out)`` gives the pipeline).
    """
    rt = runtime or get_runtime()
    out = Path(out) if out is not None else paths.default_checkpoint("unclip")
    if steps is not None:
        profile = profile.with_recipe("unclip", decoder_steps=steps)
    check_unclip_target(out)
    t_start = time.perf_counter()
    if clip is None and (out / "clip" / "config.json").is_file():
        from ..networks.clip import load_clip
        clip_model, tokenizer = load_clip(out / "clip", rt.device)
        clip_record = store.read_json(out / "clip" / "record.json")
    else:
        clip_model, tokenizer, clip_record = clip if clip is not None else get_clip(profile, rt, progress,
                                                                                   fallback=False)
    cfg = unclip_config(profile, clip_record["config"])
    for part in ("decoder", "prior"):                 # before any embedding is computed (fit checks again)
        checkpoints.check_resumable(out / part, cfg[part])
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "clip" / "config.json").is_file():
        (out / "clip").mkdir(exist_ok=True)
        save_clip(clip_model, out / "clip")
        _write_json_atomic(out / "clip" / "record.json", {k: clip_record[k] for k in ("config", "thresholds")
                                                           if k in clip_record})
    clip_model = clip_model.to(rt.device).eval()
    x, y = load_mnist("train", profile=profile, device=rt.device, quiet=not progress)
    t0 = time.perf_counter()
    image_emb = embed_images(clip_model, x).to(rt.device)                       # (N, D) unit, once
    embed_seconds = time.perf_counter() - t0
    meta = {"kind": "unclip", "profile": profile.name, "data": f"MNIST train, {len(y)} images",
            "embed_seconds": round(embed_seconds, 1)}

    # 3. the decoder
    dcfg = cfg["decoder"]
    schedule = make_schedule(dcfg["schedule"], dcfg["T"], rt.device)
    torch.manual_seed(0)
    decoder = UNet(UNetConfig.from_dict({k: v for k, v in dcfg.items() if k in UNetConfig.__dataclass_fields__}))

    def decoder_batch(g):
        idx = batch_indices(len(x), dcfg["batch_size"], g, rt.device)
        return x[idx], image_emb[idx]

    def decoder_loss(m, batch, g):
        x0, z = batch
        return simple_loss(m, x0, schedule, generator=g, cond=drop_condition(z, dcfg["p_uncond"], g, null=0.0),
                           return_parts=True)                                       # DDPM Eq. (14)

    dec = fit(decoder, decoder_loss, decoder_batch, steps=dcfg["steps"], lr=profile.lr,
              warmup_steps=profile.warmup_steps, batch_size=dcfg["batch_size"], ema_decay=profile.ema_decay,
              config=dcfg, meta={**meta, "part": "decoder"}, out=out / "decoder",
              checkpoint_every=profile.checkpoint_every, runtime=rt, stop_after=stop_after,
              hooks=[ProgressBar("train unclip decoder", progress), LossByT(dcfg["T"])], rng_device=rt.device)
    if dec.step < dcfg["steps"]:
        return dataclasses.replace(dec, out=out)

    # 4. the prior
    pcfg = cfg["prior"]
    thresholds = (captions.thresholds_from_json(clip_record["thresholds"]) if "thresholds" in clip_record
                  else captions.fit_thresholds(captions.measure_attributes(x), y))
    bins = captions.attribute_bins(captions.measure_attributes(x), y, thresholds)      # (N, A) on the CPU
    labels = y.cpu()
    t0 = time.perf_counter()
    texts = vocabulary.all_captions()[0]
    text_emb = embed_text(clip_model, tokenizer, texts).to(rt.device)          # (K, D) unit, once
    row_of = {t: i for i, t in enumerate(texts)}
    pmeta = {**meta, "part": "prior", "caption_seconds": round(time.perf_counter() - t0, 1),
             "captions": len(texts)}
    pschedule = make_schedule(pcfg["schedule"], pcfg["T"], rt.device)
    torch.manual_seed(0)
    prior = DiffusionPrior(PriorConfig.from_dict(pcfg))
    scale = pcfg["embed_scale"]

    def prior_batch(g):
        idx = batch_indices(len(labels), pcfg["batch_size"], g)                  # (B,) on the CPU
        said, _ = captions.random_captions(labels[idx], bins[idx], g, pcfg["p_mention"])
        rows = torch.tensor([row_of[t] for t in said])
        drop = torch.rand(len(rows), generator=g) < pcfg["p_uncond"]               # Ho & Salimans, Algorithm 1
        text = torch.where(to_device(drop, rt.device)[:, None], 0.0, text_emb[to_device(rows, rt.device)])
        return scale * image_emb[to_device(idx, rt.device)], text

    def prior_step(m, batch, g):
        z0, text = batch
        return prior_loss(m, z0, pschedule, text, generator=g)

    pri = fit(prior, prior_step, prior_batch, steps=pcfg["steps"], lr=profile.lr,
              warmup_steps=profile.warmup_steps, batch_size=pcfg["batch_size"], ema_decay=profile.ema_decay,
              config=pcfg, meta=pmeta, out=out / "prior", checkpoint_every=profile.checkpoint_every, runtime=rt,
              stop_after=stop_after, hooks=[ProgressBar("train unclip prior", progress), LossByT(pcfg["T"])],
              rng_device="cpu")
    if pri.step < pcfg["steps"]:
        return dataclasses.replace(dec, out=out, seconds=dec.seconds + pri.seconds)

    # 5. the pipeline folder's own files: what from_pretrained and find_matching read
    d_tr, p_tr = store.read_training(out / "decoder"), store.read_training(out / "prior")
    (out / "config.json").write_text(json.dumps({**cfg, "sampling": _sampling(profile)}, indent=2))
    _write_json_atomic(out / "training.json", {
        "kind": "unclip", "profile": profile.name, "config": cfg, "steps": dcfg["steps"], "step": d_tr["step"],
        "data": meta["data"], "train_seconds": round(d_tr.get("train_seconds", 0) + p_tr.get("train_seconds", 0), 1),
        "embed_seconds": meta["embed_seconds"], "caption_seconds": pmeta["caption_seconds"],
        "decoder": {k: d_tr.get(k) for k in ("step", "steps", "train_seconds", "losses")},
        "prior": {k: p_tr.get(k) for k in ("step", "steps", "train_seconds", "losses")},
        "wall_seconds_this_call": round(time.perf_counter() - t_start, 1)})
    return dataclasses.replace(dec, out=out, seconds=dec.seconds + pri.seconds, losses=dec.losses)


# ---------------------------------------------------------------------------------------------- measuring
@torch.no_grad()
def variation_measures(pipe: UnCLIP, images: torch.Tensor, labels: torch.Tensor, n: int, classifier,
                       seed: int = 0, steps: int | None = None, guidance: float | None = None) -> dict:
    """Do variations keep the source digit's class, and are they diverse?

    For each source digit, ``n`` variations (``UnCLIP.variations``). Class kept: the course classifier reads
    the source's label. Diversity: the mean pairwise pixel distance (RMS over pixels, in [-1, 1] units) among a
    source's variations, against the same measure over ``n`` real training digits of the same class.

    Returns:
        dict with ``class_kept`` (fraction), ``pairwise_variations``, ``pairwise_real_same_class``,
        ``pairwise_source_to_variation``, ``n_sources``, ``n_per_source``, and ``images`` (B * n, 1, 28, 28).
    """
    from ..networks.classifier import classify, label_accuracy
    if n < 2:
        raise ValueError(f"n must be >= 2 to measure diversity, got {n}")
    x = pipe.variations(images, n, steps=steps, guidance=guidance, seed=seed)             # (B * n, 1, 28, 28)
    B = len(labels)
    kept = label_accuracy(classify(classifier, x)[0], labels.cpu().repeat_interleave(n))
    v = x.view(B, n, -1)

    def mean_pairwise(group: torch.Tensor) -> float:                                        # (G, n, P)
        d = torch.cdist(group, group) / group.shape[-1] ** 0.5                               # RMS distance
        iu = torch.triu_indices(group.shape[1], group.shape[1], 1)
        return float(d[:, iu[0], iu[1]].mean())

    real_x, real_y = load_mnist("train", n=10_000, quiet=True)
    g = torch.Generator().manual_seed(seed)
    real = []
    for lab in labels.cpu().tolist():
        pool = (real_y == lab).nonzero()[:, 0]
        real.append(real_x[pool[torch.randperm(len(pool), generator=g)[:n]]].reshape(n, -1))
    src = images.reshape(B, 1, -1).float().cpu()
    to_src = float(((v - src) ** 2).mean(-1).sqrt().mean())
    return {"class_kept": kept, "pairwise_variations": mean_pairwise(v),
            "pairwise_real_same_class": mean_pairwise(torch.stack(real)),
            "pairwise_source_to_variation": to_src, "n_sources": B, "n_per_source": n, "images": x}


def prior_loss(model: Callable, z0: torch.Tensor, schedule: Schedule, cond: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """unCLIP's prior objective (Ramesh et al. 2022, Sec. 2.2): predict the clean embedding,

        L = E_{t, eps} || f_theta(z_t, t, z_y) - z_0 ||^2,   z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps

    Args:
        z0: (B, D) scaled image embeddings (``embed_scale`` * unit embedding); cond: (B, D) text embeddings
            (zero rows: dropped). generator: seeds t and eps.
    Returns:
        (the mean loss, {"t": (B,), "per_example": (B,)}) as ``training.loop.fit`` takes them.
    """
    B = z0.shape[0]
    where = generator.device if generator is not None else z0.device
    t = torch.randint(0, schedule.T, (B,), generator=generator, device=where).to(z0.device)
    eps = torch.randn(z0.shape, generator=generator, device=where).to(z0.device)
    z_t = q_sample(z0, t, schedule, noise=eps)                                   # DDPM Eq. (4) on vectors
    per = ((model(z_t, t, cond).float() - z0) ** 2).mean(-1)                     # (B,)
    return per.mean(), {"t": t, "per_example": per.detach()}
