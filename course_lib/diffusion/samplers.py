"""Sampling: running diffusion backwards, from static x_T ~ N(0, I) to a digit.

Two samplers, one signature (``model(x, t, cond)`` predicts the noise; ``t`` is a 0-based index into the
schedule of length T):

    ddpm_sample(model, x_T, schedule, *, steps=None, eta=1.0, clip_x0=True, generator=None, callback=None,
                cond=None, variance="beta_tilde")      ancestral sampling, Ho et al. 2020, Algorithm 2
    ddim_sample(model, x_T, schedule, *, steps=None, eta=0.0, clip_x0=True, generator=None, callback=None,
                cond=None)                              DDIM, Song et al. 2021, Eq. 12

Both walk a decreasing list of timesteps tau_S > ... > tau_1 (``timesteps``: all T, or an evenly spaced
subset), and at each one:

    1. eps_hat = model(x_t, t)                                  the predicted noise
    2. x0_hat  = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)      DDPM Eq. 15 (``denoise``)
       optionally clipped to [-1, 1] (or dynamically thresholded), and eps_hat recomputed from it
    3. x_{t_prev} from (x0_hat, eps_hat): DDPM's posterior q(x_{t-1} | x_t, x0_hat) plus noise (Eqs. 6-7),
       or DDIM's Eq. 12.

A ``callback`` receives ``{"i", "t", "x_t", "x0_hat"}`` at every step (k-diffusion's hook): the notebooks
use it to animate x_t and x0_hat. All noise comes from ``generator`` (a CPU ``torch.Generator``; tensors are
moved to x_T's device), so a seed reproduces a sample exactly.

``sample`` (what lessons call) runs the network in chunks of at most ``SAMPLE_BATCH`` images, under the
device's autocast (``config.inference_autocast``: fp16 on a T4, fp32 on a CPU), while x_t and every noise
draw stay whole: the chain is the one an unbatched call walks, so a seed gives the same samples for any
batch size (up to float rounding in the network).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import inference_autocast
from .forward import extract, predict_eps_from_x0, predict_x0_from_eps, q_posterior
from .schedules import Schedule, snr

__all__ = ["check_finite", "check_model_inputs", "timesteps", "respace", "dynamic_threshold", "denoise", "ddim_step",
           "ddpm_sample", "ddim_sample", "sample", "batched", "SAMPLERS", "DDIM_DEFAULT_STEPS", "DYNAMIC_PERCENTILE",
           "SAMPLE_BATCH"]

DDIM_DEFAULT_STEPS = 50         # Song et al. 2021, Table 1 reports S in {10, 20, 50, 100}: 50 is close to 1000
DYNAMIC_PERCENTILE = 0.995      # Saharia et al. 2022 (Imagen), Sec. 2.3 and Appendix E: p = 99.5 %
SAMPLE_BATCH = 1_000            # images per network call in ``sample`` (the pipeline's MAX_BATCH too): the gpu
                                # UNet needs about 0.5 MB of activations per image (estimated), so ~0.5 GB
                                # (1 GB guided), where 20,000 guided images in one call would need 10 GB


# --------------------------------------------------------------------------- which timesteps to visit
def timesteps(T: int, steps: int | Sequence[int] | torch.Tensor | None = None) -> torch.Tensor:
    """The timesteps a sampler visits, in decreasing order: ``(S,)`` long, starting at T - 1.

    ``steps=None`` gives all T. An int S gives S evenly spaced steps, the first at T - 1 ("trailing"
    spacing, t_i = round(T - i T / S) - 1, i = 0..S-1; Lin et al. 2024, Sec. 3.3: start from the last
    step, where x_T really is pure noise). A sequence gives exactly those timesteps (any subset), sorted
    decreasingly.

    Raises:
        ValueError: for S outside 1..T, or timesteps outside 0..T-1 or repeated.
    """
    if steps is None:
        return torch.arange(T - 1, -1, -1)
    if isinstance(steps, numbers.Integral) or (isinstance(steps, torch.Tensor) and steps.dim() == 0):
        steps = int(steps)
        if not 1 <= steps <= T:
            raise ValueError(f"steps must be in 1..T={T}, got {steps}")
        return torch.tensor([math.floor(T - i * (T / steps) + 0.5) - 1 for i in range(steps)])   # in doubles, on the host
    ts = torch.as_tensor(steps).long().flatten()
    if ts.numel() == 0 or ts.min() < 0 or ts.max() >= T or ts.unique().numel() != ts.numel():
        raise ValueError(f"timesteps must be distinct and in 0..{T - 1}, got {ts.tolist()}")
    return ts.sort(descending=True).values


def respace(schedule: Schedule, ts: torch.Tensor) -> Schedule:
    """The schedule of the sub-chain that visits only ``ts`` (Nichol & Dhariwal 2021, Sec. 4):

        alpha_bar'_i = alpha_bar_{tau_i},   beta'_i = 1 - alpha_bar_{tau_i} / alpha_bar_{tau_{i-1}}

    so the marginals q(x_tau | x_0) are unchanged while each step jumps further. Index i of the result
    (ascending) corresponds to timestep ``sorted(ts)[i]`` of the original schedule.
    """
    # computed on the host, in numpy's float64 (Apple's mps has no float64: nothing float64 may reach the
    # device), then stored as float32 on the schedule's device
    ts = ts.sort().values.cpu()
    # alpha_bar and 1 - alpha_bar, each from its own float32 table (1 - alpha_bar computed from a float32
    # alpha_bar ~ 1 - 4e-5 near t = 0 would keep only two or three digits)
    alpha_bar = schedule.alpha_bar.cpu().numpy().astype(np.float64)[ts.numpy()]
    one_minus = schedule.sqrt_one_minus_alpha_bar.cpu().numpy().astype(np.float64)[ts.numpy()] ** 2
    alpha_bar_prev = np.concatenate([np.ones(1), alpha_bar[:-1]])
    one_minus_prev = np.concatenate([np.zeros(1), one_minus[:-1]])
    # beta' = 1 - alpha_bar / alpha_bar_prev = (one_minus - one_minus_prev) / alpha_bar_prev: the second
    # form is the accurate one while alpha_bar_prev is close to 1, the first one after that
    betas = np.where(one_minus_prev < 0.5, (one_minus - one_minus_prev) / alpha_bar_prev,
                     1.0 - alpha_bar / alpha_bar_prev)
    s = snr(alpha_bar)
    values = dict(betas=betas, alphas=1.0 - betas, alpha_bar=alpha_bar, alpha_bar_prev=alpha_bar_prev,
                  sqrt_alpha_bar=np.sqrt(alpha_bar), sqrt_one_minus_alpha_bar=np.sqrt(one_minus),
                  snr=s, log_snr=np.log(s))
    return Schedule(name=f"{schedule.name}[{len(ts)} of {schedule.T}]",
                    **{k: torch.from_numpy(v.astype(np.float32)).to(schedule.device) for k, v in values.items()})


# --------------------------------------------------------------------------- the prediction of x0
def dynamic_threshold(x0: torch.Tensor, percentile: float = DYNAMIC_PERCENTILE) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3): per image, s = the ``percentile``
    quantile of |x0|, s = max(s, 1); then x0 <- clip(x0, -s, s) / s.

    Pixels are pushed inwards only when the prediction saturates (s > 1), instead of being flattened at +-1
    as static clipping does, which matters at high guidance weights.

    Args: x0: (B, ...). Returns: like x0, in [-1, 1].
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    B = x0.shape[0]
    # the percentile of |x0| per image, interpolating linearly between order statistics (as numpy's default;
    # sorting rather than torch.quantile, which refuses inputs of more than 2^24 elements)
    a = x0.detach().float().abs().reshape(B, -1).sort(dim=1).values      # (B, D)
    pos = percentile * (a.shape[1] - 1)
    lo, frac = int(pos), pos - int(pos)
    s = a[:, lo] + frac * (a[:, min(lo + 1, a.shape[1] - 1)] - a[:, lo])
    s = s.clamp(min=1.0).to(x0.dtype).view(B, *([1] * (x0.dim() - 1)))     # (B, 1, 1, 1)
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _check_clip(clip_x0) -> None:
    bound = (isinstance(clip_x0, (int, float)) and not isinstance(clip_x0, bool) and math.isfinite(clip_x0)
             and clip_x0 > 0)
    if not (clip_x0 is True or clip_x0 is False or clip_x0 == "dynamic" or bound):
        raise ValueError(f"clip_x0 must be True, False, 'dynamic' or a bound b > 0 (clip to [-b, b]), "
                         f"got {clip_x0!r}")


def denoise(model: Callable, x_t: torch.Tensor, t: torch.Tensor, schedule: Schedule, *, cond=None,
            clip_x0: bool | float | str = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One call of the network, turned into a prediction of the clean image (DDPM Eq. 15):

        x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_bar_t)

    With ``clip_x0`` (True: clip to [-1, 1]; a number b: clip to [-b, b], the range of a latent space,
    lesson 11; "dynamic": ``dynamic_threshold``), x0_hat is brought into the data range and eps_hat is
    recomputed from it, so the two stay consistent (as in Ho et al.'s code and diffusers' ``clip_sample``).

    Args:
        x_t: (B, C, H, W) noisy images; t: (B,) long timesteps; cond: passed to ``model`` unchanged.
    Returns:
        (x0_hat, eps_hat): both like x_t, float32.
    """
    _check_clip(clip_x0)
    eps_hat = model(x_t, t, cond).float()
    if eps_hat.shape != x_t.shape:
        raise ValueError(f"the model returned shape {tuple(eps_hat.shape)} for x_t of shape {tuple(x_t.shape)}")
    x0_hat = predict_x0_from_eps(x_t, t, eps_hat, schedule)
    if clip_x0 is False:
        return x0_hat, eps_hat
    if clip_x0 == "dynamic":
        x0_hat = dynamic_threshold(x0_hat)
    else:
        b = 1.0 if clip_x0 is True else float(clip_x0)
        x0_hat = x0_hat.clamp(-b, b)
    return x0_hat, predict_eps_from_x0(x_t, t, x0_hat, schedule)


