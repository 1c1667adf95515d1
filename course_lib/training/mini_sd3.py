"""Training the miniature Stable Diffusion 3 (lesson 13) through the course's one loop (``loop.fit``).

    data:   MNIST encoded once by lesson 11's frozen autoencoder (q(z | x): mean and log-variance, 7x7x4);
            every caption training can draw encoded once by lesson 09's frozen MiniLM (``CaptionTable``)
    batch:  random digits, z ~ q(z | x) scaled by s (unit variance), a fresh random true caption each,
            replaced by the empty prompt with probability p_uncond (classifier-free guidance)
    loss:   flow matching with logit-normal times (``flow.flow_loss``; SD3, Eq. 3 and 19, Sec. 3.1)
    model:  the MMDiT (``networks/mmdit.py``)

Its sizes live here, one frozen ``MiniSD3Preset`` per profile (``PRESETS``): the course's ``Profile`` gives only
the data (``n_train``) and the profile's name. ``mini_sd3_config`` is what ``fit`` compares before resuming,
and the registry before using a finished model. How the ``cpu`` preset was chosen: bench/README.md,
"Mini SD3".
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import paths, store
from ..config import Profile, Runtime, get_runtime, recipe_preset
from ..data import captions
from ..data.mnist import batch_indices, load_mnist
from ..diffusion.flow import TIME_SCALE, flow_loss
from ..networks.autoencoder import Posterior, load_autoencoder, weights_sha256
from ..networks.mmdit import MMDiT, MMDiTConfig
from ..networks.text_encoders import MAX_LENGTH, encoder_spec, load_language_encoder
from ..pipelines.mini_sd3 import NAME, write_mmdit
from ..text import vocabulary
from . import checkpoints
from .latent import encode_dataset
from .loop import LossByT, ProgressBar, TrainResult, fit
from .text2image import P_MENTION, CaptionTable

__all__ = ["NAME", "MiniSD3Preset", "PRESETS", "recipe_config", "sampling_defaults", "mini_sd3_config", "train_mini_sd3", "caption_table"]

TIME = "logit-normal"        # t = sigmoid(N(0, 1)): SD3's best (Esser et al. 2024, Sec. 5.1, "rf/lognorm(0.00, 1.00)")


@dataclass(frozen=True)
class MiniSD3Preset:
    """The mini SD3's sizes and recipe for one profile."""
    width: int               # D of both streams
    depth: int               # joint blocks
    heads: int
    patch: int               # latent patch side (1: 49 image tokens; 2: 16, the 7x7 padded to 8x8)
    mlp_ratio: float
    batch_size: int
    lr: float
    warmup_steps: int
    steps: int               # optimizer steps
    ema_decay: float
    p_uncond: float          # the caption dropped (classifier-free guidance, Ho & Salimans 2022)
    templates: int           # caption templates trained on: vocabulary.TEMPLATES[:k]
    sample_steps: int        # Euler steps, the default written into the folder
    guidance: float          # the default guidance scale written into the folder
    checkpoint_every: int


PRESETS: dict[str, MiniSD3Preset] = {
    "test": MiniSD3Preset(width=32, depth=2, heads=2, patch=1, mlp_ratio=2.0, batch_size=32, lr=1e-3,
                          warmup_steps=5, steps=30, ema_decay=0.9, p_uncond=0.1, templates=1, sample_steps=4,
                          guidance=3.0, checkpoint_every=20),
    # the study that chose it: bench/README.md, "Mini SD3"
    "cpu": MiniSD3Preset(width=128, depth=4, heads=4, patch=2, mlp_ratio=4.0, batch_size=128, lr=1e-3,
                         warmup_steps=100, steps=800, ema_decay=0.999, p_uncond=0.1, templates=6,
                         sample_steps=10, guidance=3.0, checkpoint_every=250),
    "gpu": MiniSD3Preset(width=256, depth=6, heads=4, patch=1, mlp_ratio=4.0, batch_size=256, lr=5e-4,
                         warmup_steps=500, steps=10_000, ema_decay=0.9995, p_uncond=0.1, templates=6,
                         sample_steps=10, guidance=3.0, checkpoint_every=1_000),
}


