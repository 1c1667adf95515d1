"""Checks for lesson 05 (conditioning and classifier-free guidance): conditioning a die, and the guidance
combination of two noise predictions, and APG's projected update (the section "guidance, measured")."""
from __future__ import annotations

from typing import Callable

import torch

from ..diffusion.guidance import apg_update, cfg_combine
from . import Case, CheckResult, check_function

__all__ = ["reference_condition", "check_condition", "check_guidance_combine", "reference_projected_update",
           "check_projected_update"]


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


# --------------------------------------------------------------------------- exercise 3: APG's projected update
def reference_projected_update(d_cond: torch.Tensor, d_uncond: torch.Tensor, eta: float) -> torch.Tensor:
    """APG's update without momentum or norm cap (Sadat et al. 2024, Sec. 3), per image:
    Delta = d_cond - d_uncond, Delta_par = (<Delta, d_cond> / <d_cond, d_cond>) d_cond,
    update = (Delta - Delta_par) + eta Delta_par."""
    return apg_update(d_cond, d_uncond, eta=eta)[0]


def check_projected_update(student_fn) -> CheckResult:
    """``student_fn(d_cond, d_uncond, eta)``: (B, C, H, W) predicted clean images -> APG's update."""
    g = torch.Generator().manual_seed(7)
    d_c, d_u = torch.randn(3, 1, 6, 6, generator=g), torch.randn(3, 1, 6, 6, generator=g)
    cases = [
        Case("eta = 1 (must give CFG's update d_cond - d_uncond)", (d_c, d_u, 1.0)),
        Case("eta = 0, three random (3, 1, 6, 6) images (only the part orthogonal to d_cond)", (d_c, d_u, 0.0)),
        Case("eta = 0.5, the same images", (d_c, d_u, 0.5)),
        Case("eta = 0, d_uncond = 0 (Delta is parallel to d_cond: the update is 0)",
             (d_c, torch.zeros_like(d_c), 0.0)),
    ]
    return check_function("projected_update", student_fn, reference_projected_update, cases, atol=1e-5, rtol=1e-4,
                          hint="project per image, not over the whole batch: flatten each image to a vector, "
                               "take the dot product of Delta with the *unit* vector along d_cond, and multiply "
                               "that unit vector back. Only the parallel part is scaled by eta.")
