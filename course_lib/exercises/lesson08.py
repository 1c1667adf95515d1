"""Checks for lesson 08 (text to image): choosing the guidance scale that maximises prompt accuracy.

The student writes ``best_guidance(measure, ws) -> (best_w, accuracies)``: measure each scale in ``ws`` once
(``measure(w)`` is the expensive part: it generates and classifies images), return the accuracies in the
order of ``ws`` and the scale with the highest one; on a tie the *smallest* such scale, because less guidance
keeps more variety (lesson 05's trade-off). The check uses made-up accuracy curves, so it means the same
under every profile, however well the model was trained.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

from . import CheckResult, report

__all__ = ["reference_best_guidance", "check_best_guidance"]


def reference_best_guidance(measure: Callable[[float], float], ws: Sequence[float]) -> tuple[float, list[float]]:
    """Measure every w once; return (the smallest w with the highest accuracy, the accuracies in order)."""
    accuracies = [float(measure(w)) for w in ws]
    best = max(accuracies)
    return next(w for w, a in zip(ws, accuracies) if a == best), accuracies


class _Counted:
    """A made-up accuracy curve that counts how often each w is measured."""

    def __init__(self, fn: Callable[[float], float]):
        self.fn, self.calls = fn, []

    def __call__(self, w: float) -> float:
        self.calls.append(w)
        return self.fn(w)


_CASES = [
    ("a curve that peaks at w = 3 (rises, then falls)", (0.0, 1.0, 2.0, 3.0, 5.0, 8.0),
     lambda w: 0.1 + 0.8 * math.exp(-((w - 3.0) / 2.5) ** 2)),
    ("a curve that keeps rising (the best is the last w)", (0.0, 1.0, 2.0, 4.0),
     lambda w: 1.0 - 0.9 * math.exp(-w)),
    ("a plateau: w = 2, 3 and 5 all reach 0.95 (a tie)", (0.0, 1.0, 2.0, 3.0, 5.0),
     lambda w: {0.0: 0.1, 1.0: 0.7, 2.0: 0.95, 3.0: 0.95, 5.0: 0.95}[w]),
    ("scales given out of order: (6, 0, 3, 1.5)", (6.0, 0.0, 3.0, 1.5),
     lambda w: {6.0: 0.8, 0.0: 0.1, 3.0: 0.9, 1.5: 0.6}[w]),
]


def check_best_guidance(student_fn) -> CheckResult:
    """``student_fn(measure, ws) -> (best_w, accuracies)``; see the module docstring."""
    name = "best_guidance"
    hint = ("call measure(w) exactly once per w, keep the results in the order of ws, and among the scales with "
            "the highest accuracy return the smallest (less guidance keeps more variety).")
    for describe, ws, fn in _CASES:
        measure = _Counted(fn)
        try:
            got = student_fn(measure, ws)
        except NotImplementedError:
            return report(CheckResult(name, False, False,
                                      f"[ ] {name}: not attempted yet - fill in the function above and re-run."))
        except Exception as e:  # a student's bug: a failed check, not a crash
            return report(CheckResult(name, True, False, f"[x] {name}: raised {type(e).__name__}: {e}\n"
                                      f"    input: {describe}\n    hint: {hint}"))
        problem = _compare(got, measure.calls, ws, fn)
        if problem:
            return report(CheckResult(name, True, False, f"[x] {name}: not quite.\n    input: {describe}\n"
                                      f"    {problem}\n    hint: {hint}"))
    return report(CheckResult(name, True, True, f"[ok] {name}: correct on all {len(_CASES)} cases."))


def _compare(got, calls: list, ws: Sequence[float], fn) -> str | None:
    if sorted(calls) != sorted(ws):
        return f"measure was called for {calls}; expected each of {list(ws)} exactly once"
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return f"expected a pair (best_w, accuracies), got {got!r}"
    expected_w, expected_acc = reference_best_guidance(fn, ws)
    best_w, accuracies = got
    if not isinstance(accuracies, (list, tuple)) or len(accuracies) != len(ws):
        return f"accuracies: expected a list of {len(ws)} numbers (one per w, in the order of ws), got {accuracies!r}"
    if any(abs(float(a) - e) > 1e-9 for a, e in zip(accuracies, expected_acc)):
        return "accuracies: the numbers are not in the order of ws (or not the measured ones)"
    if best_w not in ws:
        return f"best_w: {best_w!r} is not one of the scales measured"
    if abs(float(best_w) - expected_w) > 1e-12:
        mine = expected_acc[list(ws).index(best_w)]
        return (f"best_w: got {best_w}, whose accuracy is {mine:.3f}" +
                (" - the highest, but another scale ties with it" if mine == max(expected_acc) else
                 " - not the highest"))
    return None
