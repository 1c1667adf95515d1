"""Checks for lesson 00 (from static to digits)."""
from __future__ import annotations

import torch

from . import Case, CheckResult, check_function

__all__ = ["check_to_model_range", "reference_to_model_range"]


def reference_to_model_range(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in {0..255} -> float in [-1, 1]: x = p / 127.5 - 1."""
    return pixels.float() / 127.5 - 1.0


def check_to_model_range(student_fn) -> CheckResult:
    g = torch.Generator().manual_seed(0)
    cases = [
        Case("the three pixels [0, 128, 255] (uint8)", (torch.tensor([0, 128, 255], dtype=torch.uint8),)),
        Case("a random uint8 batch of shape (4, 1, 28, 28)",
             (torch.randint(0, 256, (4, 1, 28, 28), generator=g, dtype=torch.uint8),)),
    ]
    return check_function("to_model_range", student_fn, reference_to_model_range, cases,
                          hint="0 must map to -1 and 255 to +1; convert to float before dividing.")
