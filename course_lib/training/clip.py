"""Training the course CLIP: its caption dataset, its loss, and the course's one loop (``training.loop.fit``).

Radford et al. (2021), Fig. 3: a batch of B digits and B captions, the B x B matrix of scaled cosine
similarities read as logits, and a symmetric cross-entropy (``clip_loss``). The network is
``course_lib.networks.clip``'s; this module brings the data:

    ClipRecipe, PRESETS   its sizes and steps per profile; ``recipe_config(profile)``
    clip_loss          the symmetric contrastive loss (Fig. 3), with several true captions per image
    make_batch_fn      the dataset: random training digits, a fresh random true caption each, the targets
    contrastive_step   ``fit``'s ``loss_fn``: encode both sides, compare every image with every caption
    train_clip         the run (resumes a same-config checkpoint); ``get_clip`` finds a trained one or trains
    zero_shot_accuracy, evaluate_clip   measured on held-out digits

Many captions in a batch are true of many images ("the number seven" of every seven; "a thick 7" of every
thick seven), so the loss does not treat them as negatives: its target for image i is spread evenly over the
captions that are true of it (``captions.compatible``), and likewise for each caption (a multi-positive
contrastive loss, as in Khosla et al. 2020, Eq. 2). With one true caption per image it is exactly CLIP's loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import paths, store
from ..config import Profile, Runtime, get_runtime, recipe_preset
from ..data import captions
from ..data.mnist import batch_indices, load_mnist, to_device
from ..networks.clip import attribute_accuracy, build_clip, load_clip, save_clip, zero_shot_classify
from ..text import vocabulary
from ..text.tokenizer import MAX_LENGTH, SPECIAL_TOKENS, load_tokenizer
from .loop import ProgressBar, TrainResult, fit

__all__ = ["ClipRecipe", "PRESETS", "recipe_config", "clip_config_from_profile", "clip_loss", "make_batch_fn",
           "contrastive_step", "train_clip", "get_clip", "zero_shot_accuracy", "evaluate_clip", "LOGIT_SCALE_MAX"]

LOGIT_SCALE_MAX = math.log(100.0)               # Radford et al. (2021), Sec. 2.5: logits scaled by at most 100


# ---------------------------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class ClipRecipe:
    """The course CLIP's sizes and training for one profile."""
    dim: int                         # width of text and vision transformers
    layers: int
    heads: int
    patch: int                       # vision patch size (28 must be divisible by it)
    embed: int                       # shared embedding size
    batch: int
    steps: int
    lr: float


PRESETS: dict[str, ClipRecipe] = {
    "test": ClipRecipe(dim=32, layers=1, heads=2, patch=7, embed=32, batch=100, steps=150, lr=2e-3),
    "cpu": ClipRecipe(dim=64, layers=2, heads=4, patch=7, embed=64, batch=256, steps=2_000, lr=2e-3),
    "gpu": ClipRecipe(dim=128, layers=4, heads=4, patch=4, embed=128, batch=512, steps=6_000, lr=5e-4),
}


def recipe_config(profile: Profile) -> ClipRecipe:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("clip", ...)`` changes."""
    return recipe_preset(PRESETS, "clip", profile)


# ---------------------------------------------------------------------------------------------- the loss
def clip_loss(logits_per_image: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric contrastive loss: (CE(images -> captions) + CE(captions -> images)) / 2.

    Radford et al. (2021), Fig. 3: ``loss_i = CE(logits, labels, axis=0)``, ``loss_t = CE(logits, labels,
    axis=1)``, ``loss = (loss_i + loss_t) / 2`` with ``labels = arange(B)``.

    Args:
        logits_per_image: ``(B, B)``: row i scores image i against every caption (scaled cosine similarity).
        targets: optional ``(B, B)`` bool or 0/1: which captions are true of which images. Each row (and
            each column) is normalised into a target distribution. None: the identity (CLIP's loss).

    Returns:
        the scalar loss.
    """
    B = logits_per_image.shape[0]
    if logits_per_image.dim() != 2 or logits_per_image.shape[1] != B:
        raise ValueError(f"logits_per_image must be square (B, B), got {tuple(logits_per_image.shape)}")
    logits = logits_per_image.float()
    if targets is None:
        labels = torch.arange(B, device=logits.device)
        return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    t = targets.float()
    if t.shape != logits.shape or (t.sum(1) == 0).any() or (t.sum(0) == 0).any():
        raise ValueError("targets must be (B, B) with at least one positive in every row and every column")
    loss_images = F.cross_entropy(logits, t / t.sum(1, keepdim=True))        # each image -> its captions
    loss_texts = F.cross_entropy(logits.T, t.T / t.T.sum(1, keepdim=True))   # each caption -> its images
    return (loss_images + loss_texts) / 2


