"""Checks for lesson 02 (the objective): the KL between Gaussians, the posterior mean from the noise."""
from __future__ import annotations

import math

import torch

from ..diffusion import forward
from ..diffusion.schedules import make_schedule
from . import Case, CheckResult, check_function

__all__ = ["check_gaussian_kl", "check_posterior_mean", "reference_gaussian_kl", "reference_posterior_mean"]


# --------------------------------------------------------------------------- exercise 1: the Gaussian KL
def reference_gaussian_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
                          ) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise (``forward.gaussian_kl``)."""
    return forward.gaussian_kl(mean1, logvar1, mean2, logvar2)


def check_gaussian_kl(student_fn) -> CheckResult:
    """``student_fn(mean1, logvar1, mean2, logvar2)``: tensors that broadcast; returns the elementwise KL."""
    g = torch.Generator().manual_seed(2)
    m, lv = torch.randn(5, generator=g), torch.randn(5, generator=g)
    zero = torch.tensor(0.0)
    cases = [
        Case("identical Gaussians: mean1 = mean2 (5 values), logvar1 = logvar2 (5 values)", (m, lv, m, lv)),
        Case("N(0, 1) against N(1, 4): mean1=0, logvar1=0, mean2=1, logvar2=log(4) (0-d tensors)",
             (zero, zero, torch.tensor(1.0), torch.tensor(math.log(4.0)))),
        Case("N(0, 4) against N(0, 1): only the variances differ (0-d tensors)",
             (zero, torch.tensor(math.log(4.0)), zero, zero)),
        Case("a (3, 4) batch of means and log-variances against N(0, 1) given as 0-d tensors",
             (torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g), zero, zero)),
    ]
    return check_function("gaussian_kl", student_fn, reference_gaussian_kl, cases, atol=1e-5, rtol=1e-4,
                          hint="KL = 0.5 * (log(v2 / v1) + (v1 + (m1 - m2)^2) / v2 - 1), and the arguments are "
                               "*log*-variances: v = exp(logvar). It must be 0 for identical Gaussians.")


# --------------------------------------------------------------------------- exercise 2: the posterior mean
def reference_posterior_mean(x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, schedule) -> torch.Tensor:
    """mu_tilde = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) (DDPM Eq. 10)."""
    return forward.posterior_mean_from_eps(x_t, t, eps, schedule)


def check_posterior_mean(student_fn) -> CheckResult:
    """``student_fn(x_t, t, eps, schedule)``: x_t, eps ``(B, C, H, W)``, t ``(B,)`` long; returns ``(B, C, H, W)``."""
    g = torch.Generator().manual_seed(4)
    lin, cos = make_schedule("linear", 1000), make_schedule("cosine", 1000)
    cases = []
    for sched, ts in ((lin, [0, 1, 250, 999]), (cos, [3, 100, 500, 900])):
        x0 = torch.rand(4, 1, 5, 5, generator=g) * 2 - 1
        eps = torch.randn(4, 1, 5, 5, generator=g)
        t = torch.tensor(ts)
        x_t = forward.q_sample(x0, t, sched, noise=eps)
        cases.append(Case(f"x_t = q_sample(x0, t, schedule, noise=eps) for a (4, 1, 5, 5) batch, t = {ts}, "
                          f"{sched.name} schedule (T = 1000)", (x_t, t, eps, sched)))
    return check_function("posterior_mean", student_fn, reference_posterior_mean, cases, atol=1e-4, rtol=1e-3,
                          hint="DDPM Eq. (10): mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t). "
                               "Pick each schedule value at t and reshape it to (B, 1, 1, 1) "
                               "(course_lib.diffusion.forward.extract does that).")