def recipe_config(profile: Profile) -> MiniSD3Preset:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("mini_sd3", ...)`` changes."""
    return recipe_preset(PRESETS, "mini_sd3", profile)


def sampling_defaults(profile: Profile) -> dict[str, dict]:
    """How the mini SD3 samples by default: {"mini-sd3": {sampler, steps, guidance}} (Euler on the velocity)."""
    r = recipe_config(profile)
    return {NAME: {"sampler": "euler", "steps": r.sample_steps, "guidance": r.guidance}}


def _mmdit_config(preset: MiniSD3Preset) -> MMDiTConfig:
    return MMDiTConfig(patch=preset.patch, width=preset.width, depth=preset.depth, heads=preset.heads,
                       mlp_ratio=preset.mlp_ratio)


def _recipe(preset: MiniSD3Preset) -> dict:
    """What of the preset shapes the trained weights, besides the network and the steps (``fit`` checks those):
    not the sampling defaults or how often checkpoints are written."""
    return {k: v for k, v in asdict(preset).items()
            if k in ("batch_size", "lr", "warmup_steps", "ema_decay", "p_uncond", "templates")}


def mini_sd3_config(profile: Profile, preset: MiniSD3Preset | None = None) -> dict:
    """The JSON-able model config (``fit`` compares it before resuming): the MMDiT, the flow objective, the
    recipe (preset) and the caption scheme, and the frozen text encoder (name, sha256). The autoencoder's
    hash is added to the folder's ``config.json`` when training starts (``autoencoder_sha256``)."""
    preset = preset or recipe_config(profile)
    templates = vocabulary.TEMPLATES[:preset.templates]
    return {**_mmdit_config(preset).to_dict(), "model": NAME, "objective": "flow", "time": TIME,
            "time_scale": TIME_SCALE, "n_train": profile.n_train, "recipe": _recipe(preset), "p_mention": P_MENTION,
            "max_length": MAX_LENGTH, "templates": list(templates), "text_encoder": encoder_spec()}


_TABLES: dict[tuple, tuple[CaptionTable, int, str]] = {}   # (templates, device) -> encoded once per process


def caption_table(templates: tuple[str, ...], device) -> tuple[CaptionTable, int, str]:
    """Every caption of ``templates`` through the frozen MiniLM, once per process (the encoder is frozen, so
    the table never changes): (the table, its token length, where the encoder was loaded from). The table is
    padded to the longest caption, not to ``MAX_LENGTH``: the MMDiT masks padded text tokens out."""
    key = (tuple(templates), str(device))
    if key not in _TABLES:
        encoder, tokenizer = load_language_encoder(device)
        texts = vocabulary.all_captions(tuple(templates))[0]
        longest = max(len(ids) for ids in tokenizer(texts)["input_ids"])
        _TABLES[key] = (CaptionTable(encoder, tokenizer, texts, device, longest), longest, encoder.source)
    return _TABLES[key]


