"""The caption vocabulary: words, never pixels.

    DIGIT_WORDS, NUMERALS, ATTRIBUTES, TEMPLATES, VOCABULARY   the words captions and prompts are made of
    all_captions, caption_content, attribute_words            every caption the vocabulary can make
    normalize_prompt, parse_prompt                             a prompt's digit and attributes
    digit_prompts, attribute_prompts, benchmark_prompts        the prompt sets lessons and benchmarks use

Measuring the attributes on images, and drawing true captions for them, is ``data/captions.py``.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from . import vocabulary

__all__ = ["DIGIT_WORDS", "NUMERALS", "Attribute", "ATTRIBUTES", "ATTRIBUTE_NAMES", "TEMPLATES", "VOCABULARY",
           "attribute_words", "all_captions", "caption_content", "normalize_prompt", "parse_prompt",
           "ATTRIBUTE_PAIRS", "digit_prompts", "attribute_prompts", "benchmark_prompts"]

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
    here (``course_lib.text.tokenizer.validate_prompt`` is the strict check).

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

ATTRIBUTE_PAIRS = {      # attribute -> (low word, high word) whose control we measure
    "thickness": ("thin", "thick"),
    "slant": ("left", "right"),
}


def digit_prompts() -> list[str]:
    """Every digit as a word and as a numeral: ``["zero", ..., "nine", "0", ..., "9"]`` (20 prompts)."""
    return list(vocabulary.DIGIT_WORDS) + list(vocabulary.NUMERALS)


def attribute_prompts(digit: int, attribute: str, numeral: bool = False) -> tuple[str, str]:
    """The (low, high) prompts for one digit and attribute: ``("a thin seven", "a thick seven")`` or
    ``("a seven leaning left", "a seven leaning right")``."""
    if attribute not in ATTRIBUTE_PAIRS:
        raise ValueError(f"attribute must be one of {', '.join(ATTRIBUTE_PAIRS)}, got {attribute!r}")
    word = (vocabulary.NUMERALS if numeral else vocabulary.DIGIT_WORDS)[digit]
    low, high = ATTRIBUTE_PAIRS[attribute]
    if attribute == "slant":
        return f"{_article(word)} {word} leaning {low}", f"{_article(word)} {word} leaning {high}"
    return f"a {low} {word}", f"a {high} {word}"


def benchmark_prompts() -> list[str]:
    """The fixed prompt set of ``bench/text_to_image.py``: per digit, the word and the numeral bare, and with
    each of thick, thin, left and right (60 prompts, balanced over digits and over low / high words)."""
    out = []
    for d in range(10):
        w, n = vocabulary.DIGIT_WORDS[d], vocabulary.NUMERALS[d]
        out += [w, n, f"a thick {w}", f"a thin {n}", f"the number {n} leaning right",
                f"{_article(w)} {w} leaning left"]
    return out
