"""Checks for lesson 12 (flow matching): the Euler sampler, written by hand.

The student writes ``euler(velocity_fn, x1, steps) -> x0``: ``steps`` equal steps of Euler's method on
dx/dt = velocity_fn(x, t) from t = 1 (noise) down to t = 0 (data), where ``velocity_fn(x, t)`` takes the
points and a float t in [0, 1]. ``course_lib.diffusion.flow.euler_sample`` is the reference (it calls a network as
``model(x, t * TIME_SCALE, cond)``; the cases here wrap plain velocity fields that way). The cases are
closed-form fields on 2-D points, so the check means the same under every profile.
"""
from __future__ import annotations

import torch

from ..diffusion.flow import TIME_SCALE, euler_sample
from . import Case, CheckResult, check_function

__all__ = ["reference_euler", "check_euler"]


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