def _randn(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), then moved to ``device``."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=where).to(device)


def _setup(x_T: torch.Tensor, schedule: Schedule, steps, eta: float) -> tuple[Schedule, torch.Tensor]:
    if not isinstance(x_T, torch.Tensor) or x_T.dim() < 2:
        raise ValueError(f"x_T must be a batch tensor (B, C, H, W), got {type(x_T).__name__}"
                         + (f" of shape {tuple(x_T.shape)}" if isinstance(x_T, torch.Tensor) else ""))
    if not (isinstance(eta, numbers.Real) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if schedule.device != x_T.device:
        schedule = schedule.to(x_T.device)
    return schedule, timesteps(schedule.T, steps)


# --------------------------------------------------------------------------- DDPM
@torch.no_grad()
def ddpm_sample(model: Callable, x_T: torch.Tensor, schedule: Schedule, *, steps=None, eta: float = 1.0,
                clip_x0: bool | float | str = True, generator: torch.Generator | None = None,
                callback: Callable[[dict], None] | None = None, cond=None, variance: str = "beta_tilde"
                ) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2): for t = T-1, ..., 0

        x_{t-1} = mu_tilde_t(x_t, x0_hat) + sigma_t z,   z ~ N(0, I), and z = 0 at the last step

    with the posterior mean mu_tilde of Eq. 7 (which equals Algorithm 2's
    (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) when x0_hat is not clipped) and either
    sigma_t^2 = beta_t or sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
    (Sec. 3.2: both gave similar samples). With ``steps`` < T the chain is respaced (``respace``).

    Args:
        model: ``model(x, t, cond)`` -> predicted noise, like x (in eval mode).
        x_T: (B, C, H, W) the starting noise.
        schedule: the schedule the model was trained with.
        steps: None (all T steps, the default), an int S (S evenly spaced steps) or explicit timesteps.
        eta: scales the noise: sigma_t <- eta sigma_t (1: Algorithm 2; 0: the posterior mean, no noise.
            That is *not* DDIM, whose eta = 0 is a different, deterministic update: use ``ddim_sample``).
        clip_x0: True (clip x0_hat to [-1, 1]), a bound b (to [-b, b]), False, or "dynamic".
        generator: seeds all noise (CPU generator; noise is moved to x_T's device).
        callback: called at every step with ``{"i": step number, "t": timestep (int), "x_t": the input of
            the step, "x0_hat": the predicted clean image}``.
        cond: passed to ``model`` unchanged (class labels, text).
        variance: "beta_tilde" (default) or "beta".

    Returns:
        (B, C, H, W) float32 samples (x0_hat of the last step).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    _check_clip(clip_x0)
    schedule, ts = _setup(x_T, schedule, steps, eta)
    S = len(ts)
    sub = schedule if S == schedule.T else respace(schedule, ts)   # sub index j <-> timestep ts[S - 1 - j]
    x = x_T.float()
    B = x.shape[0]
    for i, t in enumerate(ts.tolist()):
        j = S - 1 - i
        # 1. predict the noise and the clean image (Eq. 15), clipped
        x0_hat, _ = denoise(model, x, torch.full((B,), t, dtype=torch.long, device=x.device), schedule,
                            cond=cond, clip_x0=clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0_hat})
        # 2. the posterior q(x_{t-1} | x_t, x0_hat): mean (Eq. 7) and variance (beta_tilde, Eq. 7, or beta)
        mean, var_tilde, _ = q_posterior(x, x0_hat, j, sub)
        var = var_tilde if variance == "beta_tilde" else extract(sub.betas, j, x)
        # 3. add noise, except at the last step (Algorithm 2, line 3: z = 0 if t = 1)
        if j > 0 and eta > 0:
            x = mean + eta * var.sqrt() * _randn(x.shape, generator, x.device)
        else:
            x = mean
    return x


