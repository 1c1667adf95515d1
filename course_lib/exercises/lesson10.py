"""Checks for lesson 10 (unCLIP on digits): the noise a clean-embedding prediction implies, and the prior's
two-candidate rerank.

unCLIP's prior predicts the clean image embedding z_0 (x0-prediction), but DDIM's update (Song et al. 2021,
Eq. 12) also needs the noise. The student writes ``implied_noise(z_t, z0_hat, alpha_bar_t) -> (B, D)``: DDPM's
Eq. (4), z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps, solved for eps, one alpha_bar per row
(``course_lib.diffusion.forward.predict_eps_from_x0`` is the reference). The cases are random tensors and a real
schedule, so the check means the same under every profile.

The second exercise is the paper's own line (Ramesh et al. 2022, Sec. 2.2): "generating two samples of z_i and
selecting the one with a higher dot product with z_t". The student writes ``rerank(candidates, text) -> (B, D)``
(``course_lib.pipelines.unclip.rerank`` is the reference).
"""
from __future__ import annotations

import torch

from ..diffusion.forward import predict_eps_from_x0
from ..diffusion.schedules import make_schedule
from ..networks.prior import rerank
from . import Case, CheckResult, check_function

__all__ = ["reference_implied_noise", "check_implied_noise", "matches_library", "reference_rerank", "check_rerank"]

_SCHEDULE = make_schedule("cosine", 1000)


def reference_implied_noise(z_t: torch.Tensor, z0_hat: torch.Tensor, alpha_bar_t: torch.Tensor) -> torch.Tensor:
    """eps = (z_t - sqrt(alpha_bar_t) z0_hat) / sqrt(1 - alpha_bar_t), alpha_bar_t (B,) one per row."""
    a = alpha_bar_t[:, None]                                               # (B, 1): one value per row
    return (z_t - a.sqrt() * z0_hat) / (1 - a).sqrt()


def matches_library(z_t: torch.Tensor, z0_hat: torch.Tensor, t: torch.Tensor) -> bool:
    """The reference equals ``forward.predict_eps_from_x0`` at the schedule's steps ``t`` (to float rounding)."""
    return torch.allclose(reference_implied_noise(z_t, z0_hat, _SCHEDULE.alpha_bar[t]),
                          predict_eps_from_x0(z_t, t, z0_hat, _SCHEDULE), rtol=1e-3, atol=1e-3)


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(10)
    z0 = 8 * torch.nn.functional.normalize(torch.randn(4, 64, generator=g), dim=-1)
    eps = torch.randn(4, 64, generator=g)
    ab = _SCHEDULE.alpha_bar[torch.tensor([0, 250, 600, 999])]
    z_t = ab[:, None].sqrt() * z0 + (1 - ab[:, None]).sqrt() * eps
    return [
        Case("4 embeddings of D = 64 at t = 0, 250, 600 and 999 (one alpha_bar per row)", (z_t, z0, ab)),
        Case("a wrong z0_hat: the implied noise then differs from the true one", (z_t, z0.flip(0), ab)),
        Case("B = 2, D = 3, alpha_bar 0.5 and 0.9", (torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g),
                                                      torch.tensor([0.5, 0.9]))),
    ]


def check_implied_noise(student_fn) -> CheckResult:
    return check_function("implied_noise", student_fn, reference_implied_noise, _cases(),
                          hint="alpha_bar_t has shape (B,): make it (B, 1) so it multiplies each row "
                               "(alpha_bar_t[:, None]), then solve z_t = sqrt(a) z0 + sqrt(1 - a) eps for eps.",
                          atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- exercise 2: the two-candidate rerank
def reference_rerank(candidates: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """``unclip.rerank``: (B, K, D) candidates and (B, D) text embeddings -> (B, D), the highest dot product."""
    return rerank(candidates, text)


def _rerank_cases() -> list[Case]:
    g = torch.Generator().manual_seed(100)
    unit = lambda *s: torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1)
    text = unit(5, 64)
    first_wins = torch.stack([text + 0.1 * unit(5, 64), -text + 0.1 * unit(5, 64)], dim=1)
    mixed = unit(6, 2, 64)
    long = torch.tensor([[[3.0, 0.0], [0.0, 1.0]]])                        # longer, but pointing away
    return [
        Case("5 captions, D = 64: candidate 0 points along the text, candidate 1 away", (first_wins, text)),
        Case("the same with the candidates swapped (the best is now candidate 1)", (first_wins.flip(1), text)),
        Case("6 captions, 2 random unit candidates each", (mixed, unit(6, 64))),
        Case("K = 4 random candidates per caption", (unit(3, 4, 64), unit(3, 64))),
        Case("1 caption, D = 2, text (0, 1): candidates (3, 0) and (0, 1); the dot product picks (0, 1)",
             (long, torch.tensor([[0.0, 1.0]]))),
    ]


def check_rerank(student_fn) -> CheckResult:
    return check_function("rerank", student_fn, reference_rerank, _rerank_cases(),
                          hint="the dot products are (candidates * text[:, None]).sum(-1), shape (B, K); take "
                               "argmax over K (dim 1) and pick that row of each caption's candidates, e.g. "
                               "candidates[torch.arange(B), best].", atol=1e-6, rtol=1e-5)
