"""Training the text-to-image model: captioned digits, the frozen text encoder's outputs cached, and the
course's one loop (``training.loop.fit``) on DDPM's simple loss; then measuring whether prompts are followed.

The pipeline itself (``TextEncoder``, ``TextToImage``) is ``course_lib.pipelines.text_to_image``'s; this module brings the data:

    Text2ImageRecipe, PRESETS   both models' steps and sampling defaults per profile; ``recipe_config(profile)``,
                        ``sampling_defaults(profile)`` (written into each model folder's ``config.json``)
    text2image_config   the model config: the UNet with cross-attention, the schedule, the caption scheme, the CLIP
    CaptionTable        the frozen encoder's output for every caption training can draw, computed once
    train_text2image    the run: a fresh random true caption per digit per batch, dropped with p_uncond
    train_demo          lesson 08's own run (the full run when it is as long), so the lesson trains once
    prompt_accuracy     does the course classifier read the digit the prompt names?
    attribute_control   does "thick" / "thin" (or "left" / "right") move the measured attribute?

**Captions are fresh every batch** (``captions.random_captions`` from measured attribute bins). The caption set
is finite (``captions.all_captions``), so the frozen encoder's outputs are computed once into a table
(``CaptionTable``) and training only indexes it: no transformer runs inside the training loop.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import paths
from ..config import Profile, Runtime, get_runtime, recipe_preset
from ..data import captions
from ..data.mnist import batch_indices, load_mnist, to_device
from ..diffusion.forward import simple_loss
from ..diffusion.guidance import drop_condition
from ..diffusion.schedules import make_schedule
from ..networks.text_encoders import MAX_LENGTH as LM_MAX_LENGTH
from ..networks.text_encoders import TEXT_LAYER, WIDTH, TextEncoder, encoder_spec, load_language_encoder
from ..networks.unet import TextCond, UNet, UNetConfig
from ..pipelines.text_to_image import TextToImage, load_text_side, write_pipeline, write_unet
from ..text import vocabulary
from ..text.tokenizer import MAX_LENGTH
from ..text.vocabulary import ATTRIBUTE_PAIRS, DIGIT_WORDS, attribute_prompts, digit_prompts, parse_prompt
from . import checkpoints
from .clip import clip_config_from_profile, get_clip
from .denoiser import unet_config
from .loop import LossByT, ProgressBar, TrainResult, fit

__all__ = ["Text2ImageRecipe", "PRESETS", "recipe_config", "sampling_defaults", "P_MENTION", "QUICK_N",
           "CaptionTable", "text2image_config", "train_text2image", "fit_captioned", "train_demo", "prompt_accuracy",
           "attribute_control", "NAME", "HELD_OUT_TEMPLATES", "HELD_OUT_ATTRIBUTES", "HELD_OUT_WORDS",
           "held_out_prompts", "held_out_pair", "training_templates", "text2image_lm_config", "train_text2image_lm",
           "digit_free_prompts", "probe_queries", "nearest_caption_probe"]

P_MENTION = 0.5          # each attribute word an image has is said with this probability (captions default)

QUICK_N = 200            # images in a quick measure: an accuracy near 90 % has a standard error of ~2 points


# ---------------------------------------------------------------------------------------------- the recipe
@dataclass(frozen=True)
class Text2ImageRecipe:
    """Both text-to-image models' training and sampling defaults for one profile (their UNet's sizes are the
    denoiser recipe's, ``denoiser.unet_config``; batches and learning rate the profile's)."""
    steps: int                       # lesson 08's model (the course CLIP's text side, frozen)
    lm_steps: int                    # lesson 09's model (a frozen pretrained language model)
    lm_templates: int                # caption templates lesson 09's trains on (vocabulary.TEMPLATES[:k]): each
                                     # caption is encoded once before training, ~4 ms a caption on one core
    guidance: float                  # default classifier-free guidance scale of both


PRESETS: dict[str, Text2ImageRecipe] = {
    "test": Text2ImageRecipe(steps=300, lm_steps=300, lm_templates=1, guidance=3.0),
    "cpu": Text2ImageRecipe(steps=4_000, lm_steps=2_400, lm_templates=6, guidance=3.0),
    "gpu": Text2ImageRecipe(steps=10_000, lm_steps=10_000, lm_templates=6, guidance=3.0),
}


def recipe_config(profile: Profile) -> Text2ImageRecipe:
    """This recipe's preset for ``profile``, with the profile's ``with_recipe("text2image", ...)`` changes."""
    return recipe_preset(PRESETS, "text2image", profile)


def sampling_defaults(profile: Profile) -> dict[str, dict]:
    """How each model of this recipe samples by default: {model name: {sampler, steps, guidance}}."""
    one = {"sampler": "ddim", "steps": profile.sample_steps, "guidance": recipe_config(profile).guidance}
    return {"text2image": dict(one), NAME: dict(one)}


# ---------------------------------------------------------------------------------------------- the caption table
class CaptionTable:
    """The frozen encoder's output for every caption training can draw, computed once.

    Row ``i`` < K is ``captions.all_captions()[0][i]``; row K (``null_row``) is the empty prompt.
    ``rows(texts)`` maps caption strings to rows; ``lookup(rows)`` gathers a ``TextCond`` batch.
    """

    def __init__(self, encoder: TextEncoder, tokenizer, texts: Sequence[str], device, max_length: int = MAX_LENGTH,
                 batch_size: int = 1024):
        self.texts = list(texts) + [""]
        self.index = {t: i for i, t in enumerate(self.texts)}
        self.null_row = len(self.texts) - 1
        parts = []
        for i in range(0, len(self.texts), batch_size):
            enc = tokenizer(self.texts[i:i + batch_size], padding="max_length", truncation=True,
                            max_length=max_length, return_tensors="pt")
            parts.append(encoder(enc["input_ids"].to(device), enc["attention_mask"].to(device)))
        self.cond = TextCond(*(torch.cat(p) for p in zip(*parts)))      # (K+1, L, D), (K+1, L), (K+1, D)

    def rows(self, texts: Sequence[str]) -> torch.Tensor:
        """Row numbers ``(B,)`` long of caption strings (a caption outside the set is a ValueError)."""
        try:
            return torch.tensor([self.index[t] for t in texts])
        except KeyError as e:
            raise ValueError(f"caption {e.args[0]!r} is not in the table") from None

    def lookup(self, rows: torch.Tensor) -> TextCond:
        rows = rows.to(self.cond.tokens.device)
        return TextCond(*(part[rows] for part in self.cond))


def _sampling(profile: Profile, name: str) -> dict:
    """The ``"sampling"`` entry a model folder's ``config.json`` has held so far: steps and guidance."""
    d = sampling_defaults(profile)[name]
    return {"steps": d["steps"], "guidance": d["guidance"]}