def train_mini_sd3(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                   progress: bool = True, stop_after: int | None = None, preset: MiniSD3Preset | None = None,
                   autoencoder: str | Path | None = None) -> TrainResult:
    """Train the mini SD3 for ``profile`` (resumes from ``out``, default ``checkpoints/mini-sd3``).

    Args:
        steps: total optimizer steps (default: the preset's). stop_after: stop (with a checkpoint) after this
            many steps in this call. preset: sizes in place of ``PRESETS[profile.name]`` (for studies).
        autoencoder: the frozen autoencoder's folder (default: lesson 11's shipped one, ``data/weights/autoencoder``,
            under every profile: a latent space is a choice of the data, not of the model's size).
    Returns:
        ``fit``'s ``TrainResult``; ``training.json`` records ``encode_seconds`` (the latents and the captions,
        encoded once, in the last call) beside ``train_seconds``.
    Raises:
        ValueError: ``out`` holds a run on another autoencoder, or with another config.
    """
    cpu_start = time.process_time()                                  # CPU seconds of every thread, this call
    rt = runtime or get_runtime()
    preset = preset or recipe_config(profile)
    if steps is not None:
        preset = MiniSD3Preset(**{**asdict(preset), "steps": steps})
    out = Path(out) if out is not None else paths.default_checkpoint(NAME)
    cfg = mini_sd3_config(profile, preset)
    checkpoints.check_training_target(out)
    saved = checkpoints.check_resumable(out, cfg, preset.steps)     # before any encoding (fit checks again)
    ae_folder = Path(autoencoder) if autoencoder is not None else paths.weights_dir() / "autoencoder"
    sha = weights_sha256(ae_folder)
    if saved is not None and saved.get("autoencoder_sha256") not in (None, sha):
        raise ValueError(f"{out} holds a {NAME} run on another autoencoder (weights sha256 "
                         f"{saved['autoencoder_sha256'][:12]}..., {ae_folder} has {sha[:12]}...); delete {out} "
                         f"to start over")
    ae = load_autoencoder(ae_folder, rt.device)
    x, y = load_mnist("train", profile=profile, device=rt.device, quiet=not progress)
    start = time.perf_counter()
    post = encode_dataset(ae, x)                                    # once: (N, 4, 7, 7) mean and log-variance
    thresholds = (captions.thresholds_from_json(saved["thresholds"]) if saved is not None
                  else captions.fit_thresholds(captions.measure_attributes(x), y))
    bins = captions.attribute_bins(captions.measure_attributes(x), y, thresholds)       # (N, A) on the CPU
    labels = y.cpu()
    del x
    templates = tuple(cfg["templates"])
    table, longest, source = caption_table(templates, rt.device)
    texts = table.texts[:-1]
    encode_seconds = time.perf_counter() - start
    s = ae.scaling_factor
    torch.manual_seed(0)                                            # the initial weights
    model = MMDiT(MMDiTConfig.from_dict(cfg))

    def get_batch(g: torch.Generator):
        idx = batch_indices(len(labels), preset.batch_size, g)       # (B,) on the CPU
        texts_, _ = captions.random_captions(labels[idx], bins[idx], g, P_MENTION, templates)
        rows = table.rows(texts_)
        drop = torch.rand(len(rows), generator=g) < preset.p_uncond  # Ho & Salimans 2022, Algorithm 1
        rows = torch.where(drop, torch.full_like(rows, table.null_row), rows)
        return idx.to(rt.device), rows.to(rt.device)

    def loss_fn(m, batch, g):
        idx, rows = batch
        z0 = s * Posterior(post.mean[idx], post.logvar[idx]).sample(g)  # z ~ q(z | x), fresh every step
        return flow_loss(m, z0, time=TIME, generator=g, cond=table.lookup(rows), return_parts=True)

    sampling = {"sampler": "euler", "steps": preset.sample_steps, "guidance": preset.guidance}
    folder_cfg = {**cfg, "autoencoder_sha256": sha, "scaling_factor": s, "sampling": sampling}

    def export(inner: MMDiT, folder: Path) -> None:
        write_mmdit(folder, inner, folder_cfg)

    meta = {"kind": NAME, "profile": profile.name, "data": f"MNIST train, {len(labels)} captioned images, encoded",
            "thresholds": captions.thresholds_to_json(thresholds), "autoencoder": str(ae_folder),
            "autoencoder_sha256": sha, "text_encoder_source": source, "captions": len(texts),
            "caption_tokens": longest, "encode_seconds": round(encode_seconds, 1),
            "parameters": sum(p.numel() for p in model.parameters())}
    result = fit(model, loss_fn, get_batch, steps=preset.steps, lr=preset.lr, warmup_steps=preset.warmup_steps,
               batch_size=preset.batch_size, ema_decay=preset.ema_decay, config=cfg, meta=meta, out=out,
               checkpoint_every=preset.checkpoint_every, runtime=rt, export=export, stop_after=stop_after,
               hooks=[ProgressBar(f"train {NAME}", progress), LossByT(int(TIME_SCALE))], batch_rng_device="cpu",
               rng_device=rt.device)
    # the CPU time of every call so far, encoding included: on a shared machine the wall time is only an upper bound
    prior = float((saved or {}).get("cpu_seconds", 0.0))
    _record(out, cpu_seconds=round(prior + time.process_time() - cpu_start, 1), threads=torch.get_num_threads())
    return result


def _record(folder: Path, **facts) -> None:
    """Add ``facts`` to ``folder/training.json`` (atomically: written beside it, then renamed)."""
    path = folder / "training.json"
    tr = store.read_json(path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({**tr, **facts}, indent=1))
    os.replace(tmp, path)