# ---------------------------------------------------------------------------------------------- the data
def make_batch_fn(images: torch.Tensor, labels: torch.Tensor, bins: torch.Tensor, tokenizer, batch_size: int,
                  device: torch.device | str = "cpu"):
    """``get_batch(generator)`` for ``fit``: random digits, a random true caption each, and the targets.

    Returns dicts with ``pixel_values`` (B, 1, 28, 28), ``input_ids`` and ``attention_mask`` (B, L) and
    ``targets`` (B, B) bool, ``targets[i, j]``: caption j is true of image i.
    """
    images = images.to(device)
    labels_cpu, bins = labels.cpu().long(), bins.cpu().long()
    content = torch.cat([labels_cpu[:, None], bins], 1)                       # (N, 1 + A)
    token_cache: dict[str, tuple[list[int], list[int]]] = {}

    def get_batch(generator: torch.Generator) -> dict:
        idx = batch_indices(len(labels_cpu), batch_size, generator)           # (B,) on the CPU
        texts, caption_content = captions.random_captions(labels_cpu[idx], bins[idx], generator)
        new = [t for t in dict.fromkeys(texts) if t not in token_cache]       # the caption set is finite
        if new:
            enc = tokenizer(new, padding="max_length", truncation=True, max_length=MAX_LENGTH)
            token_cache.update(zip(new, zip(enc["input_ids"], enc["attention_mask"])))
        ids, mask = zip(*(token_cache[t] for t in texts))
        targets = captions.compatible(content[idx], caption_content)          # (B, B), diagonal all True
        # built on the host, copied without waiting (data.to_device): no step waits for the GPU here
        return {"pixel_values": images[to_device(idx, images.device)],
                "input_ids": to_device(torch.tensor(ids), device),
                "attention_mask": to_device(torch.tensor(mask), device), "targets": to_device(targets, device)}
    return get_batch