# ---------------------------------------------------------------------------------------------- training
def text2image_config(profile: Profile, clip_config: dict | None = None) -> dict:
    """The JSON-able model config (``fit`` compares it before resuming): the UNet with cross-attention of the
    text width, the diffusion schedule, the caption scheme and the config of the CLIP it depends on
    (``clip_config``, default: the profile's own CLIP)."""
    clip_cfg = clip_config if clip_config is not None else clip_config_from_profile(profile)
    unet = unet_config(profile, context_dim=clip_cfg["dim"])
    return {**unet.to_dict(), "model": "text2image", "T": profile.T, "schedule": profile.schedule,
            "n_train": profile.n_train, "p_uncond": profile.p_uncond, "p_mention": P_MENTION,
            "text_layer": TEXT_LAYER, "pooled": "end token, final LayerNorm, unprojected",
            "max_length": MAX_LENGTH, "clip": clip_cfg}


def train_text2image(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                     progress: bool = True, stop_after: int | None = None, clip=None) -> TrainResult:
    """Train the text-conditional UNet on captioned digits, the course CLIP's text side frozen.

    Each batch: random training digits, a fresh random true caption each (``captions.random_captions``),
    the caption replaced by the empty prompt with probability ``profile.p_uncond``, and DDPM's simple loss
    (``forward.simple_loss``) with the caption's encoding as ``cond``.

    The CLIP is ``clip`` when given: the ``(model, tokenizer, training record)`` that ``get_clip`` returns, e.g.
    the one a lesson loaded (under the ``gpu`` profile that may be the ``cpu`` CLIP: the config then names it,
    and the UNet's cross-attention takes its width). Else it comes from ``get_clip(profile, fallback=False)``:
    the profile's own, trained now if missing. Either way, when ``out`` already holds a checkpoint of this
    config, training resumes with the text encoder saved there.

    Args:
        out: checkpoint folder (default ``paths.default_checkpoint("text2image")``); resumes from it.
        steps: total steps (default the recipe's ``steps``).
        stop_after: stop (with a checkpoint) after this many steps in this call.
        clip: the frozen CLIP to build on (see above); None: the profile's own.
    Returns:
        ``fit``'s ``TrainResult`` (``ema_model`` is the UNet; ``load_text2image(out)`` the whole pipeline).
    """
    rt = runtime or get_runtime()
    out = Path(out) if out is not None else paths.default_checkpoint("text2image")
    cfg = text2image_config(profile, None if clip is None else clip[2]["config"])
    x, y = load_mnist("train", profile=profile, device=rt.device, quiet=not progress)
    saved = checkpoints.check_resumable(out, cfg)     # before a CLIP is found or trained (fit checks again)
    if saved is not None and (out / "text_encoder.safetensors").is_file():
        encoder, tokenizer = load_text_side(out, rt.device)
        thresholds = captions.thresholds_from_json(saved["thresholds"])
    else:
        clip_model, tokenizer, clip_record = clip if clip is not None else get_clip(profile, rt, progress,
                                                                                   fallback=False)
        encoder = TextEncoder(clip_model.text_model)
        thresholds = (captions.thresholds_from_json(clip_record["thresholds"]) if "thresholds" in clip_record
                      else captions.fit_thresholds(captions.measure_attributes(x), y))
    meta = {"kind": "text2image", "profile": profile.name, "data": f"MNIST train, {len(y)} captioned images",
            "thresholds": captions.thresholds_to_json(thresholds), "templates": list(vocabulary.TEMPLATES)}

    def export(unet: nn.Module, folder: Path) -> None:
        write_pipeline(folder, unet, encoder, tokenizer, {**cfg, "sampling": _sampling(profile, "text2image")})

    return fit_captioned(cfg, profile, x, y, encoder, tokenizer, thresholds, export, meta, out, rt,
                         steps or recipe_config(profile).steps, progress, stop_after)


