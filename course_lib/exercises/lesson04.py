"""Checks for lesson 04 (sampling): one DDIM update step."""
from __future__ import annotations

import torch

from ..diffusion.samplers import ddim_step
from ..diffusion.schedules import make_schedule
from . import Case, CheckResult, check_function

__all__ = ["check_ddim_update", "reference_ddim_update"]


def reference_ddim_update(x0_hat: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t: torch.Tensor,
                          alpha_bar_prev: torch.Tensor, eta: float, noise: torch.Tensor) -> torch.Tensor:
    """DDIM's update (Song et al. 2021, Eq. 12 with sigma_t from Eq. 16): the library's ``ddim_step``."""
    return ddim_step(x0_hat, eps_hat, alpha_bar_t, alpha_bar_prev, eta=eta, noise=noise)


def check_ddim_update(student_fn) -> CheckResult:
    """``student_fn(x0_hat, eps_hat, alpha_bar_t, alpha_bar_prev, eta, noise)``: images ``(B, C, H, W)``,
    alpha_bar values 0-d tensors, eta a float."""
    g = torch.Generator().manual_seed(4)
    ab = make_schedule("cosine", 1000).alpha_bar
    x0, eps, z = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    x0 = x0.clamp(-1, 1)
    cases = [
        Case("eta = 0, from t = 500 to t = 400 (cosine, T = 1000)", (x0, eps, ab[500], ab[400], 0.0, z)),
        Case("eta = 0, the last step: from t = 99 to x_0 (alpha_bar_prev = 1)",
             (x0, eps, ab[99], torch.tensor(1.0), 0.0, z)),
        Case("eta = 1, from t = 900 to t = 800", (x0, eps, ab[900], ab[800], 1.0, z)),
        Case("eta = 0.5, from t = 300 to t = 250", (x0, eps, ab[300], ab[250], 0.5, z)),
    ]
    return check_function("ddim_update", student_fn, reference_ddim_update, cases, atol=1e-5, rtol=1e-4,
                          hint="three terms: sqrt(alpha_bar_prev) x0_hat, then sqrt(1 - alpha_bar_prev - sigma^2) "
                               "eps_hat, then sigma noise; sigma (Eq. 16) is 0 when eta = 0 and uses the ratio "
                               "alpha_bar_t / alpha_bar_prev.")
