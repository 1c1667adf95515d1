"""Checks for lesson 01 (forward noising): the closed form, alpha_bar at a given step, the endpoint."""
from __future__ import annotations

import math

import torch

from ..diffusion import forward
from ..diffusion.schedules import make_schedule
from . import Case, CheckResult, check_function, report

__all__ = ["check_q_sample", "check_alpha_bar_at", "check_endpoint_moments", "reference_q_sample",
           "reference_alpha_bar_at", "expected_endpoint_moments"]


# --------------------------------------------------------------------------- exercise 1: the closed form
def reference_q_sample(x0: torch.Tensor, t: torch.Tensor, alpha_bar: torch.Tensor, noise: torch.Tensor
                       ) -> torch.Tensor:
    """x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise (DDPM Eq. 4), with alpha_bar a ``(T,)`` tensor."""
    a = forward.extract(alpha_bar, t, x0)                    # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def check_q_sample(student_fn) -> CheckResult:
    """``student_fn(x0, t, alpha_bar, noise)``: x0, noise ``(B, C, H, W)``, t ``(B,)`` long, alpha_bar ``(T,)``."""
    g = torch.Generator().manual_seed(1)
    ab_lin = make_schedule("linear", 1000).alpha_bar
    ab_cos = make_schedule("cosine", 100).alpha_bar
    x_a, n_a = torch.rand(1, 1, 3, 3, generator=g) * 2 - 1, torch.randn(1, 1, 3, 3, generator=g)
    x_b, n_b = torch.rand(4, 1, 5, 5, generator=g) * 2 - 1, torch.randn(4, 1, 5, 5, generator=g)
    cases = [
        Case("one 3x3 image at t = [0], linear schedule (T = 1000)", (x_a, torch.tensor([0]), ab_lin, n_a)),
        Case("one 3x3 image at t = [999], linear schedule (T = 1000)", (x_a, torch.tensor([999]), ab_lin, n_a)),
        Case("a batch of 4 images (4, 1, 5, 5) at t = [0, 10, 50, 99], cosine schedule (T = 100)",
             (x_b, torch.tensor([0, 10, 50, 99]), ab_cos, n_b)),
    ]
    return check_function("q_sample", student_fn, reference_q_sample, cases,
                          hint="take alpha_bar[t] (one value per image) and reshape it to (B, 1, 1, 1) so it "
                               "multiplies each image; the signal gets the square root of alpha_bar, the noise "
                               "the square root of 1 - alpha_bar.")


# --------------------------------------------------------------------------- exercise 2: alpha_bar at t
def reference_alpha_bar_at(betas: torch.Tensor, t: int) -> float:
    """alpha_bar_t = prod_{s=0}^{t} (1 - beta_s) (0-based t; DDPM, above Eq. 4)."""
    return float(torch.prod(1 - betas[: t + 1].double()))


def check_alpha_bar_at(student_fn) -> CheckResult:
    """``student_fn(betas, t) -> float``: betas ``(T,)``, t an int (0-based)."""
    lin, cos = make_schedule("linear", 1000).betas, make_schedule("cosine", 1000).betas
    cases = [
        Case("linear betas (T = 1000), t = 0", (lin, 0)),
        Case("linear betas (T = 1000), t = 499", (lin, 499)),
        Case("cosine betas (T = 1000), t = 249", (cos, 249)),
        Case("four betas [0.1, 0.2, 0.3, 0.4], t = 2", (torch.tensor([0.1, 0.2, 0.3, 0.4]), 2)),
    ]
    return check_function("alpha_bar_at", student_fn, reference_alpha_bar_at, cases, atol=1e-6, rtol=1e-4,
                          hint="alpha_bar multiplies the fraction (1 - beta) kept at every step from 0 up to "
                               "*and including* t, so t = 0 keeps 1 - betas[0].")


# --------------------------------------------------------------------------- exercise 3: the endpoint
def expected_endpoint_moments(x0: torch.Tensor, alpha_bar_last: float) -> tuple[float, float]:
    """Mean and variance of all values of x_{T-1} ~ q(x_{T-1} | x0) pooled together (DDPM Eq. 4):
    mean = sqrt(a) mean(x0), variance = a var(x0) + (1 - a), with a = alpha_bar at the last step."""
    a = float(alpha_bar_last)
    x = x0.double()
    return math.sqrt(a) * float(x.mean()), a * float(x.var(unbiased=False)) + (1 - a)


def check_endpoint_moments(student_fn) -> CheckResult:
    """``student_fn(x0, schedule, generator) -> (mean, variance)`` of x at the last step, over all values.

    Accepts any answer within 5 standard errors of the exact moments (the noise is random, so the check is
    statistical, not exact).
    """
    name = "endpoint_moments"
    hint = ("noise x0 all the way to the last index, t = schedule.T - 1 (course_lib.diffusion.forward.q_sample does it "
            "in one call), then take the mean and the variance of every value of the result.")
    g = torch.Generator().manual_seed(3)
    white = torch.ones(64, 1, 8, 8)
    mixed = (torch.rand(64, 1, 8, 8, generator=g) > 0.8).float() * 2 - 1     # mostly black, like MNIST
    cases = [("64 all-white 8x8 images (every value +1), cosine schedule (T = 1000)", white, "cosine"),
             ("64 random black-and-white 8x8 images, linear schedule (T = 1000)", mixed, "linear")]
    for describe, x0, sched_name in cases:
        schedule = make_schedule(sched_name, 1000)
        try:
            got = student_fn(x0.clone(), schedule, torch.Generator().manual_seed(0))
        except NotImplementedError:
            return report(CheckResult(name, False, False,
                                      f"[ ] {name}: not attempted yet - fill in the function above and re-run."))
        except Exception as e:
            return report(CheckResult(name, True, False, f"[x] {name}: raised {type(e).__name__}: {e}\n"
                                                         f"    input: {describe}\n    hint: {hint}"))
        try:
            mean, var = (float(v) for v in got)
        except (TypeError, ValueError):
            return report(CheckResult(name, True, False, f"[x] {name}: expected two numbers (mean, variance), "
                                                         f"got {got!r}\n    input: {describe}\n    hint: {hint}"))
        exp_mean, exp_var = expected_endpoint_moments(x0, schedule.alpha_bar[-1])
        n = x0.numel()
        tol_mean, tol_var = 5 * math.sqrt(exp_var / n), 5 * exp_var * math.sqrt(2 / n)   # 5 standard errors
        if not (abs(mean - exp_mean) <= tol_mean and abs(var - exp_var) <= tol_var):
            return report(CheckResult(name, True, False,
                                      f"[x] {name}: not quite.\n    input: {describe}\n"
                                      f"    expected mean {exp_mean:.3f} +- {tol_mean:.3f} and variance "
                                      f"{exp_var:.3f} +- {tol_var:.3f}; got mean {mean:.3f}, variance {var:.3f}\n"
                                      f"    hint: {hint}"))
    return report(CheckResult(name, True, True, f"[ok] {name}: correct on all {len(cases)} cases "
                                                f"(within 5 standard errors of the exact moments)."))