def contrastive_step(model, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
    """``loss_fn`` for ``fit``: encode both sides, compare every image with every caption, symmetric CE."""
    with torch.no_grad():                                                     # Radford et al. (2021), Sec. 2.5
        model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"])
    return clip_loss(out.logits_per_image, batch["targets"])


# ---------------------------------------------------------------------------------------------- training
def _reset_position_ids(model) -> None:
    """Restore the integer ``position_ids`` buffers (an EMA average of integers can round them down)."""
    for emb in (model.text_model.embeddings, model.vision_model.embeddings):
        n = emb.position_ids.shape[-1]
        emb.position_ids.copy_(torch.arange(n, device=emb.position_ids.device).expand(1, -1))


def train_clip(profile: Profile, out: str | Path | None = None, runtime: Runtime | None = None,
               steps: int | None = None, progress: bool = True) -> TrainResult:
    """Train the course CLIP on captioned MNIST digits for the profile (resumes a same-config checkpoint).

    Args:
        profile: sizes (its ``recipe_config``, ``n_train``, ``warmup_steps``, ``ema_decay``, ``checkpoint_every``).
        out: checkpoint folder (default ``paths.default_checkpoint("clip")``).
        steps: total steps (default the recipe's ``steps``).

    Returns:
        ``fit``'s ``TrainResult``; ``ema_model`` is the ``CLIPModel`` to use.
    """
    rt = runtime or get_runtime()
    out = Path(out) if out is not None else paths.default_checkpoint("clip")
    config = clip_config_from_profile(profile)
    r = recipe_config(profile)
    x, y = load_mnist("train", profile=profile, quiet=not progress)
    measures = captions.measure_attributes(x)
    thresholds = captions.fit_thresholds(measures, y)
    bins = captions.attribute_bins(measures, y, thresholds)
    tokenizer = load_tokenizer()
    get_batch = make_batch_fn(x, y, bins, tokenizer, r.batch, rt.device)
    with torch.random.fork_rng(devices=[]):                                   # seeded initial weights,
        torch.manual_seed(0)                                                  # global RNG left as it was
        model = build_clip(config)
    meta = {"kind": "clip", "profile": profile.to_dict(), "data": f"MNIST train, first {len(y)} images",
            "thresholds": captions.thresholds_to_json(thresholds), "templates": list(vocabulary.TEMPLATES)}
    result = fit(model, contrastive_step, get_batch, steps=steps or r.steps, lr=r.lr,
                 warmup_steps=profile.warmup_steps, batch_size=r.batch, ema_decay=profile.ema_decay,
                 config=config, meta=meta, out=out, checkpoint_every=profile.checkpoint_every, runtime=rt,
                 export=save_clip, hooks=[ProgressBar("CLIP", progress)])
    _reset_position_ids(result.ema_model)
    return result


def _matching_checkpoint(folder: Path, config: dict) -> dict | None:
    """The training record of ``folder`` when it holds a CLIP of ``config``; else None."""
    try:
        training = store.read_training(folder)
    except (FileNotFoundError, ValueError):
        return None
    if (folder / "config.json").is_file() and store.config_difference(training.get("config"), config) is None:
        return training
    return None


def get_clip(profile: Profile, runtime: Runtime | None = None, progress: bool = True, fallback: bool = True):
    """The course CLIP for ``profile``: a finished user checkpoint or the shipped weights of the same config;
    else, with ``fallback``, those of ``profile.fallback`` (the ``gpu`` profile uses the ``cpu`` CLIP, with a
    one-line note, rather than retraining it in every fresh runtime); else train one (resuming an unfinished
    checkpoint). Pass ``fallback=False`` where the CLIP must be the profile's own (a model built on it).

    Returns:
        (``CLIPModel`` in eval mode, tokenizer, training record: the dict of ``training.json``, with ``losses``).
    """
    from ..config import PROFILES
    rt = runtime or get_runtime()
    config = clip_config_from_profile(profile)
    user, shipped = paths.default_checkpoint("clip"), paths.weights_dir() / "clip"
    candidates = [profile] + ([PROFILES[profile.fallback]] if fallback and profile.fallback else [])
    for used in candidates:
        for folder in (user, shipped):
            training = _matching_checkpoint(folder, clip_config_from_profile(used))
            if training is not None and training.get("step", 0) >= training.get("steps", recipe_config(used).steps):
                if used is not profile:
                    print(f"no finished {profile.name}-profile CLIP: using the {used.name}-profile one in {folder} "
                          f"(train the {profile.name} one with `python -m course_lib train clip --profile "
                          f"{profile.name}`)")
                elif progress:
                    print(f"loading the trained CLIP from {folder}")
                model, tokenizer = load_clip(folder, rt.device)
                return model, tokenizer, training
    out = user
    if store.has_checkpoint(user) and _matching_checkpoint(user, config) is None:
        out = paths.default_checkpoint(f"clip-{profile.name}")          # keep the other profile's model
    result = train_clip(profile, out=out, runtime=rt, progress=progress)
    return result.ema_model.eval(), load_tokenizer(), store.read_training(out)


# ---------------------------------------------------------------------------------------------- measuring
def zero_shot_accuracy(model, profile: Profile, runtime: Runtime | None = None, n: int | None = None) -> float:
    """Zero-shot digit accuracy on the first ``n`` test digits (default ``profile.n_test``; None: all 10,000).

    ``model`` is a ``CLIPModel`` or the ``(model, tokenizer)`` pair that ``load_clip`` returns.
    """
    model, tokenizer = model if isinstance(model, tuple) else (model, load_tokenizer())
    x, y = load_mnist("test", n=n if n is not None else profile.n_test, quiet=True)
    return float((zero_shot_classify(model, tokenizer, x) == y).float().mean())


def evaluate_clip(model, tokenizer, images: torch.Tensor, labels: torch.Tensor,
                  thresholds: dict[str, torch.Tensor]) -> dict[str, float]:
    """Zero-shot digit accuracy and attribute accuracy (thickness, width, slant) on held-out digits."""
    labels = labels.cpu()
    pred = zero_shot_classify(model, tokenizer, images)
    bins = captions.attribute_bins(captions.measure_attributes(images), labels, thresholds)
    out = {"digit_accuracy": float((pred == labels).float().mean()), "n_images": len(labels)}
    for name in vocabulary.ATTRIBUTE_NAMES:
        out[f"{name}_accuracy"], out[f"{name}_n"] = attribute_accuracy(model, tokenizer, images, labels, bins, name)
    return out


def clip_config_from_profile(profile: Profile) -> dict:
    """The JSON-able model config (what ``fit`` compares before resuming): sizes, vocabulary, caption scheme."""
    r = recipe_config(profile)
    if 28 % r.patch:
        raise ValueError(f"the CLIP's patch must divide 28, got {r.patch}")
    if r.dim % r.heads:
        raise ValueError(f"the CLIP's dim ({r.dim}) must be divisible by its heads ({r.heads})")
    return {"model": "clip", "dim": r.dim, "layers": r.layers, "heads": r.heads,
            "patch": r.patch, "embed": r.embed, "image_size": 28, "num_channels": 1,
            "vocabulary": list(SPECIAL_TOKENS + vocabulary.VOCABULARY), "max_length": MAX_LENGTH,
            "quantiles": list(captions.QUANTILES), "slant_margin": captions.SLANT_MARGIN}
