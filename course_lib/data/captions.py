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

from functools import lru_cache

import torch
import torch.nn.functional as F

from ..text.vocabulary import ATTRIBUTES, TEMPLATES, _canonical_code, _compose

__all__ = ["QUANTILES", "SLANT_MARGIN", "measure_attributes", "fit_thresholds", "thresholds_to_json",
           "thresholds_from_json", "default_thresholds", "attribute_bins", "random_caption", "random_captions",
           "compatible"]

QUANTILES = (0.3, 0.7)            # per-digit quantiles: below the first is "low", above the second "high"

SLANT_MARGIN = 0.1                # radians (about 6 degrees): "leaning left" needs slant < -0.1


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
    from .mnist import load_mnist
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