def fit_captioned(cfg: dict, profile: Profile, x: torch.Tensor, y: torch.Tensor, encoder: nn.Module, tokenizer,
                  thresholds: dict, export, meta: dict, out: Path, runtime: Runtime, steps: int, progress: bool,
                  stop_after: int | None, templates: tuple[str, ...] = vocabulary.TEMPLATES,
                  table_length: int | None = None) -> TrainResult:
    """The text-conditional UNet on captioned digits through ``training.loop.fit``, for any frozen text ``encoder``
    (``encoder(input_ids, attention_mask) -> TextCond``): lesson 08's CLIP text side or lesson 09's language model.

    Every caption of ``templates`` is encoded once (``CaptionTable``, ``table_length`` tokens each, default
    ``cfg["max_length"]``); then each batch draws random digits, a fresh random true caption each, the empty
    prompt with probability ``profile.p_uncond``, and DDPM's simple loss with the caption's encoding as ``cond``.
    ``export(unet, folder)`` writes the pipeline folder at each checkpoint.
    """
    bins = captions.attribute_bins(captions.measure_attributes(x), y, thresholds)      # (N, A) on the CPU
    labels = y.cpu()
    start = time.perf_counter()
    table = CaptionTable(encoder, tokenizer, vocabulary.all_captions(templates)[0], runtime.device,
                         table_length or cfg["max_length"])
    meta = {**meta, "caption_seconds": round(time.perf_counter() - start, 1)}     # encoding every caption once
    schedule = make_schedule(profile.schedule, profile.T, runtime.device)
    torch.manual_seed(0)                                                  # the initial weights
    model = UNet(UNetConfig.from_dict({k: v for k, v in cfg.items() if k in UNetConfig.__dataclass_fields__}))

    def get_batch(g: torch.Generator):
        idx = batch_indices(len(labels), profile.batch_size, g)           # (B,) on the CPU
        texts, _ = captions.random_captions(labels[idx], bins[idx], g, cfg["p_mention"], templates)
        rows = table.rows(texts)
        rows = drop_condition(rows, profile.p_uncond, g, null=table.null_row)   # Ho & Salimans 2022, Alg. 1
        return x[to_device(idx, x.device)], to_device(rows, x.device)        # copied without waiting

    def loss_fn(m, batch, g):
        x0, rows = batch
        return simple_loss(m, x0, schedule, generator=g, cond=table.lookup(rows), return_parts=True)

    return fit(model, loss_fn, get_batch, steps=steps, lr=profile.lr,
               warmup_steps=profile.warmup_steps, batch_size=profile.batch_size, ema_decay=profile.ema_decay,
               config=cfg, meta=meta, out=out, checkpoint_every=profile.checkpoint_every, runtime=runtime,
               export=export, stop_after=stop_after,
               hooks=[ProgressBar(f"train {meta['kind']}", progress), LossByT(profile.T)],
               rng_device=runtime.device, batch_rng_device="cpu")    # noise on the device, captions on the host


