"""Checks for lesson 11 (latent diffusion): the KL term of the autoencoder, and the scaling factor s.

The student writes ``kl_term(mean, logvar) -> (B,)``: KL(N(mean, exp(logvar)) || N(0, I)) summed over each
example's latent, the regulariser Stable Diffusion's autoencoder adds to its reconstruction loss
(``course_lib.networks.autoencoder.kl_divergence`` is the reference). The cases are random tensors, so the check means
the same under every profile.

The second exercise is Stable Diffusion's own recipe (Rombach et al. 2022, Sec. 4.3.2): measure
s = 1 / std(z) over a batch of latents, give the diffusion model s * z, and divide by s before decoding. The
student writes ``scale_latents(z) -> (s, s * z)`` and ``unscale(z_scaled, s) -> z`` (checked together: a
round trip must give z back; ``latent_training.measure_scaling_factor`` and ``Autoencoder.from_latent`` are the
library's versions).
"""
from __future__ import annotations

import torch

from ..networks.autoencoder import kl_divergence
from . import Case, CheckResult, check_function

__all__ = ["reference_kl_term", "check_kl_term", "reference_scale_latents", "reference_unscale",
           "check_scaling"]


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


# --------------------------------------------------------------------------- exercise 2: the scaling factor s
def reference_scale_latents(z: torch.Tensor) -> tuple[float, torch.Tensor]:
    """s = 1 / std(z) over every number of the batch (one number, not one per channel), and s * z."""
    s = float(1.0 / z.float().std())
    return s, s * z


def reference_unscale(z_scaled: torch.Tensor, s: float) -> torch.Tensor:
    """What the decoder takes: z = z_scaled / s."""
    return z_scaled / s


def _scaling_cases() -> list[Case]:
    g = torch.Generator().manual_seed(111)
    return [
        Case("latents of std about 1 (our autoencoder's KL weight pins the scale): s near 1",
             (torch.randn(16, 4, 7, 7, generator=g),)),
        Case("latents of std about 5.5 (Stable Diffusion's VAE: s = 0.18215)", (5.5 * torch.randn(16, 4, 7, 7, generator=g),)),
        Case("latents of std about 0.2 with a mean of 0.3 (s is 1 / std, the mean is not removed)",
             (0.3 + 0.2 * torch.randn(8, 2, 7, 7, generator=g),)),
        Case("channels with different scales (s is one number for the whole batch)",
             (torch.randn(8, 4, 7, 7, generator=g) * torch.tensor([0.5, 1.0, 2.0, 4.0])[None, :, None, None],)),
    ]


def check_scaling(scale_latents, unscale) -> CheckResult:
    """``scale_latents(z) -> (s, z_scaled)`` then ``unscale(z_scaled, s) -> z``: both must be right."""
    result = check_function("scale_latents", scale_latents, reference_scale_latents, _scaling_cases(),
                            hint="s is a plain number: 1 / z.std() over the whole batch (float(...)); the "
                                 "scaled latents are s * z, and they then have standard deviation 1.",
                            atol=1e-5, rtol=1e-4)
    if not result:
        return result
    cases = [Case(f"{c.describe}, scaled by the right s", (reference_scale_latents(*c.args)[1],
                                                           reference_scale_latents(*c.args)[0]))
             for c in _scaling_cases()]
    return check_function("unscale", unscale, reference_unscale, cases,
                          hint="undo the scaling before decoding: divide by s (decode(z_scaled / s)); "
                               "multiplying again is the classic bug.", atol=1e-5, rtol=1e-4)
