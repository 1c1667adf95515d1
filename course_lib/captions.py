"""Captioned digits: words for what a digit *is* (its label) and for how it *looks*, measured on the image.

Each MNIST digit gets captions such as "a thick seven leaning right", "the number 3" or "a photo of the
digit four". The look is measured on the pixels, after Morpho-MNIST (Castro et al. 2019):

    thickness  mean stroke width in pixels           ~ 2 * area / boundary   (a stroke w wide, L long:
                                                                              area = w L, boundary = 2 L)
    slant      shear of the ink, in radians           = arctan(-mu11 / mu02)  (image moments; > 0 leans right)
    width      width of the de-slanted ink, pixels    (the digit's own slant removed first)
    height     height of the ink's bounding box, pixels
    area       ink pixels (the image binarised at half intensity)

Morpho-MNIST measures thickness on the medial axis (skeleton); 2 * area / boundary is a one-line
approximation. On 6,000 training digits its within-class rank correlation with ink / skeleton length
(Zhang-Suen thinning) is 0.94, at a fraction of the cost: all 60,000 digits are measured in a second or two
on one CPU thread, where the thinning took over a minute.

Words come from each digit class's own quantiles: a "thick one" is thicker than 70 % of the ones, so every
word exists for every digit. Slant words also need the right sign (a "leaning left" digit leans left by at
least ``SLANT_MARGIN``), because most MNIST ones lean right. Height is not given words: MNIST scales every
digit into a 20 x 20 box, so almost all digits are 20 pixels tall and "small" or "large" would mean nothing;
width ("narrow", "wide") is what varies.

The vocabulary is small and closed (``VOCABULARY``), the caption templates are few (``TEMPLATES``), and the
whole caption set can be enumerated (``all_captions``), so a text encoder's outputs can be cached per caption.
Every caption carries its *content*: the digit plus one code per attribute (-1 low word, +1 high word,
0 not mentioned), which says which images it is true of (``compatible``).
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

__all__ = ["DIGIT_WORDS", "NUMERALS", "ATTRIBUTES", "ATTRIBUTE_NAMES", "TEMPLATES", "VOCABULARY", "SLANT_MARGIN",
           "QUANTILES", "Attribute", "measure_attributes", "fit_thresholds", "attribute_bins", "attribute_words",
           "random_caption", "random_captions", "caption_content", "all_captions", "compatible", "parse_prompt",
           "normalize_prompt", "default_thresholds", "thresholds_to_json", "thresholds_from_json"]

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
NUMERALS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Attribute:
    """One measured attribute and its words: ``low`` words for the bottom of the class, ``high`` for the top.

    ``phrase`` says where the words go: ``"adjective"`` before the digit ("a thick seven"), ``"after"``
    after it, prefixed by one of ``verbs`` ("a seven leaning right").
    """
    name: str
    low: tuple[str, ...]          # synonyms; the first is the canonical word
    high: tuple[str, ...]
    phrase: str = "adjective"
    verbs: tuple[str, ...] = ()


ATTRIBUTES: tuple[Attribute, ...] = (
    Attribute("thickness", low=("thin", "skinny"), high=("thick", "bold")),
    Attribute("width", low=("narrow",), high=("wide",)),
    Attribute("slant", low=("left",), high=("right",), phrase="after", verbs=("leaning", "slanted")),
)
ATTRIBUTE_NAMES = tuple(a.name for a in ATTRIBUTES)
QUANTILES = (0.3, 0.7)            # per-digit quantiles: below the first is "low", above the second "high"
SLANT_MARGIN = 0.1                # radians (about 6 degrees): "leaning left" needs slant < -0.1

# A template is a noun phrase around {digit}: {adjs} are the adjectives, {after} the slant phrase, {a} the
# article that agrees with the next word ("an eight", "an 8", "a thick eight").
TEMPLATES = (
    "{adjs} {digit} {after}",
    "{a} {adjs} {digit} {after}",
    "{a} {adjs} handwritten {digit} {after}",
    "the {adjs} digit {digit} {after}",
    "the {adjs} number {digit} {after}",
    "a photo of the {adjs} digit {digit} {after}",
)
_FUNCTION_WORDS = ("a", "an", "the", "of", "photo", "digit", "number", "handwritten")


def _vocabulary() -> tuple[str, ...]:
    words = list(DIGIT_WORDS) + list(NUMERALS) + list(_FUNCTION_WORDS)
    for a in ATTRIBUTES:
        words += [w for w in a.low + a.high + a.verbs if w not in words]
    return tuple(words)


VOCABULARY = _vocabulary()        # every word a caption (or a prompt) may use


# ----------------------------------------------------------------------------------------------- measuring
def measure_attributes(images: torch.Tensor, threshold: float = 0.0, chunk: int = 2048
                       ) -> dict[str, torch.Tensor]:
    """Measure stroke thickness, slant, width, height and ink area of each digit (after Morpho-MNIST).

    Args:
        images: ``(N, 1, H, W)`` in ``[-1, 1]`` (the course's range).
        threshold: binarisation level in ``[-1, 1]`` (0: half intensity) for area, boundary and extent.
        chunk: images measured at a time (keeps the temporaries in the CPU cache).

    Returns:
        dict of ``(N,)`` float tensors: ``thickness`` (px), ``slant`` (rad, > 0 leans right), ``width`` (px,
        de-slanted), ``height`` (px), ``area`` (px^2).
    """
    if images.dim() != 4 or images.shape[1] != 1:
        raise ValueError(f"expected images of shape (N, 1, H, W), got {tuple(images.shape)}")
    parts = [_measure(images[i:i + chunk].detach().float().cpu()[:, 0], threshold)
             for i in range(0, len(images), chunk)]
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _measure(x: torch.Tensor, threshold: float) -> dict[str, torch.Tensor]:
    N, H, W = x.shape
    ink = ((x + 1) / 2).clamp(0, 1)                                 # (N, H, W) grey ink in [0, 1]
    b = (x > threshold).float()                                     # (N, H, W) binary ink
    area = b.sum((1, 2))
    # 1. thickness: a pixel is on the boundary when one of its 4 neighbours is background
    p = F.pad(b, (1, 1, 1, 1))
    inner = b * p[:, :-2, 1:-1] * p[:, 2:, 1:-1] * p[:, 1:-1, :-2] * p[:, 1:-1, 2:]
    boundary = area - inner.sum((1, 2))
    thickness = 2 * area / boundary.clamp(min=1)
    # 2. slant from the central moments of the grey ink: x = column, y = row (pointing down)
    ys = torch.arange(H, dtype=torch.float32)
    xs = torch.arange(W, dtype=torch.float32)
    rows = ink.sum(2)                                               # (N, H) ink per row
    mass = rows.sum(1).clamp(min=1e-6)
    cy = rows @ ys / mass
    cx = ink.sum(1) @ xs / mass
    mu11 = (ink @ xs) @ ys - mass * cx * cy                         # sum I (x - cx)(y - cy)
    mu02 = (rows @ ys.square() - mass * cy.square()).clamp(min=1e-6)  # sum I (y - cy)^2
    shear = -mu11 / mu02                                            # x moves right by `shear` per row up
    slant = torch.atan(shear)
    # 3. extent: shift each row by its shear offset, x' = x + shear * (y - cy), then take the ink's range
    on = b > 0
    has_ink = on.any(2)                                             # (N, H)
    left = torch.where(on, xs, float(W)).amin(2)                    # (N, H) first ink column per row
    right = torch.where(on, xs, -1.0).amax(2)
    offset = shear[:, None] * (ys[None, :] - cy[:, None])           # (N, H)
    width = (torch.where(has_ink, right + offset, -1e4).amax(1)
             - torch.where(has_ink, left + offset, 1e4).amin(1) + 1)
    r = torch.arange(H)
    height = (torch.where(has_ink, r, -1).amax(1) - torch.where(has_ink, r, H).amin(1) + 1).float()
    empty = area == 0
    width, height = width.masked_fill(empty, 0.0), height.masked_fill(empty, 0.0)
    return {"thickness": thickness, "slant": slant, "width": width, "height": height, "area": area}


def fit_thresholds(measures: dict[str, torch.Tensor], labels: torch.Tensor, quantiles=QUANTILES
                   ) -> dict[str, torch.Tensor]:
    """Per-digit thresholds: for each attribute a ``(10, 2)`` tensor of (low, high) quantiles of its class.

    Slant thresholds are also pushed past ``-SLANT_MARGIN`` and ``+SLANT_MARGIN`` (the sign must be right).

    Raises:
        ValueError: when a digit has fewer than 10 examples (its quantiles would mean nothing).
    """
    labels = labels.detach().cpu()
    q = torch.tensor(quantiles, dtype=torch.float32)
    out = {}
    for a in ATTRIBUTES:
        v = measures[a.name].detach().cpu().float()
        rows = []
        for d in range(10):
            vd = v[labels == d]
            if len(vd) < 10:
                raise ValueError(f"digit {d} has {len(vd)} examples; need at least 10 to fit thresholds")
            rows.append(torch.quantile(vd, q))
        t = torch.stack(rows)                                       # (10, 2)
        if a.name == "slant":
            t[:, 0] = t[:, 0].clamp(max=-SLANT_MARGIN)
            t[:, 1] = t[:, 1].clamp(min=SLANT_MARGIN)
        out[a.name] = t
    return out


def thresholds_to_json(thresholds: dict[str, torch.Tensor]) -> dict[str, list]:
    return {k: [[round(float(v), 6) for v in row] for row in t] for k, t in thresholds.items()}


def thresholds_from_json(d: dict[str, list]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, dtype=torch.float32) for k, v in d.items()}


@lru_cache(maxsize=2)
def _default_thresholds(n: int | None) -> dict[str, torch.Tensor]:
    from .data import load_mnist
    x, y = load_mnist("train", n=n, quiet=True)
    return fit_thresholds(measure_attributes(x), y)


def default_thresholds(n: int | None = None) -> dict[str, torch.Tensor]:
    """Thresholds fitted on the first ``n`` training digits (None: all 60,000), cached per process."""
    return {k: v.clone() for k, v in _default_thresholds(n).items()}


def attribute_bins(measures: dict[str, torch.Tensor], labels: torch.Tensor,
                   thresholds: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which word each attribute earns: ``(N, A)`` long with -1 (low word), 0 (no word), +1 (high word).

    Columns follow ``ATTRIBUTES`` (thickness, width, slant).
    """
    labels = labels.detach().cpu().long()
    cols = []
    for a in ATTRIBUTES:
        v = measures[a.name].detach().cpu().float()
        lo, hi = thresholds[a.name][labels, 0], thresholds[a.name][labels, 1]
        cols.append((v > hi).long() - (v < lo).long())
    return torch.stack(cols, 1)


def attribute_words(bins: torch.Tensor) -> list[dict[str, str | None]]:
    """Turn ``attribute_bins`` into canonical words per image: ``{"thickness": "thick", "slant": None, ...}``."""
    out = []
    for row in bins.tolist():
        out.append({a.name: (a.low[0] if c < 0 else a.high[0] if c > 0 else None)
                    for a, c in zip(ATTRIBUTES, row)})
    return out


# ----------------------------------------------------------------------------------------------- captions
def _article(next_word: str) -> str:
    return "an" if next_word in ("eight", "8") else "a"


def _render(template: str, digit: str, adjs: list[str], after: str) -> str:
    adj = " ".join(adjs)
    first = (adjs[0] if adjs else "handwritten" if "{a} {adjs} handwritten" in template else digit)
    text = template.format(a=_article(first), adjs=adj, digit=digit, after=after)
    return " ".join(text.split())


def _canonical_code(attr: Attribute, word: str | None) -> int:
    if word is None:
        return 0
    if word in attr.low:
        return -1
    if word in attr.high:
        return 1
    raise ValueError(f"{word!r} is not a word for {attr.name} (low: {attr.low}, high: {attr.high})")


def _compose(label: int, numeral: bool, words: dict[str, str], verb: str, template: str) -> str:
    """One caption: ``words`` maps attribute name -> the (synonym) word to use; absent names are not said."""
    adjs = [words[a.name] for a in ATTRIBUTES if a.phrase == "adjective" and a.name in words]
    after = " ".join(f"{verb} {words[a.name]}" for a in ATTRIBUTES if a.phrase == "after" and a.name in words)
    return _render(template, NUMERALS[label] if numeral else DIGIT_WORDS[label], adjs, after)


def random_caption(label: int, attrs: dict[str, str | None], generator: torch.Generator,
                   p_mention: float = 0.5) -> str:
    """A random true caption of a digit: a template, a digit word or numeral, and some of its attribute words.

    Each attribute the image has a word for is said with probability ``p_mention`` (with a random synonym),
    so the text encoder meets "seven", "a thick 7" and "the number seven leaning left" for the same image.

    Args:
        label: the digit, 0-9.
        attrs: canonical words per attribute, e.g. ``{"thickness": "thick", "width": None, "slant": "left"}``
            (as from ``attribute_words``); None or a missing key: no word for that attribute.
        generator: a seeded ``torch.Generator`` (all the randomness comes from it).
    """
    if not 0 <= int(label) <= 9:
        raise ValueError(f"label must be a digit 0-9, got {label!r}")
    codes = torch.tensor([[_canonical_code(a, attrs.get(a.name)) for a in ATTRIBUTES]])
    return random_captions(torch.tensor([int(label)]), codes, generator, p_mention)[0][0]


def random_captions(labels: torch.Tensor, bins: torch.Tensor, generator: torch.Generator,
                    p_mention: float = 0.5, templates: tuple[str, ...] = TEMPLATES
                    ) -> tuple[list[str], torch.Tensor]:
    """A random true caption for each of ``N`` digits, and each caption's content.

    Args:
        labels: ``(N,)`` digits; bins: ``(N, A)`` from ``attribute_bins``.
        templates: the templates to draw from (default ``TEMPLATES``; a model may train on a subset).

    Returns:
        captions: ``N`` strings; content: ``(N, 1 + A)`` long: the digit, then per attribute -1 / 0 / +1
        for "low word said", "not said", "high word said" (what ``compatible`` compares).
    """
    labels, bins = labels.detach().cpu().long(), bins.detach().cpu().long()
    N, A = bins.shape
    u = torch.rand(N, 3 + 2 * A, generator=generator)               # all draws at once: one generator call
    mention = (u[:, 3:3 + A] < p_mention) & (bins != 0)
    said = bins * mention.long()
    verbs = next(a.verbs for a in ATTRIBUTES if a.phrase == "after")
    pick = lambda options, r: options[min(int(r * len(options)), len(options) - 1)]
    captions = []
    for label, codes, r in zip(labels.tolist(), said.tolist(), u.tolist()):   # plain lists: fast in a loop
        words = {a.name: pick(a.low if c < 0 else a.high, r[3 + A + k])
                 for k, (a, c) in enumerate(zip(ATTRIBUTES, codes)) if c}
        captions.append(_compose(label, r[1] < 0.5, words, pick(verbs, r[2]), pick(templates, r[0])))
    return captions, torch.cat([labels[:, None], said], 1)


def compatible(image_content: torch.Tensor, caption_content: torch.Tensor) -> torch.Tensor:
    """Which captions are true of which images: ``(N, M)`` bool.

    A caption is true of an image when the digits agree and every attribute word it says matches the
    image's word (a caption that says nothing about thickness is true of thick and thin digits alike).

    Args:
        image_content: ``(N, 1 + A)``: label, then ``attribute_bins``. caption_content: ``(M, 1 + A)``.
    """
    img, cap = image_content[:, None, :], caption_content[None, :, :]    # (N, 1, 1+A), (1, M, 1+A)
    same_digit = img[..., 0] == cap[..., 0]
    attrs_ok = ((cap[..., 1:] == 0) | (cap[..., 1:] == img[..., 1:])).all(-1)
    return same_digit & attrs_ok


@lru_cache(maxsize=4)
def _all_captions(templates: tuple[str, ...]) -> tuple[tuple[str, ...], torch.Tensor]:
    options = []                                  # per attribute: [(code, word or None), ...]
    for a in ATTRIBUTES:
        options.append([(0, None)] + [(-1, w) for w in a.low] + [(1, w) for w in a.high])
    verbs = next(a.verbs for a in ATTRIBUTES if a.phrase == "after")
    seen, captions, content = set(), [], []
    for label in range(10):
        for numeral in (False, True):
            for combo in itertools.product(*options):
                words = {a.name: w for a, (_, w) in zip(ATTRIBUTES, combo) if w is not None}
                says_after = any(a.phrase == "after" and a.name in words for a in ATTRIBUTES)
                for verb in (verbs if says_after else verbs[:1]):
                    for template in templates:
                        c = _compose(label, numeral, words, verb, template)
                        if c not in seen:
                            seen.add(c)
                            captions.append(c)
                            content.append([label] + [code for code, _ in combo])
    return tuple(captions), torch.tensor(content, dtype=torch.long)


def all_captions(templates: tuple[str, ...] = TEMPLATES) -> tuple[list[str], torch.Tensor]:
    """Every caption ``random_captions`` can produce (from ``templates``), in a fixed order, with its content
    ``(K, 1 + A)``."""
    captions, content = _all_captions(tuple(templates))
    return list(captions), content.clone()


def caption_content(caption: str) -> torch.Tensor:
    """The content ``(1 + A,)`` of any caption or prompt that names a digit (see ``parse_prompt``)."""
    digit, words = parse_prompt(caption)
    if digit is None:
        raise ValueError(f"{caption!r} names no digit (say e.g. 'seven' or '7')")
    return torch.tensor([digit] + [_canonical_code(a, words.get(a.name)) for a in ATTRIBUTES])


# ----------------------------------------------------------------------------------------------- prompts
_PUNCTUATION = re.compile(r"[.,!?;:]")


def normalize_prompt(prompt: str) -> list[str]:
    """Lower-case, drop sentence punctuation (. , ! ? ; :), split on white space: the words of a prompt."""
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}: {prompt!r}")
    return _PUNCTUATION.sub(" ", prompt.lower()).split()