def train_demo(profile: Profile, clip, runtime: Runtime | None = None, progress: bool = True
               ) -> tuple[TrainResult, Path]:
    """Lesson 08's own training run: ``profile.lesson_train_steps`` steps on ``clip`` (the CLIP the lesson
    loaded, see ``train_text2image``), into ``paths.default_checkpoint("text2image-demo")``.

    When that is at least the full run (the recipe's ``steps``) and ``clip`` is the profile's own CLIP, the demo
    *is* the full run, into the default checkpoint, where ``get_model("text2image", profile)`` then finds it.
    Otherwise ``get_model`` loads a finished model (the profile's, else its fallback's). Either way the lesson
    trains text-to-image once.

    Returns:
        (the ``TrainResult``, the folder it was written to).
    """
    own = clip[2].get("config") == clip_config_from_profile(profile)
    full = recipe_config(profile).steps
    if profile.lesson_train_steps >= full and own:
        out = paths.default_checkpoint("text2image")
        return train_text2image(profile, out=out, runtime=runtime, progress=progress, clip=clip), out
    out = paths.default_checkpoint("text2image-demo")
    steps = min(profile.lesson_train_steps, full)
    return train_text2image(profile.with_recipe("text2image", steps=steps), out=out, runtime=runtime, progress=progress,
                            clip=clip), out