# --------------------------------------------------------------------------- DDIM
def ddim_step(x0_hat: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t, alpha_bar_prev, *, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM update (Song et al. 2021, Eq. 12), from x_t to x_{t_prev}:

        x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_hat + sigma_t noise
        sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
                                                                                                  (Eq. 16)

    eta = 0 is deterministic (DDIM); eta = 1 has DDPM's posterior variance beta_tilde (then the update
    equals DDPM's ancestral step). ``t_prev`` may be any earlier timestep, which is what makes few steps work.

    ======================  ===========================================  ================
    code                    Song et al. 2021                             Ho et al. 2020
    ======================  ===========================================  ================
    ``alpha_bar_t``         alpha_t                                      alpha_bar_t
    ``alpha_bar_prev``      alpha_{t-1} (alpha at the previous step)     alpha_bar_{t-1}
    ``x0_hat``              "predicted x_0", f_theta^(t)(x_t), Eq. 9      x_0 of Eq. 15
    ``eps_hat``             epsilon_theta^(t)(x_t)                        epsilon_theta
    ``sigma_t``             sigma_t(eta), Eq. 16                          sqrt(beta_tilde) at eta = 1
    ``dir_xt``              "direction pointing to x_t"                   -
    ``noise``               epsilon_t ~ N(0, I)                           z
    ======================  ===========================================  ================

    Args:
        x0_hat, eps_hat: (B, C, H, W), consistent with each other (see ``denoise``).
        alpha_bar_t, alpha_bar_prev: floats or 0-d tensors, one value for the whole batch
            (alpha_bar_prev = 1 for the final step to x_0).
        eta: >= 0. noise: like x0_hat, required when sigma_t > 0.
    Returns:
        x_prev, like x0_hat.
    """
    a_t = torch.as_tensor(alpha_bar_t, dtype=x0_hat.dtype, device=x0_hat.device)
    a_prev = torch.as_tensor(alpha_bar_prev, dtype=x0_hat.dtype, device=x0_hat.device)
    if a_t.dim() != 0 or a_prev.dim() != 0:
        raise ValueError(f"alpha_bar_t and alpha_bar_prev must be scalars, got shapes {tuple(a_t.shape)} "
                         f"and {tuple(a_prev.shape)}")
    # 1. sigma_t (Eq. 16); exactly 0 for eta = 0, even where Eq. 16 would read 0 * (0 / 0)
    sigma_t = torch.zeros_like(a_t)
    if eta > 0:
        sigma_t = eta * ((1 - a_prev) / (1 - a_t)).sqrt() * (1 - a_t / a_prev).clamp(min=0).sqrt()
    # 2. the "direction pointing to x_t" (Eq. 12, middle term)
    dir_xt = (1 - a_prev - sigma_t ** 2).clamp(min=0).sqrt() * eps_hat
    # 3. x_{t_prev} without the random noise (Eq. 12, first two terms)
    x_prev = a_prev.sqrt() * x0_hat + dir_xt
    # 4. add noise (Eq. 12, last term)
    if float(sigma_t) > 0:
        if noise is None:
            raise ValueError(f"sigma_t = {float(sigma_t):.3g} > 0 (eta = {eta}): pass noise")
        x_prev = x_prev + sigma_t * noise
    return x_prev


@torch.no_grad()
def ddim_sample(model: Callable, x_T: torch.Tensor, schedule: Schedule, *, steps=None, eta: float = 0.0,
                clip_x0: bool | float | str = True, generator: torch.Generator | None = None,
                callback: Callable[[dict], None] | None = None, cond=None,
                final_alpha_bar: float | torch.Tensor = 1.0) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, Eq. 12, see ``ddim_step``) over a subset of the timesteps.

    With eta = 0 the map x_T -> x_0 is deterministic (the same noise always gives the same digit) and works
    with few steps (Song et al. Table 1: 20-50 steps are close to 1000 DDPM steps); eta = 1 behaves like DDPM.

    Args:
        model: ``model(x, t, cond)`` -> predicted noise, like x (in eval mode).
        x_T: (B, C, H, W) the starting noise.
        schedule: the schedule the model was trained with.
        steps: an int S (S evenly spaced timesteps, see ``timesteps``), explicit timesteps, or None
            (``DDIM_DEFAULT_STEPS``, at most T).
        eta: the amount of noise, >= 0 (0: deterministic DDIM; 1: DDPM's posterior variance).
        clip_x0: True (clip x0_hat to [-1, 1]), a bound b (to [-b, b]), False, or "dynamic".
        generator: seeds all noise (CPU generator; noise is moved to x_T's device).
        callback: called at every step with ``{"i", "t", "x_t", "x0_hat"}`` (see ``ddpm_sample``).
        cond: passed to ``model`` unchanged.
        final_alpha_bar: alpha_bar_prev of the last step, the signal level of x_0 itself. Keep the default 1
            (x_0 is clean: the paper's alpha_bar_0 = 1, which has no entry in the 0-based table). The option
            exists to reproduce the off-by-one of appendix A1: 0-based code that reads alpha_bar_{t-1} as
            ``alpha_bar[t - 1]`` gets ``alpha_bar[-1]`` at t = 0, which Python wraps to the *noisiest* step.

    Returns:
        (B, C, H, W) float32 samples.
    """
    _check_clip(clip_x0)
    if not 0.0 <= float(final_alpha_bar) <= 1.0:
        raise ValueError(f"final_alpha_bar must be in [0, 1], got {float(final_alpha_bar)}")
    schedule, ts = _setup(x_T, schedule, min(DDIM_DEFAULT_STEPS, schedule.T) if steps is None else steps, eta)
    x = x_T.float()
    B = x.shape[0]
    final = torch.as_tensor(final_alpha_bar, dtype=torch.float32).to(x.device)   # 1: x_0 is clean
    ts = ts.tolist()
    for i, t in enumerate(ts):
        last = i == len(ts) - 1
        alpha_bar_t = schedule.alpha_bar[t]
        alpha_bar_prev = final if last else schedule.alpha_bar[ts[i + 1]]     # alpha_bar at the next t (= 1 at x_0)
        x0_hat, eps_hat = denoise(model, x, torch.full((B,), t, dtype=torch.long, device=x.device), schedule,
                                  cond=cond, clip_x0=clip_x0)
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0_hat})
        noise = _randn(x.shape, generator, x.device) if (eta > 0 and not last) else None
        x = ddim_step(x0_hat, eps_hat, alpha_bar_t, alpha_bar_prev, eta=eta, noise=noise)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def _base_model(model: Callable) -> Callable:
    """The network inside guidance wrappers (``Guided.model``, ``AutoGuided.model``)."""
    while hasattr(model, "model") and isinstance(getattr(model, "model"), torch.nn.Module):
        model = model.model
    return model


