"""Checks for lesson 09 (a language model as text encoder): the sentence vector by mean pooling.

The student writes ``mean_pool(tokens, mask) -> (B, D)``: the mean of the *real* tokens' states (padding must
not count), scaled to unit length, which is how all-MiniLM-L6-v2 turns its token states into one sentence
vector (``course_lib.networks.text_encoders.mean_pool`` is the reference). The cases are random tensors, so the check
means the same under every profile.
"""
from __future__ import annotations

import torch

from ..networks.text_encoders import mean_pool
from . import Case, CheckResult, check_function

__all__ = ["reference_mean_pool", "check_mean_pool"]


def reference_mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``language_encoder.mean_pool``: (B, L, D) states and (B, L) mask -> (B, D) unit vectors."""
    return mean_pool(tokens, mask)


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)
    tokens = torch.randn(3, 6, 8, generator=g)
    full = torch.ones(3, 6, dtype=torch.long)
    padded = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    big = 50 * torch.randn(2, 5, 384, generator=g)
    return [
        Case("3 prompts of 6 real tokens each, D = 8 (no padding)", (tokens, full)),
        Case("3 prompts of 6, 3 and 2 real tokens, the rest padding (mask of 0s)", (tokens, padded)),
        Case("the same mask as booleans (True = real token)", (tokens, padded.bool())),
        Case("D = 384 with large values: the result must still have length 1", (big, torch.tensor(
            [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]))),
    ]


def check_mean_pool(student_fn) -> CheckResult:
    return check_function("mean_pool", student_fn, reference_mean_pool, _cases(),
                          hint="multiply the states by the mask (as floats, shape (B, L, 1)) so padding adds "
                               "nothing, sum over L, divide by the number of real tokens, then divide each row "
                               "by its length (torch.nn.functional.normalize).", atol=1e-5, rtol=1e-4)