# ---------------------------------------------------------------------------------------------- measuring
def _quick_n(profile: Profile, n_prompts: int) -> int:
    """Images per prompt for a quick measure: min(profile.n_eval, QUICK_N) in all."""
    return max(1, min(profile.n_eval, QUICK_N) // n_prompts)


def prompt_accuracy(pipe: TextToImage, profile: Profile, runtime: Runtime | None = None,
                    guidance: float | None = None, n: int | None = None, seed: int = 0, classifier=None,
                    prompts: Sequence[str] | None = None) -> float:
    """Digit accuracy: how often the course classifier reads the digit a prompt names.

    Prompts: ``prompts``, default ``digit_prompts()`` (each digit as a word and as a numeral), ``n`` images in
    all (default min(profile.n_eval, QUICK_N): a quick measure), the profile's sampling steps.

    Returns:
        the fraction of images classified as the prompt's digit (float in [0, 1]).
    """
    from ..networks.classifier import classify, label_accuracy
    from ..registry import get_model
    rt = runtime or get_runtime()
    clf = classifier if classifier is not None else get_model("classifier", profile, rt, progress=False)
    prompts = list(prompts) if prompts is not None else digit_prompts()
    k = max(1, n // len(prompts)) if n else _quick_n(profile, len(prompts))
    images, labels = pipe.generate_with_labels(prompts, k, steps=profile.sample_steps, guidance=guidance, seed=seed)
    return label_accuracy(classify(clf, images)[0], labels)


@lru_cache(maxsize=8)
def _real_spread(attribute: str, n_train: int | None) -> float:
    """Within-digit standard deviation of ``attribute`` over the first ``n_train`` training digits (pooled)."""
    x, y = load_mnist("train", n=n_train, quiet=True)
    v = captions.measure_attributes(x)[attribute]
    var = sum(v[y == d].var() * ((y == d).sum() - 1) for d in range(10)) / (len(y) - 10)
    return float(var.sqrt())


@torch.no_grad()
def attribute_control(pipe: TextToImage, profile: Profile, attribute: str, n_per_digit: int | None = None,
                      guidance: float | None = None, seed: int = 0, steps: int | None = None,
                      prompt_pair: Callable[[int], tuple[str, str]] | None = None) -> dict:
    """Does the word move the measured attribute? For every digit, the low and the high prompt
    (``attribute_prompts``: "a thin seven" / "a thick seven") from the same start noises.

    Args:
        n_per_digit: noise pairs per digit (default min(profile.n_eval, QUICK_N) // 20: a quick measure).
        prompt_pair: ``prompt_pair(digit) -> (low prompt, high prompt)`` in place of ``attribute_prompts``
            (other words for the same attribute, e.g. "a slim seven" / "a fat seven"); ``words`` is then the
            pair for seven.
    Returns:
        dict with ``mean_low``, ``mean_high`` (the measured attribute, e.g. thickness in pixels),
        ``difference_sd``: mean(high - low) in units of the real digits' within-digit standard deviation,
        ``ordered``: the fraction of noise pairs with high > low, ``n_pairs``, and ``pairs``: the low and high
        values (N,) each, plus ``images_low`` / ``images_high``.
    """
    k = n_per_digit or _quick_n(profile, 20)
    pair = prompt_pair or (lambda d: attribute_prompts(d, attribute))
    prompts = [p for d in range(10) for p in pair(d)]                                   # low, high, low, ...
    images = pipe(prompts, k, steps=steps or profile.sample_steps, guidance=guidance, seed=seed)
    images = images.view(10, 2, k, 1, 28, 28)
    low, high = images[:, 0].reshape(-1, 1, 28, 28), images[:, 1].reshape(-1, 1, 28, 28)
    v_low = captions.measure_attributes(low)[attribute]
    v_high = captions.measure_attributes(high)[attribute]
    sd = _real_spread(attribute, profile.n_train)
    words = ATTRIBUTE_PAIRS[attribute] if prompt_pair is None else tuple(prompt_pair(7))
    return {"attribute": attribute, "words": words, "n_pairs": len(v_low),
            "mean_low": float(v_low.mean()), "mean_high": float(v_high.mean()), "real_sd": sd,
            "difference_sd": float((v_high - v_low).mean()) / sd,
            "ordered": float((v_high > v_low).float().mean()),
            "pairs": (v_low, v_high), "images_low": low, "images_high": high}

NAME = "text2image-lm"


# ---------------------------------------------------------------------------------------------- held out
# Written before the model was trained. {w}: the digit as a word ("seven"), {n}: as a numeral ("7").
HELD_OUT_TEMPLATES = (
    "the numeral {n}",
    "a hand-drawn {w}",
    "{w}, written in ink",
    "please draw the figure {w}",
    "a quick sketch of the number {n}",
    "the digit {w}, written boldly",
)


# attribute synonyms: name -> (attribute measured, low prompt, high prompt); the high one should score higher
HELD_OUT_ATTRIBUTES = {
    "slim / fat": ("thickness", "a slim {w}", "a fat {w}"),
    "slender / heavy": ("thickness", "a slender {w}", "a heavy {w}"),
    "tilted left / right": ("slant", "a {w} tilted to the left", "a {w} tilted to the right"),
    "leftward / rightward": ("slant", "{w}, leaning leftward", "{w}, leaning rightward"),
}

HELD_OUT_WORDS = ("numeral", "hand-drawn", "written", "ink", "please", "draw", "figure", "quick", "sketch",
                  "boldly", "slim", "fat", "slender", "heavy", "tilted", "to", "leftward", "rightward")


def held_out_prompts() -> tuple[list[str], list[int]]:
    """Every digit in every held-out phrasing (60 prompts), and the digit each asks for."""
    prompts, digits = [], []
    for template in HELD_OUT_TEMPLATES:
        for d in range(10):
            prompts.append(template.format(w=vocabulary.DIGIT_WORDS[d], n=vocabulary.NUMERALS[d]))
            digits.append(d)
    return prompts, digits


def held_out_pair(name: str):
    """``attribute_control``'s ``prompt_pair`` for a held-out synonym pair: digit -> (low prompt, high prompt)."""
    _, low, high = HELD_OUT_ATTRIBUTES[name]
    return lambda d: (low.format(w=vocabulary.DIGIT_WORDS[d]), high.format(w=vocabulary.DIGIT_WORDS[d]))


# ---------------------------------------------------------------------------------------------- training
def training_templates(profile: Profile) -> tuple[str, ...]:
    """The caption templates this profile trains on: the first ``lm_templates`` (the recipe's) of
    ``captions.TEMPLATES``."""
    return vocabulary.TEMPLATES[:recipe_config(profile).lm_templates]


def text2image_lm_config(profile: Profile) -> dict:
    """The JSON-able model config (``fit`` compares it before resuming): the UNet with cross-attention to the
    language model's 384-wide token states, the schedule, the caption templates and the encoder (name, sha256)."""
    unet = unet_config(profile, context_dim=WIDTH)
    return {**unet.to_dict(), "model": NAME, "T": profile.T, "schedule": profile.schedule,
            "n_train": profile.n_train, "p_uncond": profile.p_uncond, "p_mention": P_MENTION,
            "max_length": LM_MAX_LENGTH, "templates": list(training_templates(profile)), "text_encoder": encoder_spec()}


def train_text2image_lm(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                        progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the text-conditional UNet on captioned digits, the language model frozen (resumes from ``out``).

    Args:
        out: checkpoint folder (default ``paths.default_checkpoint("text2image-lm")``); it is also a pipeline
            folder (``pipelines.text_to_image.load_text2image_lm``): ``config.json`` and the UNet's EMA weights.
        steps: total steps (default the recipe's ``lm_steps``).
        stop_after: stop (with a checkpoint) after this many steps in this call.
    Returns:
        ``fit``'s ``TrainResult``; ``training.json`` records ``caption_seconds`` (encoding every caption
        once, in the last call) beside ``train_seconds``.
    """
    rt = runtime or get_runtime()
    out = Path(out) if out is not None else paths.default_checkpoint(NAME)
    cfg = text2image_lm_config(profile)
    checkpoints.check_training_target(out)
    saved = checkpoints.check_resumable(out, cfg)             # before the encoder loads (fit checks again)
    x, y = load_mnist("train", profile=profile, device=rt.device, quiet=not progress)
    thresholds = (captions.thresholds_from_json(saved["thresholds"]) if saved is not None
                  else captions.fit_thresholds(captions.measure_attributes(x), y))
    encoder, tokenizer = load_language_encoder(rt.device)
    templates = training_templates(profile)
    texts = vocabulary.all_captions(templates)[0]
    longest = max(len(ids) for ids in tokenizer(texts)["input_ids"])     # pad the table to this, not MAX_LENGTH
    meta = {"kind": NAME, "profile": profile.name, "data": f"MNIST train, {len(y)} captioned images",
            "thresholds": captions.thresholds_to_json(thresholds), "text_encoder_source": encoder.source,
            "captions": len(texts), "caption_tokens": longest}

    def export(unet: nn.Module, folder: Path) -> None:
        write_unet(folder, unet, {**cfg, "sampling": _sampling(profile, NAME)})

    return fit_captioned(cfg, profile, x, y, encoder, tokenizer, thresholds, export, meta, out, rt,
                         steps or recipe_config(profile).lm_steps, progress, stop_after, templates, longest)


# ---------------------------------------------------------------------------------------------- probing the encoder
def digit_free_prompts() -> tuple[list[str], list[int], list[int]]:
    """Prompts that ask for a digit without naming it: "the number after six" (7), "the number before eight"
    (7). Returns (prompts, the digit each asks for, the digit each *names*): a model that only matches words
    draws the named one."""
    prompts, asked, named = [], [], []
    for d in range(1, 10):
        prompts.append(f"the number after {DIGIT_WORDS[d - 1]}"); asked.append(d); named.append(d - 1)
    for d in range(0, 9):
        prompts.append(f"the number before {DIGIT_WORDS[d + 1]}"); asked.append(d); named.append(d + 1)
    return prompts, asked, named


def probe_queries() -> tuple[list[str], list[int], list[dict]]:
    """The held-out synonym prompts of ``HELD_OUT_ATTRIBUTES`` for every digit ("a fat seven"), with the digit and
    the training word each synonym stands for ({"thickness": "thick"}): (prompts, digits, attributes)."""
    prompts, digits, attrs = [], [], []
    for attribute, low, high in HELD_OUT_ATTRIBUTES.values():
        for template, word in ((low, ATTRIBUTE_PAIRS[attribute][0]), (high, ATTRIBUTE_PAIRS[attribute][1])):
            for d in range(10):
                prompts.append(template.format(w=DIGIT_WORDS[d])); digits.append(d); attrs.append({attribute: word})
    return prompts, digits, attrs


@torch.no_grad()
def nearest_caption_probe(embed, queries: Sequence[str], digits: Sequence[int], attributes: Sequence[dict],
                          bank: Sequence[str]) -> dict:
    """An encoder-only probe, after Imagen's Fig. 4a but with no image model trained: for each query, the bank's
    caption with the highest cosine; how often does that caption name the query's digit, and the digit and the
    attribute word the query stands for (``vocabulary.parse_prompt`` reads the caption)?

    Args: embed: list of texts -> (N, D) vectors (normalised here); queries with their ``digits`` and
        ``attributes`` ({} where none is asked); bank: the captions to search (training captions).
    Returns: {"digit": fraction, "digit_and_attribute": fraction, "nearest": the caption found for each query}.
    """
    if not (len(queries) == len(digits) == len(attributes)) or not len(queries) or not len(bank):
        raise ValueError(f"need as many digits and attributes as queries, and a non-empty bank; got "
                         f"{len(queries)} queries, {len(digits)} digits, {len(attributes)} attributes, "
                         f"{len(bank)} captions")
    q = F.normalize(embed(list(queries)).float().cpu(), dim=-1)
    b = F.normalize(embed(list(bank)).float().cpu(), dim=-1)
    best = (q @ b.T).argmax(1).tolist()
    nearest = [bank[i] for i in best]
    parsed = [parse_prompt(c) for c in nearest]
    digit_ok = [p[0] == d for p, d in zip(parsed, digits)]
    both_ok = [ok and all(p[1].get(k) == v for k, v in a.items()) for ok, p, a in zip(digit_ok, parsed, attributes)]
    return {"digit": sum(digit_ok) / len(queries), "digit_and_attribute": sum(both_ok) / len(queries),
            "nearest": nearest}