def check_model_inputs(model: Callable, schedule: Schedule, cond=None) -> None:
    """Refuse, before sampling, a schedule of another length than the chain the model was trained on
    (``model.T``, set by ``models.load_unet``) and class labels the model does not know (0 .. num_classes - 1,
    or -1 for "no condition").

    Raises:
        ValueError: naming the mismatch.
    """
    base = _base_model(model)
    if getattr(base, "objective", "eps") == "flow":
        raise ValueError("this is a flow-matching model (it predicts a velocity, lesson 12): sample it with "
                         "the euler or heun sampler (course_lib.diffusion.flow.sample), not ddim or ddpm")
    trained_T = getattr(base, "T", None)
    if isinstance(trained_T, int) and trained_T != schedule.T:
        raise ValueError(f"the model was trained on a chain of T={trained_T} steps, but the schedule has "
                         f"T={schedule.T}: make it with make_schedule(..., {trained_T})")
    check_labels(base, cond)


def check_labels(model: Callable, cond=None) -> None:
    """Refuse class labels (an integer ``cond``) that the model does not know: 0 .. num_classes - 1, or -1
    for "no condition"; any labels for a model that is not class-conditional. Other conditions pass.

    Raises:
        ValueError: naming the label and the range.
    """
    k = getattr(getattr(_base_model(model), "config", None), "num_classes", 0)
    if isinstance(cond, torch.Tensor) and not cond.dtype.is_floating_point and cond.numel():
        if not k:
            raise ValueError("labels were given, but this model is not class-conditional (num_classes = 0)")
        lo, hi = int(cond.min()), int(cond.max())
        if lo < -1 or hi >= k:
            bad = lo if lo < -1 else hi
            raise ValueError(f"label {bad} is out of range: this model knows labels 0 to {k - 1} "
                             f"(and -1 for 'no condition')")


