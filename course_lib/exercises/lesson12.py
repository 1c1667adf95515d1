"""Checks for lesson 12 (flow matching): the flow-matching loss and the Euler sampler, written by hand.

The student writes ``euler(velocity_fn, x1, steps) -> x0``: ``steps`` equal steps of Euler's method on
dx/dt = velocity_fn(x, t) from t = 1 (noise) down to t = 0 (data), where ``velocity_fn(x, t)`` takes the
points and a float t in [0, 1]. ``course_lib.diffusion.flow.euler_sample`` is the reference (it calls a network as
``model(x, t * TIME_SCALE, cond)``; the cases here wrap plain velocity fields that way). The cases are
closed-form fields on 2-D points, so the check means the same under every profile.

The first exercise is the loss itself, four lines (Esser et al. 2024, Eq. 3 with SD3's convention, t = 0 data,
t = 1 noise): x_t = (1 - t) x0 + t eps, target v = eps - x0, and the mean squared error of
``velocity_fn(x_t, t)`` against it. The student writes ``fm_loss(velocity_fn, x0, eps, t) -> scalar``, with t
given as (B,) so the check is deterministic (``course_lib.diffusion.flow.flow_loss`` draws t and eps itself, then does
the same).
"""
from __future__ import annotations

import torch

from ..diffusion.flow import TIME_SCALE, euler_sample, flow_path, velocity_target
from . import Case, CheckResult, check_function

__all__ = ["reference_euler", "check_euler", "reference_fm_loss", "check_fm_loss"]


def reference_euler(velocity_fn, x1: torch.Tensor, steps: int) -> torch.Tensor:
    """``flow.euler_sample`` on ``velocity_fn(x, t)`` (t a float in [0, 1])."""
    model = lambda x, t_scaled, cond=None: velocity_fn(x, float(t_scaled[0]) / TIME_SCALE)
    return euler_sample(model, x1, steps=steps)


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(12)
    x1 = torch.randn(8, 2, generator=g)
    target = torch.tensor([0.5, -0.25])
    straight = lambda x, t: x - target if t > 0 else torch.zeros_like(x)      # x_t = (1 - t) target + t x1
    curl = lambda x, t: torch.stack([-x[:, 1], x[:, 0]], dim=1) * (1 + t)      # turns, so steps matter
    return [
        Case("a constant field v = 1: one step from t = 1 to 0", (lambda x, t: torch.ones_like(x), x1, 1)),
        Case("straight paths to the point (0.5, -0.25), 4 steps", (straight, x1, 4)),
        Case("a field that turns the points and depends on t, 7 steps", (curl, x1, 7)),
    ]


def check_euler(student_fn) -> CheckResult:
    return check_function("euler", student_fn, reference_euler, _cases(),
                          hint="the times are 1, 1 - 1/steps, ..., 0; at each one x <- x + (t_next - t) * "
                               "velocity_fn(x, t), with t_next - t negative (we walk from noise to data).",
                          atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- exercise: the flow-matching loss
def reference_fm_loss(velocity_fn, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """mean over everything of (velocity_fn(x_t, t) - (eps - x0))^2, x_t = (1 - t) x0 + t eps; t (B,)."""
    x_t = flow_path(x0, eps, t)
    return (velocity_fn(x_t, t) - velocity_target(x0, eps)).pow(2).mean()


def _fm_cases() -> list[Case]:
    g = torch.Generator().manual_seed(120)
    x0, eps = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    t = torch.rand(6, generator=g)
    zero = lambda x, t: torch.zeros_like(x)
    exact = lambda x, t: torch.ones_like(x)                           # the target when eps - x0 = 1
    leaky = lambda x, t: 0.5 * x * (1 + t.view(-1, *[1] * (x.dim() - 1)))  # uses x_t and t: both must be right
    return [
        Case("a model that predicts 0 everywhere, 6 images of (1, 4, 4), random t", (zero, x0, eps, t)),
        Case("the same data, a model v(x, t) = 0.5 x (1 + t): x_t and t must be built right", (leaky, x0, eps, t)),
        Case("eps = x0 + 1, so the target is 1 everywhere and a model of 1s has loss 0",
             (exact, x0, x0 + 1, t)),
        Case("2-D points, t = 0 (data) and t = 1 (noise) at the two ends", (leaky, torch.randn(2, 2, generator=g),
                                                                            torch.randn(2, 2, generator=g),
                                                                            torch.tensor([0.0, 1.0]))),
    ]


def check_fm_loss(student_fn) -> CheckResult:
    return check_function("fm_loss", student_fn, reference_fm_loss, _fm_cases(),
                          hint="t has shape (B,): reshape it to (B, 1, ...) to mix images (t.view(-1, *[1] * "
                               "(x0.dim() - 1))). Here t = 0 is data: x_t = (1 - t) x0 + t eps, and the target "
                               "is eps - x0 (not x0 - eps). Call velocity_fn(x_t, t) with the (B,) t.",
                          atol=1e-5, rtol=1e-4)
