"""Checks for lesson 07 (CLIP): the symmetric contrastive loss."""
from __future__ import annotations

import torch

from . import Case, CheckResult, check_function

__all__ = ["reference_clip_loss", "check_clip_loss"]


def reference_clip_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """(CE(rows, arange) + CE(columns, arange)) / 2: Radford et al. (2021), Fig. 3."""
    from ..training.clip import clip_loss
    return clip_loss(logits_per_image)


def check_clip_loss(student_fn) -> CheckResult:
    g = torch.Generator().manual_seed(7)
    lopsided = torch.zeros(4, 4)
    lopsided[0] = torch.tensor([5.0, 0.0, 0.0, 0.0])      # image 0 is sure; caption 0's column is not
    lopsided[1:, 0] = torch.tensor([4.0, 4.0, 4.0])
    cases = [
        Case("the 3x3 logits [[2, 0, 0], [0, 2, 0], [0, 0, 2]] (every image matches its caption)",
             (2.0 * torch.eye(3),)),
        Case("a 3x3 matrix [[1, 2, 3], [4, 5, 6], [7, 8, 9]] (not symmetric: rows and columns differ)",
             (torch.arange(1.0, 10.0).view(3, 3),)),
        Case("a 4x4 matrix where rows and columns disagree (tests both directions)", (lopsided,)),
        Case("random 8x8 logits, scaled by 10", (10 * torch.randn(8, 8, generator=g),)),
    ]
    return check_function("clip_loss", student_fn, reference_clip_loss, cases,
                          hint="the correct caption of image i is caption i: use labels = arange(B) with "
                               "cross-entropy over each row (image -> captions) and over each column "
                               "(caption -> images), and average the two.")
