"""The diffusion *model*: the forward Markov chain that turns digits into static, its posterior, and the
objective a denoising network is trained with. No network lives here; a network only enters as a function
``model(x_t, t, cond=None) -> eps`` that predicts the noise.

Conventions (see ``schedules.py``): ``t`` is a 0-based index into the schedule, ``t = 0 .. T-1``, so index
``t`` is the paper's step ``t + 1`` and ``x_t`` in code is the image after ``t + 1`` noising steps. ``t`` is
an ``int`` (the same step for the whole batch) or a ``(B,)`` long tensor (one step per example).

    code name                       paper (Ho et al. 2020, DDPM)
    x0, x_t, eps                    x_0, x_t, epsilon
    schedule.betas[t]               beta_t
    schedule.alpha_bar[t]           alpha_bar_t = prod_{s<=t} (1 - beta_s)
    q_step                          q(x_t | x_{t-1})            Eq. (2)
    q_sample                        q(x_t | x_0)                Eq. (4)
    q_posterior                     q(x_{t-1} | x_t, x_0)       Eqs. (6)-(7)
    posterior_mean_from_eps         mu_theta(x_t, t)            Eq. (11)
    predict_x0_from_eps             x0_hat                      Eq. (15)
    elbo_terms                      L_T, L_{t-1}, L_0           Eq. (5), Sec. 3.3
    simple_loss                     L_simple                    Eq. (14)
    min_snr_weight                  Min-SNR-gamma weight w_t    Hang et al. 2023, Eq. (8)
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import torch

from .schedules import Schedule

__all__ = ["extract", "q_step", "q_sample", "run_chain", "posterior_coefficients", "q_posterior",
           "predict_x0_from_eps", "predict_eps_from_x0", "posterior_mean_from_eps", "model_log_variance",
           "elbo_weights", "gaussian_kl", "discretized_gaussian_log_likelihood", "elbo_terms", "min_snr_weight", "simple_loss"]


# ----------------------------------------------------------------------------------------------- helpers
def _as_timesteps(t: int | torch.Tensor, B: int, T: int) -> torch.Tensor:
    """``t`` as a ``(B,)`` long tensor, checked against ``0 <= t < T`` (on CPU tensors: no device sync)."""
    if isinstance(t, bool) or not isinstance(t, (numbers.Integral, torch.Tensor)):
        raise ValueError(f"t must be an int or a (B,) long tensor of 0-based timesteps, got {t!r}")
    if isinstance(t, numbers.Integral):
        t = int(t)
        if not 0 <= t < T:
            raise ValueError(f"t must be in 0..{T - 1} (0-based index into a schedule of T={T}), got {t}")
        return torch.full((B,), t, dtype=torch.long)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"t must hold integer timesteps, got dtype {t.dtype}")
    if t.dim() == 0 or (t.dim() == 1 and t.shape[0] == 1):
        t = t.reshape(1).expand(B)
    if t.dim() != 1 or t.shape[0] != B:
        raise ValueError(f"t must be an int or have shape ({B},) to match the batch, got shape {tuple(t.shape)}")
    if t.device.type == "cpu" and t.numel() and (int(t.min()) < 0 or int(t.max()) >= T):
        raise ValueError(f"t must be in 0..{T - 1}, got values from {int(t.min())} to {int(t.max())}")
    return t.long()


def extract(values: torch.Tensor, t: int | torch.Tensor, like: torch.Tensor, axis: int = 0) -> torch.Tensor:
    """``values[t]`` shaped to broadcast against ``like``: one schedule entry per example.

    The role of k-diffusion's ``append_dims``: a per-example scalar becomes ``(B, 1, 1, 1)`` for images
    ``(B, C, H, W)`` (``(B, 1)`` for points ``(B, 2)``), so broadcasting is explicit, never silent.

    Args:
        values: ``(T,)`` a schedule quantity, e.g. ``schedule.alpha_bar``.
        t: an ``int`` or a ``(B,)`` long tensor of 0-based timesteps.
        like: ``(B, ...)`` the tensor the result will multiply.
        axis: the dimension of ``like`` the ``B`` values are laid along. Keep the default 0 (one value per
            example). Any other axis reproduces the broadcasting bug of appendix A1: e.g. ``axis=-1`` gives
            ``(1, 1, 1, B)``, which multiplies image *columns* instead of examples; it broadcasts (silently
            wrongly) only when ``B`` equals the size of that dimension, and raises otherwise.

    Returns:
        ``(B, 1, ..., 1)`` with ``like.dim()`` dimensions (the ``B`` values along ``axis``), on ``like``'s
        device and (floating) dtype.
    """
    if values.dim() != 1:
        raise ValueError(f"values must be a (T,) tensor, got shape {tuple(values.shape)}")
    if like.dim() < 1:
        raise ValueError("like must have a batch dimension, got a 0-d tensor")
    B = like.shape[0]
    t = _as_timesteps(t, B, values.shape[0]).to(values.device)
    out = values.gather(0, t).to(like.device)
    if like.dtype.is_floating_point:
        out = out.to(like.dtype)
    if not -like.dim() <= axis < like.dim():
        raise ValueError(f"axis must be in {-like.dim()}..{like.dim() - 1} for like of shape "
                         f"{tuple(like.shape)}, got {axis}")
    axis = axis % like.dim()
    if axis == 0:
        return out.reshape(B, *([1] * (like.dim() - 1)))
    # appendix A1's bug: the B per-example values laid along another dimension of like
    if like.shape[axis] != B:
        raise ValueError(f"axis={axis}: {B} per-example values cannot broadcast along a dimension of size "
                         f"{like.shape[axis]} of like {tuple(like.shape)} (the bug of appendix A1 stays "
                         f"silent only when the batch size equals that size)")
    shape = [1] * like.dim()
    shape[axis] = B
    return out.reshape(shape)


def _one_minus_alpha_bar(schedule: Schedule) -> torch.Tensor:
    """1 - alpha_bar_t without float32 cancellation: alpha_bar_0 ~ 1 - 4e-5, so ``1 - schedule.alpha_bar``
    would keep only two or three digits; ``sqrt_one_minus_alpha_bar`` was computed in float64. (No float64
    here: Apple's mps has none.)"""
    return schedule.sqrt_one_minus_alpha_bar ** 2


def _noise_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``, drawn from ``generator`` (on its own device) if given."""
    if not x.dtype.is_floating_point:
        raise ValueError(f"expected a floating-point tensor, got dtype {x.dtype}")
    if generator is None:
        return torch.randn_like(x)
    eps = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return eps.to(x.device)


def _check_noise(noise: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    if noise.shape != x.shape:
        raise ValueError(f"noise must have the shape of x, {tuple(x.shape)}, got {tuple(noise.shape)}")
    return noise


# ----------------------------------------------------------------------------------- the forward chain
def q_step(x_prev: torch.Tensor, t: int | torch.Tensor, schedule: Schedule, noise: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """One forward step: x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, a sample of
    q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)  (Ho et al. 2020, DDPM Eq. 2).

    The shrink factor sqrt(1 - beta_t) keeps the variance at 1 when it is 1 already ("variance preserving").

    Args:
        x_prev: ``(B, C, H, W)`` the previous state (``x0`` for ``t = 0``).
        t: ``int`` or ``(B,)`` long, 0-based index of the step to take.
        schedule: the noise schedule.
        noise: ``(B, C, H, W)`` the standard normal eps to use (default: drawn from ``generator``).
        generator: a ``torch.Generator`` for reproducible noise.

    Returns:
        ``(B, C, H, W)`` x_t.
    """
    eps = _noise_like(x_prev, generator) if noise is None else _check_noise(noise, x_prev)
    beta_t = extract(schedule.betas, t, x_prev)
    return (1 - beta_t).sqrt() * x_prev + beta_t.sqrt() * eps          # DDPM Eq. (2)


def q_sample(x0: torch.Tensor, t: int | torch.Tensor, schedule: Schedule, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None, axis: int = 0) -> torch.Tensor:
    """Jump straight to step t: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a sample of
    q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)  (Ho et al. 2020, DDPM Eq. 4).

    Args:
        x0: ``(B, C, H, W)`` clean images in ``[-1, 1]``.
        t: ``int`` or ``(B,)`` long, 0-based (``x_t`` has had ``t + 1`` steps of noise).
        schedule: the noise schedule.
        noise: ``(B, C, H, W)`` the eps to use (default: drawn from ``generator``).
        generator: a ``torch.Generator`` for reproducible noise.
        axis: passed to ``extract``; keep 0. Another axis reproduces appendix A1's broadcasting bug.

    Returns:
        ``(B, C, H, W)`` x_t.
    """
    eps = _noise_like(x0, generator) if noise is None else _check_noise(noise, x0)
    return (extract(schedule.sqrt_alpha_bar, t, x0, axis) * x0          # DDPM Eq. (4)
            + extract(schedule.sqrt_one_minus_alpha_bar, t, x0, axis) * eps)


def run_chain(x0: torch.Tensor, schedule: Schedule, t_stop: int | None = None,
              generator: torch.Generator | None = None, return_all: bool = False
              ) -> torch.Tensor | list[torch.Tensor]:
    """Run the Markov chain of DDPM Eq. (2) one ``q_step`` at a time, for steps ``0 .. t_stop``.

    The result has the same distribution as ``q_sample(x0, t_stop, schedule)`` (DDPM Eq. 4), but costs
    ``t_stop + 1`` steps instead of one.

    Args:
        x0: ``(B, C, H, W)`` clean images.
        schedule: the noise schedule.
        t_stop: 0-based index of the last step taken (default ``T - 1``: the whole chain).
        generator: a ``torch.Generator`` for reproducible noise.
        return_all: return every state, not only the last.

    Returns:
        ``(B, C, H, W)`` the last state x_{t_stop}; or, with ``return_all``, a list of ``t_stop + 2``
        tensors ``[x0, x after 1 step, ..., x after t_stop + 1 steps]`` (entry ``k + 1`` is x_k in code's
        0-based naming), ready for ``plotting.animate``.
    """
    t_stop = schedule.T - 1 if t_stop is None else t_stop
    if not 0 <= t_stop < schedule.T:
        raise ValueError(f"t_stop must be in 0..{schedule.T - 1}, got {t_stop}")
    x, states = x0, [x0]
    for t in range(t_stop + 1):
        x = q_step(x, t, schedule, generator=generator)
        if return_all:
            states.append(x)
    return states if return_all else x


# ------------------------------------------------------------------------------------- the posterior
def posterior_coefficients(schedule: Schedule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``(T,)`` tables behind q(x_{t-1} | x_t, x_0) (Ho et al. 2020, DDPM Eq. 7):

        mean     = coef_x0 * x_0 + coef_xt * x_t,
        coef_x0  = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
        coef_xt  = sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t),
        variance = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t.

    At ``t = 0`` (the paper's t = 1) the posterior is degenerate: alpha_bar_{-1} = 1, so coef_x0 = 1,
    coef_xt = 0 and the variance is 0 (given x_0, the previous state *is* x_0). The log variance is then
    -inf, so ``log_variance`` is clipped there to its value at ``t = 1``, as in Ho et al.'s code
    (``posterior_log_variance_clipped``); with ``T = 1`` to log(beta_0).

    Returns:
        (coef_x0, coef_xt, variance, log_variance), each ``(T,)``.
    """
    betas, alphas, ab_prev = schedule.betas, schedule.alphas, schedule.alpha_bar_prev
    one_minus_ab = _one_minus_alpha_bar(schedule)
    one_minus_ab_prev = torch.cat([one_minus_ab.new_zeros(1), one_minus_ab[:-1]])
    coef_x0 = ab_prev.sqrt() * betas / one_minus_ab
    coef_xt = alphas.sqrt() * one_minus_ab_prev / one_minus_ab
    variance = betas * one_minus_ab_prev / one_minus_ab                  # beta_tilde_t, DDPM Eq. (7)
    first = variance[1:2] if schedule.T > 1 else betas[:1]
    log_variance = torch.cat([first, variance[1:]]).log()
    return coef_x0, coef_xt, variance, log_variance


