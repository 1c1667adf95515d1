"""Checks for lesson 05 (conditioning and classifier-free guidance): conditioning a die, and the guidance
combination of two noise predictions."""
from __future__ import annotations

from typing import Callable

import torch

from ..diffusion.guidance import cfg_combine
from . import Case, CheckResult, check_function

__all__ = ["reference_condition", "check_condition", "check_guidance_combine"]


# --------------------------------------------------------------------------- exercise 1: condition a die
def reference_condition(p: torch.Tensor, event: Callable[[int], bool]) -> torch.Tensor:
    """p(face | event) = p(face) [event(face)] / P(event), for the faces 1..K of a die.

    Args:
        p: (K,) probabilities of the faces 1..K (summing to 1).
        event: a predicate on a face, e.g. ``lambda face: face % 2 == 0``.
    Returns:
        (K,) the conditional probabilities: 0 where the event fails, renormalised where it holds.
    Raises:
        ValueError: when the event has probability 0 (nothing to condition on).
    """
    holds = torch.tensor([bool(event(face)) for face in range(1, len(p) + 1)], device=p.device)   # (K,)
    kept = torch.where(holds, p, torch.zeros_like(p))
    total = kept.sum()                                                    # P(event)
    if total <= 0:
        raise ValueError(f"the event has probability {float(total)}: there is nothing to condition on")
    return kept / total


def check_condition(student_fn) -> CheckResult:
    """``student_fn(p, event) -> (K,)``: p (K,) probabilities of faces 1..K, event a predicate on a face."""
    fair = torch.full((6,), 1 / 6, dtype=torch.float64)
    loaded = torch.tensor([0.5, 0.1, 0.1, 0.1, 0.1, 0.1], dtype=torch.float64)
    d8 = torch.full((8,), 1 / 8)
    cases = [
        Case("a fair die, event 'even' (face % 2 == 0)", (fair, lambda face: face % 2 == 0)),
        Case("a fair die, event 'at least 5' (face >= 5)", (fair, lambda face: face >= 5)),
        Case("a die loaded towards 1 (p = [0.5, 0.1, 0.1, 0.1, 0.1, 0.1]), event 'odd'",
             (loaded, lambda face: face % 2 == 1)),
        Case("a die loaded towards 1, event 'any face' (always true)", (loaded, lambda face: True)),
        Case("a fair 8-sided die (float32), event 'prime' (2, 3, 5, 7)", (d8, lambda face: face in (2, 3, 5, 7))),
    ]
    return check_function("condition", student_fn, reference_condition, cases, atol=1e-6, rtol=1e-5,
                          hint="faces are numbered from 1, not 0. Keep p only where the event holds (0 "
                               "elsewhere), then divide by what is left, P(event), so the result sums to 1.")


# --------------------------------------------------------------------------- exercise 2: the guidance rule
def check_guidance_combine(student_fn) -> CheckResult:
    """``student_fn(eps_uncond, eps_cond, w)``: the classifier-free-guided noise prediction (our w)."""
    g = torch.Generator().manual_seed(5)
    eps_u, eps_c = torch.randn(2, 1, 4, 4, generator=g), torch.randn(2, 1, 4, 4, generator=g)
    cases = [
        Case("w = 0 (must give the unconditional prediction)", (eps_u, eps_c, 0.0)),
        Case("w = 1 (must give the conditional prediction)", (eps_u, eps_c, 1.0)),
        Case("w = 3, two random (2, 1, 4, 4) predictions", (eps_u, eps_c, 3.0)),
        Case("w = 7.5, two random (2, 1, 4, 4) predictions", (eps_u, eps_c, 7.5)),
        Case("w = 0.5 (between the two)", (eps_u, eps_c, 0.5)),
    ]
    return check_function("guidance_combine", student_fn, cfg_combine, cases, atol=1e-5, rtol=1e-5,
                          hint="w = 0 must return eps_uncond and w = 1 eps_cond; a larger w goes *beyond* "
                               "eps_cond, further along the direction from eps_uncond to eps_cond. (If you "
                               "followed Ho & Salimans' paper: their w is ours minus 1.)")
