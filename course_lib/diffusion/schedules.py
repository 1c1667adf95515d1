"""Noise schedules: how much noise the forward process adds at each of its T steps.

Plain functions return tensors of length T (index ``t = 0 .. T-1`` is the paper's step ``t + 1``), and a
small ``Schedule`` class holds the derived quantities every other module needs, so they are computed once:

    beta_t                       variance added at step t
    alpha_t      = 1 - beta_t
    alpha_bar_t  = prod_{s<=t} alpha_s          (DDPM, Ho et al. 2020, notation above Eq. 4)
    SNR(t)       = alpha_bar_t / (1 - alpha_bar_t)   (Kingma et al. 2021, Variational Diffusion Models, Eq. 2)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["linear_betas", "cosine_betas", "alphas_from_betas", "alpha_bar_from_betas", "snr", "Schedule",
           "make_schedule"]


def linear_betas(T: int = 1000, beta_1: float = 1e-4, beta_T: float = 0.02, max_beta: float = 0.999
                 ) -> torch.Tensor:
    """beta_t rising linearly from beta_1 to beta_T (Ho et al. 2020, Sec. 4: 1e-4 to 0.02 for T = 1000).

    For other T the end points are rescaled by 1000 / T so the total noise stays comparable (as in
    Nichol & Dhariwal 2021's code). For T < 50 the rescaled beta_T would reach 1 (alpha_bar = 0, log-SNR
    = -inf), so betas are clipped to at most ``max_beta``, as the cosine schedule is. Returns ``(T,)`` float64.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    scale = 1000 / T
    return torch.linspace(beta_1 * scale, beta_T * scale, T, dtype=torch.float64).clamp(max=max_beta)


def cosine_betas(T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """The cosine schedule (Nichol & Dhariwal 2021, Eq. 17):

        alpha_bar(t) = f(t) / f(0),   f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ),
        beta_t = 1 - alpha_bar(t) / alpha_bar(t-1), clipped to at most 0.999 (their Sec. 3.2) so the
        last steps do not become singular near t = T.

    Returns ``(T,)`` float64.
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def alphas_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_t = 1 - beta_t (DDPM, above Eq. 4)."""
    return 1.0 - betas


def alpha_bar_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s=1}^{t} alpha_s (DDPM, above Eq. 4): the signal kept after t steps."""
    return torch.cumprod(1.0 - betas, dim=0)


def snr(alpha_bar: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio SNR(t) = alpha_bar_t / (1 - alpha_bar_t) (Kingma et al. 2021, Eq. 2)."""
    return alpha_bar / (1.0 - alpha_bar)


@dataclass
class Schedule:
    """All quantities derived from one beta schedule, as float32 tensors of length T on one device.

    Attributes (each ``(T,)``): ``betas``, ``alphas``, ``alpha_bar``, ``alpha_bar_prev`` (alpha_bar_{t-1},
    with alpha_bar_0 = 1), ``sqrt_alpha_bar``, ``sqrt_one_minus_alpha_bar``, ``snr``, ``log_snr``.
    """
    name: str
    betas: torch.Tensor
    alphas: torch.Tensor
    alpha_bar: torch.Tensor
    alpha_bar_prev: torch.Tensor
    sqrt_alpha_bar: torch.Tensor
    sqrt_one_minus_alpha_bar: torch.Tensor
    snr: torch.Tensor
    log_snr: torch.Tensor

    @property
    def T(self) -> int:
        return self.betas.shape[0]

    @property
    def device(self) -> torch.device:
        return self.betas.device

    def to(self, device: torch.device | str) -> "Schedule":
        return Schedule(self.name, *(getattr(self, k).to(device) for k in (
            "betas", "alphas", "alpha_bar", "alpha_bar_prev", "sqrt_alpha_bar", "sqrt_one_minus_alpha_bar",
            "snr", "log_snr")))


def make_schedule(name: str = "cosine", T: int = 1000, device: torch.device | str = "cpu") -> Schedule:
    """Build a ``Schedule`` by name: ``"linear"`` (Ho et al. 2020) or ``"cosine"`` (Nichol & Dhariwal 2021).

    Derived quantities are computed in float64, then stored as float32.
    """
    makers = {"linear": linear_betas, "cosine": cosine_betas}
    if name not in makers:
        raise ValueError(f"unknown schedule {name!r}: choose one of {', '.join(makers)}")
    betas = makers[name](T)
    alpha_bar = alpha_bar_from_betas(betas)
    alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    s = snr(alpha_bar)
    values = (betas, alphas_from_betas(betas), alpha_bar, alpha_bar_prev, alpha_bar.sqrt(),
              (1 - alpha_bar).sqrt(), s, s.log())
    return Schedule(name, *(v.float().to(device) for v in values))