def q_posterior(x_t: torch.Tensor, x0: torch.Tensor, t: int | torch.Tensor, schedule: Schedule
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward process run backwards when x_0 is known (Ho et al. 2020, DDPM Eqs. 6-7):

        q(x_{t-1} | x_t, x_0) = N(mu_tilde_t(x_t, x_0), beta_tilde_t I),
        mu_tilde_t = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) x_0
                   + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) x_t.

    At ``t = 0`` the mean is exactly ``x0`` and the variance 0; the log variance is clipped (see
    ``posterior_coefficients``).

    Args:
        x_t: ``(B, C, H, W)``.
        x0: ``(B, C, H, W)``.
        t: ``int`` or ``(B,)`` long, 0-based.

    Returns:
        mean ``(B, C, H, W)``, variance ``(B, 1, 1, 1)``, log_variance ``(B, 1, 1, 1)``.
    """
    if x_t.shape != x0.shape:
        raise ValueError(f"x_t and x0 must have the same shape, got {tuple(x_t.shape)} and {tuple(x0.shape)}")
    coef_x0, coef_xt, variance, log_variance = posterior_coefficients(schedule)
    mean = extract(coef_x0, t, x_t) * x0 + extract(coef_xt, t, x_t) * x_t   # DDPM Eq. (7)
    return mean, extract(variance, t, x_t), extract(log_variance, t, x_t)


def predict_x0_from_eps(x_t: torch.Tensor, t: int | torch.Tensor, eps: torch.Tensor, schedule: Schedule
                        ) -> torch.Tensor:
    """x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t): Eq. (4) solved for x_0
    (Ho et al. 2020, DDPM Eq. 15). With the true eps it recovers x_0 exactly.

    Args:
        x_t, eps: ``(B, C, H, W)``; t: ``int`` or ``(B,)`` long, 0-based.

    Returns:
        ``(B, C, H, W)`` x0_hat.
    """
    return ((x_t - extract(schedule.sqrt_one_minus_alpha_bar, t, x_t) * eps)   # DDPM Eq. (15)
            / extract(schedule.sqrt_alpha_bar, t, x_t))


def predict_eps_from_x0(x_t: torch.Tensor, t: int | torch.Tensor, x0: torch.Tensor, schedule: Schedule
                        ) -> torch.Tensor:
    """eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t): Eq. (4) solved for the noise
    (Ho et al. 2020, DDPM Eq. 4; the inverse of ``predict_x0_from_eps``).

    Args:
        x_t, x0: ``(B, C, H, W)``; t: ``int`` or ``(B,)`` long, 0-based.

    Returns:
        ``(B, C, H, W)`` eps.
    """
    return ((x_t - extract(schedule.sqrt_alpha_bar, t, x_t) * x0)
            / extract(schedule.sqrt_one_minus_alpha_bar, t, x_t))


def posterior_mean_from_eps(x_t: torch.Tensor, t: int | torch.Tensor, eps: torch.Tensor, schedule: Schedule
                            ) -> torch.Tensor:
    """mu = (x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t) (Ho et al. 2020, DDPM Eqs. 10-11).

    With the true noise this is the posterior mean mu_tilde_t(x_t, x_0) of Eq. (7) (Eq. 10); with a
    network's eps_theta it is the mean of the reverse step p_theta(x_{t-1} | x_t) (Eq. 11, Algorithm 2).

    Args:
        x_t, eps: ``(B, C, H, W)``; t: ``int`` or ``(B,)`` long, 0-based.

    Returns:
        ``(B, C, H, W)`` the mean of x_{t-1}.
    """
    beta_t = extract(schedule.betas, t, x_t)
    return (x_t - beta_t / extract(schedule.sqrt_one_minus_alpha_bar, t, x_t) * eps) / (1 - beta_t).sqrt()


# ------------------------------------------------------------------------------------------ the ELBO
_VARIANCES = ("beta_tilde", "beta")


def model_log_variance(schedule: Schedule, variance: str = "beta_tilde") -> torch.Tensor:
    """log sigma_t^2 of the reverse steps p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I), ``(T,)``.

    DDPM fixes sigma_t^2 rather than learning it (Ho et al. 2020, Sec. 3.2): ``"beta_tilde"``
    (sigma_t^2 = beta_tilde_t, the posterior variance, "fixedsmall") or ``"beta"`` (sigma_t^2 = beta_t,
    "fixedlarge"). At ``t = 0`` both use beta_tilde at ``t = 1``, as Ho et al.'s code does (beta_tilde_0 = 0).
    """
    if variance not in _VARIANCES:
        raise ValueError(f"variance must be one of {', '.join(_VARIANCES)}, got {variance!r}")
    log_var = posterior_coefficients(schedule)[3]
    if variance == "beta":
        log_var = torch.cat([log_var[:1], schedule.betas[1:].log()])
    return log_var


def elbo_weights(schedule: Schedule, variance: str = "beta_tilde") -> torch.Tensor:
    """The weight that turns a squared noise error into a KL term (Ho et al. 2020, DDPM Eq. 12):

        L_{t-1} = beta_t^2 / (2 sigma_t^2 alpha_t (1 - alpha_bar_t)) * ||eps - eps_theta(x_t, t)||^2.

    Entry ``t = 0`` is the same expression for the decoder term L_0 (a continuous approximation of it;
    ``elbo_terms`` computes L_0 exactly). ``L_simple`` (Eq. 14) is what is left when every weight is 1.

    Returns:
        ``(T,)`` the weights, per squared error summed over dimensions (nats).
    """
    sigma2 = model_log_variance(schedule, variance).exp()
    return schedule.betas ** 2 / (2 * sigma2 * schedule.alphas * _one_minus_alpha_bar(schedule))


def gaussian_kl(mean1: torch.Tensor | float, logvar1: torch.Tensor | float, mean2: torch.Tensor | float,
                logvar2: torch.Tensor | float) -> torch.Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats:

        0.5 * (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1).

    (The KL between diagonal Gaussians, as ``normal_kl`` in Ho et al. 2020's code.) Arguments broadcast;
    sum the result over dimensions for the KL of the whole vector.
    """
    ref = next((a for a in (mean1, logvar1, mean2, logvar2) if isinstance(a, torch.Tensor)), None)
    if ref is None:
        raise ValueError("gaussian_kl needs at least one tensor argument")
    mean1, logvar1, mean2, logvar2 = (a if isinstance(a, torch.Tensor) else torch.tensor(a).to(ref)
                                      for a in (mean1, logvar1, mean2, logvar2))
    return 0.5 * (logvar2 - logvar1 + (logvar1 - logvar2).exp() + (mean1 - mean2) ** 2 * (-logvar2).exp() - 1)


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor
                                        ) -> torch.Tensor:
    """log p(x) of pixels quantised to 256 levels in ``[-1, 1]`` under N(mean, exp(log_scale)^2):
    the probability of the bin [x - 1/255, x + 1/255], with the two end bins stretched to -inf and +inf
    (Ho et al. 2020, DDPM Eq. 13 and Sec. 3.3; their code uses an approximate normal CDF, we use the exact one).

    Args:
        x: ``(B, C, H, W)`` data on the grid {-1, -1 + 2/255, ..., 1} (e.g. from ``load_mnist``).
        mean: ``(B, C, H, W)``; log_scale: log of the standard deviation, broadcastable to ``x``.

    Returns:
        ``(B, C, H, W)`` log-probabilities in nats (<= 0).
    """
    if x.shape != mean.shape:
        raise ValueError(f"x and mean must have the same shape, got {tuple(x.shape)} and {tuple(mean.shape)}")
    inv_std = torch.exp(-log_scale)
    upper = inv_std * (x - mean + 1 / 255)        # the bin's edges, standardised
    lower = inv_std * (x - mean - 1 / 255)
    log_cdf_upper = torch.special.log_ndtr(upper)                         # log P(X < upper), the first bin
    log_sf_lower = torch.special.log_ndtr(-lower)                         # log P(X > lower), the last bin
    mass = (torch.special.ndtr(upper) - torch.special.ndtr(lower)).clamp(min=1e-12)
    return torch.where(x < -0.999, log_cdf_upper, torch.where(x > 0.999, log_sf_lower, mass.log()))