def _rows(cond, start: int, stop: int, B: int):
    """Rows ``start:stop`` of a condition for a batch of B: a (B, ...) tensor, a named tuple of them (text),
    or None; anything else (one label for all) is passed unchanged."""
    if isinstance(cond, torch.Tensor):
        return cond[start:stop] if cond.dim() and cond.shape[0] == B else cond
    if isinstance(cond, tuple) and hasattr(cond, "_fields"):
        return type(cond)(*(_rows(part, start, stop, B) for part in cond))
    return cond


def batched(model: Callable, batch_size: int = SAMPLE_BATCH, device: torch.device | str | None = None
            ) -> Callable:
    """``model`` with the same ``(x, t, cond)`` interface, run on at most ``batch_size`` images per call,
    each call under ``inference_autocast(device)`` (default: x's device); the output is float32.

    Memory then grows with ``batch_size``, not with the number of images (a guidance wrapper doubles it).
    """
    if not (isinstance(batch_size, numbers.Integral) and batch_size >= 1):
        raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")

    def call(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        B = x.shape[0]
        out = []
        for start in range(0, B, batch_size):
            stop = min(B, start + batch_size)
            with inference_autocast(device if device is not None else x.device):
                out.append(model(x[start:stop], t[start:stop], _rows(cond, start, stop, B)).float())
        return out[0] if len(out) == 1 else torch.cat(out)
    call.model = model                    # for _base_model (check_model_inputs) and readers
    return call


def check_finite(samples: torch.Tensor, what: str = "the samples") -> torch.Tensor:
    """``samples`` unchanged if every value is finite; else a one-line error, so that NaN images are never
    written or shown as a result (a guidance scale far beyond the useful range overflows float32 inside the
    sampler and turns every image into NaN).

    Raises:
        ValueError: how many values are NaN or infinite, and what usually causes it.
    """
    bad = int((~torch.isfinite(samples)).sum())
    if bad:
        raise ValueError(f"{what} hold {bad} NaN or infinite values of {samples.numel()}: the sampling overflowed "
                         f"(usually a guidance scale far beyond the useful range of about 0 to 10); nothing was kept")
    return samples


def sample(model: Callable, n: int, schedule: Schedule, *, sampler: str = "ddim", steps=None,
           eta: float | None = None, generator: torch.Generator | None = None, cond=None,
           device: torch.device | str = "cpu", clip_x0: bool | float | str = True,
           callback: Callable[[dict], None] | None = None, shape: tuple[int, ...] = (1, 28, 28),
           batch_size: int = SAMPLE_BATCH) -> torch.Tensor:
    """Draw x_T ~ N(0, I) with ``generator`` and run ``SAMPLERS[sampler]`` on it: what lessons call.

    The network sees at most ``batch_size`` images per call, under the device's autocast (``batched``).
    x_T for all n is drawn first and each step's noise is drawn for all n at once, exactly as without
    batches, so the same seed gives the same samples for every ``batch_size`` (to float rounding).

    Args:
        n: how many samples. sampler: "ddim" or "ddpm". steps, clip_x0, callback, cond: see the samplers.
        eta: None uses the sampler's default (DDPM 1.0, DDIM 0.0).
        device: where x_T and the sampling live (the model's device).
        shape: one sample's shape (C, H, W).
        batch_size: images per network call (default ``SAMPLE_BATCH``); bounds the memory, not the result.
    Returns:
        (n, 1, 28, 28) float32 samples, roughly in [-1, 1].
    Raises:
        ValueError: before any compute, for a bad ``n``, ``eta`` or ``batch_size``, an unknown sampler, a
            schedule of another T than the model's, or labels the model does not know (``check_model_inputs``);
            after it, for samples holding NaN or infinities (``check_finite``), never returned as images.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(SAMPLERS)}")
    if not (isinstance(n, numbers.Integral) and n >= 1):
        raise ValueError(f"n must be a whole number >= 1, got {n!r}")
    if eta is not None and not (isinstance(eta, numbers.Real) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    check_model_inputs(model, schedule, cond)
    net = batched(model, batch_size, device)           # checks batch_size
    x_T = _randn((n, *shape), generator, torch.device(device))
    kwargs = {} if eta is None else {"eta": eta}
    return check_finite(SAMPLERS[sampler](net, x_T, schedule, steps=steps, clip_x0=clip_x0, generator=generator,
                                          callback=callback, cond=cond, **kwargs))
