"""Training the text-to-image model whose text encoder is a frozen pretrained language model (lesson 09), and
the prompts it never saw.

The network side is ``course_lib.language_encoder`` (``LanguageEncoder``, ``TextToImageLM``); the training is
lesson 08's (``text2image_training.fit_captioned``: every caption encoded once into a ``CaptionTable``, fresh
random true captions each batch, the empty prompt with probability ``p_uncond``, ``train.fit``'s one loop),
with the language model in place of the course CLIP:

    text2image_lm_config   the UNet with cross-attention of width 384, the schedule, the caption templates, the encoder
    train_text2image_lm    the run (resumes from its folder), into ``checkpoints/text2image-lm``
    HELD_OUT_*             prompts in words no training caption uses (written before training)

**The held-out rule.** ``HELD_OUT_WORDS`` are synonyms of the attribute words (thick / thin / left / right)
and other ways to ask for a digit; no training caption contains any of them (``tests/test_language_encoder.py``
checks every caption ``captions.all_captions`` can produce). ``held_out_prompts`` asks for each digit in those
phrasings, ``HELD_OUT_ATTRIBUTES`` gives low / high prompt pairs in synonyms, for ``attribute_control``.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from . import captions, checkpoints, paths
from .config import Profile, Runtime, get_runtime
from .data import load_mnist
from .language_encoder import MAX_LENGTH, WIDTH, encoder_spec, load_language_encoder
from .pipeline import write_unet
from .text2image_training import P_MENTION, _sampling_defaults, fit_captioned
from .train import TrainResult
from .unet import unet_config_from_profile

__all__ = ["text2image_lm_config", "train_text2image_lm", "HELD_OUT_WORDS", "HELD_OUT_TEMPLATES",
           "HELD_OUT_ATTRIBUTES", "held_out_prompts", "held_out_pair", "training_templates", "NAME"]

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
            prompts.append(template.format(w=captions.DIGIT_WORDS[d], n=captions.NUMERALS[d]))
            digits.append(d)
    return prompts, digits


def held_out_pair(name: str):
    """``attribute_control``'s ``prompt_pair`` for a held-out synonym pair: digit -> (low prompt, high prompt)."""
    _, low, high = HELD_OUT_ATTRIBUTES[name]
    return lambda d: (low.format(w=captions.DIGIT_WORDS[d]), high.format(w=captions.DIGIT_WORDS[d]))


# ---------------------------------------------------------------------------------------------- training
def training_templates(profile: Profile) -> tuple[str, ...]:
    """The caption templates this profile trains on: the first ``profile.lm_templates`` of ``captions.TEMPLATES``."""
    return captions.TEMPLATES[:profile.lm_templates]


def text2image_lm_config(profile: Profile) -> dict:
    """The JSON-able model config (``fit`` compares it before resuming): the UNet with cross-attention to the
    language model's 384-wide token states, the schedule, the caption templates and the encoder (name, sha256)."""
    unet = unet_config_from_profile(profile, context_dim=WIDTH)
    return {**unet.to_dict(), "model": NAME, "T": profile.T, "schedule": profile.schedule,
            "n_train": profile.n_train, "p_uncond": profile.p_uncond, "p_mention": P_MENTION,
            "max_length": MAX_LENGTH, "templates": list(training_templates(profile)), "text_encoder": encoder_spec()}


def train_text2image_lm(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                        progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the text-conditional UNet on captioned digits, the language model frozen (resumes from ``out``).

    Args:
        out: checkpoint folder (default ``paths.default_checkpoint("text2image-lm")``); it is also a pipeline
            folder (``language_encoder.load_text2image_lm``): ``config.json`` and the UNet's EMA weights.
        steps: total steps (default ``profile.lm_train_steps``).
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
    texts = captions.all_captions(templates)[0]
    longest = max(len(ids) for ids in tokenizer(texts)["input_ids"])     # pad the table to this, not MAX_LENGTH
    meta = {"kind": NAME, "profile": profile.name, "data": f"MNIST train, {len(y)} captioned images",
            "thresholds": captions.thresholds_to_json(thresholds), "text_encoder_source": encoder.source,
            "captions": len(texts), "caption_tokens": longest}

    def export(unet: nn.Module, folder: Path) -> None:
        write_unet(folder, unet, {**cfg, "sampling": _sampling_defaults(profile)})

    return fit_captioned(cfg, profile, x, y, encoder, tokenizer, thresholds, export, meta, out, rt,
                         steps or profile.lm_train_steps, progress, stop_after, templates, longest)