def _call_model(model: Callable, x_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
    eps = model(x_t, t, cond=cond)
    if eps.shape != x_t.shape:
        raise ValueError(f"model(x_t, t, cond) must return eps of shape {tuple(x_t.shape)}, "
                         f"got {tuple(eps.shape)}")
    return eps.float()


def elbo_terms(model: Callable, x0: torch.Tensor, schedule: Schedule,
               t: int | Sequence[int] | torch.Tensor | None = None, *, cond=None,
               generator: torch.Generator | None = None, variance: str = "beta_tilde",
               bits_per_dim: bool = False) -> dict:
    """The terms of the variational bound on -log p_theta(x_0) (Ho et al. 2020, DDPM Eq. 5 and Sec. 3.3):

        L = L_T + sum_{t>1} L_{t-1} + L_0,
        L_T     = KL(q(x_T | x_0) || N(0, I)),
        L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p_theta(x_{t-1} | x_t)),   x_t ~ q(x_t | x_0),
        L_0     = -log p_theta(x_0 | x_1)  (discretised Gaussian decoder, Eq. 13),

    for a noise-prediction network: p_theta(x_{t-1} | x_t) = N(mu_theta, sigma_t^2 I), mu_theta from
    eps_theta by Eq. (11), sigma_t^2 fixed (``model_log_variance``). In 0-based indexing the term computed
    at index ``t`` is the paper's L_t: L_0 at ``t = 0``, the KL L_t for ``t = 1 .. T-1``.
    Each term uses one fresh sample of x_t. Wrap the call in ``torch.no_grad()`` to evaluate.

    Args:
        model: ``model(x_t, t, cond=None) -> eps``, shapes ``(B, C, H, W), (B,) -> (B, C, H, W)``.
        x0: ``(B, C, H, W)`` data in ``[-1, 1]`` on the 256-level grid.
        schedule: the noise schedule.
        t: which terms: ``None`` for all ``T`` of them, an ``int``, or a sequence / 1-D tensor of timesteps
            (each evaluated for every example).
        cond: passed to the model unchanged.
        generator: a ``torch.Generator`` for the noise.
        variance: ``"beta_tilde"`` or ``"beta"``, the fixed reverse variance (DDPM Sec. 3.2).
        bits_per_dim: report bits per dimension (nats / (C*H*W ln 2)) instead of nats per image.

    Returns:
        a dict of
        - ``"prior"``: ``(B,)`` L_T;
        - ``"t"``: ``(n,)`` long, the timesteps evaluated;
        - ``"terms"``: ``(B, n)``, column j is L_{t[j]};
        - ``"mse"``: ``(B, n)``, the mean squared noise error ||eps - eps_theta||^2 / (C*H*W) behind each
          term (what ``simple_loss`` averages);
        - ``"total"``: ``(B,)`` L_T + T * mean of the terms: the whole bound when all t are evaluated, an
          unbiased estimate of it when the t were drawn uniformly;
        - ``"units"``: ``"nats"`` or ``"bits/dim"``.
    """
    T, B = schedule.T, x0.shape[0]
    if t is None:
        ts = torch.arange(T)
    else:
        ts = torch.as_tensor([t] if isinstance(t, numbers.Integral) else t, dtype=torch.long).reshape(-1).cpu()
        if ts.numel() == 0 or int(ts.min()) < 0 or int(ts.max()) >= T:
            raise ValueError(f"t must hold timesteps in 0..{T - 1}, got {ts.tolist()}")
    dims = tuple(range(1, x0.dim()))
    D = math.prod(x0.shape[1:])
    scale = 1 / (D * math.log(2)) if bits_per_dim else 1.0
    x0 = x0.float()
    model_logvar = model_log_variance(schedule, variance)

    # L_T = KL(N(sqrt(ab) x0, 1 - ab) || N(0, 1)) = 0.5 (ab x0^2 - ab - log(1 - ab)) per dimension: gaussian_kl
    # written out so that float32 keeps it (ab ~ 1e-9 for the cosine schedule). No parameters: ~0.
    ab_T = extract(schedule.alpha_bar, T - 1, x0)
    prior = (0.5 * (ab_T * x0 ** 2 - ab_T - torch.log1p(-ab_T))).sum(dims)

    terms, mses = [], []
    for step in ts.tolist():
        t_b = torch.full((B,), step, dtype=torch.long, device=x0.device)
        eps = _noise_like(x0, generator)
        x_t = q_sample(x0, t_b, schedule, noise=eps)                                # DDPM Eq. (4)
        eps_theta = _call_model(model, x_t, t_b, cond)
        mses.append(((eps - eps_theta) ** 2).mean(dims))
        mean_theta = posterior_mean_from_eps(x_t, t_b, eps_theta, schedule)        # DDPM Eq. (11)
        logvar_theta = extract(model_logvar, t_b, x_t)
        if step == 0:                                                               # L_0, DDPM Eq. (13)
            nll = -discretized_gaussian_log_likelihood(x0, mean_theta, 0.5 * logvar_theta)
            terms.append(nll.sum(dims))
        else:                                                                       # L_{t-1}, DDPM Eq. (5)
            mean_q, _, logvar_q = q_posterior(x_t, x0, t_b, schedule)
            terms.append(gaussian_kl(mean_q, logvar_q, mean_theta, logvar_theta).sum(dims))
    terms_t = torch.stack(terms, dim=1) * scale
    prior = prior * scale
    return {"prior": prior, "t": ts, "terms": terms_t, "mse": torch.stack(mses, dim=1),
            "total": prior + T * terms_t.mean(1), "units": "bits/dim" if bits_per_dim else "nats"}


def min_snr_weight(schedule: Schedule, gamma: float, t: torch.Tensor | None = None) -> torch.Tensor:
    """w_t = min(SNR_t, gamma) / SNR_t, with SNR_t = alpha_bar_t / (1 - alpha_bar_t): the Min-SNR-gamma
    weighting for an eps-predicting network (Hang et al. 2023, Eq. 8).

    Like the ELBO's weights (``elbo_weights``, DDPM Eq. 12) and L_simple's (all 1), it re-weights the
    per-step terms of the bound: steps whose SNR is above ``gamma`` (the nearly clean ones) are weighted
    down by ``gamma / SNR_t``, the noisier ones keep weight 1.

    Args:
        schedule: the noise schedule.
        gamma: the SNR cap (the paper and this course use 5).
        t: ``(B,)`` long, 0-based; default: every step, ``0 .. T-1``.

    Returns:
        ``(T,)`` or ``(B,)`` the weights, in (0, 1].
    """
    if not (isinstance(gamma, numbers.Real) and math.isfinite(gamma) and gamma > 0):
        raise ValueError(f"min_snr_gamma must be a positive finite number, got {gamma!r}")
    snr = schedule.snr if t is None else schedule.snr[t]
    return snr.clamp(max=gamma) / snr


def simple_loss(model: Callable, x0: torch.Tensor, schedule: Schedule, t: int | torch.Tensor | None = None,
                noise: torch.Tensor | None = None, generator: torch.Generator | None = None, cond=None,
                axis: int = 0, min_snr_gamma: float | None = None, return_parts: bool = False):
    """L_simple = E_{t, x_0, eps} || eps - eps_theta(sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, t) ||^2
    (Ho et al. 2020, DDPM Eq. 14 and Algorithm 1): the ELBO's KL terms with their weights (Eq. 12) set to 1.
    With ``min_snr_gamma``, each example's error is weighted by ``min_snr_weight`` instead (Hang et al. 2023):
    the same terms of the bound, another choice of weights. This is the one loss every diffusion network in
    the course trains on.

    Args:
        model: ``model(x_t, t, cond=None) -> eps``.
        x0: ``(B, C, H, W)`` clean images in ``[-1, 1]``.
        schedule: the noise schedule.
        t: ``int`` or ``(B,)`` long, 0-based; default: drawn uniformly from ``0 .. T-1`` per example.
        noise: ``(B, C, H, W)`` the eps; default: drawn from ``generator``.
        generator: a ``torch.Generator`` for t and the noise (t is drawn first; on the CPU, or on the GPU
            where training runs there), so a resumed run repeats them exactly.
        cond: passed to the model unchanged (e.g. class labels).
        axis: passed to ``q_sample``; keep 0. Another axis trains with appendix A1's broadcasting bug.
        min_snr_gamma: ``None`` (every weight 1, Eq. 14) or the Min-SNR cap ``gamma`` (e.g. 5).
        return_parts: also return ``{"t": (B,), "per_example": (B,)}`` (the unweighted squared error of
            each example), which ``training.loop.fit`` uses to plot the loss against t.

    Returns:
        a scalar (float32): the (weighted) mean squared error over the batch and every dimension; with
        ``return_parts``, ``(loss, parts)``.
    """
    B = x0.shape[0]
    if t is None:                                                     # Algorithm 1, line 3: t ~ Uniform
        if generator is None:
            t = torch.randint(0, schedule.T, (B,), device=x0.device)
        else:
            t = torch.randint(0, schedule.T, (B,), generator=generator, device=generator.device).to(x0.device)
    t = _as_timesteps(t, B, schedule.T).to(x0.device)
    eps = _noise_like(x0, generator) if noise is None else _check_noise(noise, x0)   # line 4
    x_t = q_sample(x0, t, schedule, noise=eps, axis=axis)                           # DDPM Eq. (4)
    eps_theta = _call_model(model, x_t, t, cond)
    per_example = (eps_theta.float() - eps.float()).pow(2).flatten(1).mean(1)      # line 5, Eq. (14)
    weighted = per_example if min_snr_gamma is None else per_example * min_snr_weight(schedule, min_snr_gamma, t)
    loss = weighted.mean()
    return (loss, {"t": t, "per_example": per_example.detach()}) if return_parts else loss
