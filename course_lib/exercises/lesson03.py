"""Checks for lesson 03 (training a denoiser)."""
from __future__ import annotations

import torch

from ..diffusion.forward import simple_loss
from ..diffusion.schedules import make_schedule
from . import Case, CheckResult, check_function

__all__ = ["check_training_loss"]


class _FixedDenoiser(torch.nn.Module):
    """A small deterministic 'network' whose output depends on x_t and t, so a wrong x_t or t shows."""

    def forward(self, x, t, cond=None):
        return 0.5 * x + 1e-3 * t.float().view(-1, *([1] * (x.dim() - 1)))


def _reference(model, x0, t, eps, schedule):
    return simple_loss(model, x0, schedule, t=t, noise=eps)


def check_training_loss(student_fn) -> CheckResult:
    """``student_fn(model, x0, t, eps, schedule) -> scalar``: DDPM's simple loss for given t and noise."""
    g = torch.Generator().manual_seed(0)
    sched = make_schedule("linear", 1000)
    x0 = torch.rand(4, 1, 28, 28, generator=g) * 2 - 1
    eps = torch.randn(4, 1, 28, 28, generator=g)
    cases = [
        Case("4 digits, t = [0, 10, 500, 999], linear schedule",
             (_FixedDenoiser(), x0, torch.tensor([0, 10, 500, 999]), eps, sched)),
        Case("4 digits, all at t = 250, cosine schedule",
             (_FixedDenoiser(), x0, torch.full((4,), 250), eps, make_schedule("cosine", 1000))),
    ]
    return check_function("training_loss", student_fn, _reference, cases,
                          hint="noise x0 to x_t with the closed form (sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) "
                               "eps), ask the model for eps at (x_t, t), and average the squared error.")