def parse_prompt(prompt: str) -> tuple[int | None, dict[str, str]]:
    """Read the digit and the attribute words of a prompt.

    ``parse_prompt("A bold 7 slanted left")`` -> ``(7, {"thickness": "thick", "slant": "left"})``: synonyms
    map to the canonical word (the first one in ``ATTRIBUTES``). Words outside the vocabulary are ignored
    here (``course_lib.text.validate_prompt`` is the strict check).

    Returns:
        (digit or None when none is named, {attribute name: canonical word}).

    Raises:
        ValueError: when the prompt names two different digits, or two opposite words ("thick" and "thin").
    """
    digit, found = None, {}
    for w in normalize_prompt(prompt):
        d = DIGIT_WORDS.index(w) if w in DIGIT_WORDS else NUMERALS.index(w) if w in NUMERALS else None
        if d is not None:
            if digit is not None and d != digit:
                raise ValueError(f"{prompt!r} names two digits ({digit} and {d}); name one")
            digit = d
            continue
        for a in ATTRIBUTES:
            canon = a.low[0] if w in a.low else a.high[0] if w in a.high else None
            if canon is None:
                continue
            if found.get(a.name, canon) != canon:
                raise ValueError(f"{prompt!r} says both {found[a.name]!r} and {canon!r} for {a.name}")
            found[a.name] = canon
    return digit, found
