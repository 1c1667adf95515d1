"""Checks for lesson 11 (latent diffusion): the KL term of the autoencoder.

The student writes ``kl_term(mean, logvar) -> (B,)``: KL(N(mean, exp(logvar)) || N(0, I)) summed over each
example's latent, the regulariser Stable Diffusion's autoencoder adds to its reconstruction loss
(``course_lib.networks.autoencoder.kl_divergence`` is the reference). The cases are random tensors, so the check means
the same under every profile.
"""
from __future__ import annotations

import torch

from ..networks.autoencoder import kl_divergence
from . import Case, CheckResult, check_function

__all__ = ["reference_kl_term", "check_kl_term"]


def reference_kl_term(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """``autoencoder.kl_divergence``: (B, C, H, W) mean and logvar -> (B,) nats."""
    return kl_divergence(mean, logvar)


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(11)
    zeros = torch.zeros(2, 4, 7, 7)
    return [
        Case("mean 0 and logvar 0 (q is the prior N(0, I)): the KL is 0", (zeros, zeros)),
        Case("a random mean, logvar 0: only the mean^2 part is left", (torch.randn(3, 4, 7, 7, generator=g), zeros[:1].expand(3, -1, -1, -1))),
        Case("random mean and logvar, 2 channels", (torch.randn(3, 2, 7, 7, generator=g),
                                                   torch.randn(3, 2, 7, 7, generator=g))),
        Case("one example of shape (1, 1, 1, 1): mean 2, variance 0.25", (torch.full((1, 1, 1, 1), 2.0),
                                                                          torch.full((1, 1, 1, 1), -1.3862944))),
    ]


def check_kl_term(student_fn) -> CheckResult:
    return check_function("kl_term", student_fn, reference_kl_term, _cases(),
                          hint="per element: 0.5 * (mean^2 + exp(logvar) - 1 - logvar); then sum over every "
                               "dimension but the first (x.flatten(1).sum(1)), one number per example.",
                          atol=1e-4, rtol=1e-4)
