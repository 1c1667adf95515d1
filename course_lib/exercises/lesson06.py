"""Checks for lesson 06 (meaning vectors): placing words on hand-made axes, and solving an analogy."""
from __future__ import annotations

import torch

from . import Case, CheckResult, check_function

__all__ = ["AXES", "reference_place_word", "check_place_word", "reference_analogy", "check_analogy"]

AXES = ("adult", "male", "royal")          # the three hand-made axes of exercise 1: 1 = yes, 0 = no
_TABLE = {
    "man": (1, 1, 0), "woman": (1, 0, 0), "boy": (0, 1, 0), "girl": (0, 0, 0),
    "king": (1, 1, 1), "queen": (1, 0, 1), "prince": (0, 1, 1), "princess": (0, 0, 1),
}


def reference_place_word(word: str) -> torch.Tensor:
    """The word's vector on (adult, male, royal), float32 of shape (3,)."""
    if word not in _TABLE:
        raise ValueError(f"unknown word {word!r}: choose from {', '.join(_TABLE)}")
    return torch.tensor(_TABLE[word], dtype=torch.float32)


def check_place_word(student_fn) -> CheckResult:
    cases = [Case(f"the word {w!r}", (w,)) for w in ("man", "girl", "king", "queen", "prince", "princess")]
    return check_function("place_word", student_fn, reference_place_word, cases,
                          hint="one number per axis, in the order (adult, male, royal): 1 for yes, 0 for no; "
                               "a princess is a royal girl.", atol=1e-6, rtol=0.0)


def reference_analogy(a: str, b: str, c: str, vectors: dict[str, torch.Tensor]) -> str:
    """The word whose vector is nearest (Euclidean) to v[a] - v[b] + v[c], other than a, b and c."""
    target = vectors[a] - vectors[b] + vectors[c]
    best, best_d = None, float("inf")
    for w, v in vectors.items():
        if w in (a, b, c):
            continue
        d = float((v.float() - target.float()).norm())
        if d < best_d:
            best, best_d = w, d
    return best


def check_analogy(student_fn) -> CheckResult:
    hand = {w: reference_place_word(w) for w in _TABLE}
    two = {w: v[:2] for w, v in hand.items() if w in ("man", "woman", "boy", "girl")}
    g = torch.Generator().manual_seed(6)
    noisy = {w: v + 0.1 * torch.randn(3, generator=g) for w, v in hand.items()}
    cases = [
        Case("woman - man + boy on the two axes (adult, male)", ("woman", "man", "boy", two)),
        Case("king - man + woman on the three axes", ("king", "man", "woman", hand)),
        Case("prince - boy + girl on the three axes", ("prince", "boy", "girl", hand)),
        Case("king - man + woman with a little noise added to every vector", ("king", "man", "woman", noisy)),
        Case("a - b + c where the nearest word is one of a, b, c (they must be skipped)",
             ("girl", "girl", "king", hand)),
    ]
    return check_function("analogy", student_fn, reference_analogy, cases,
                          hint="compute v[a] - v[b] + v[c], then return the word (not a, b or c) whose vector "
                               "is at the smallest distance from it.")
