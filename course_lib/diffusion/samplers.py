"""Sampling: running diffusion backwards, from static x_T ~ N(0, I) to a digit.

One DDIM and one DDPM for every network the course trains, whatever it predicts (``prediction``):

    "eps"  the noise (the DDPM UNets of lessons 03-09 and 11; Ho et al. 2020)
    "x0"   the clean sample (the unCLIP prior of lesson 10 predicts the embedding itself; Ramesh et al. 2022,
           Sec. 2.2)
    "v"    the velocity of rectified flow, v = eps - x0 (the flow model of lesson 12; Liu et al. 2023,
           Lipman et al. 2023, Esser et al. 2024 Sec. 2), on the flow path ``flow.FLOW``

    ddpm_sample(model, x_T, schedule, *, steps=None, eta=1.0, clip_x0=True, generator=None, callback=None,
                cond=None, variance="beta_tilde", prediction=None)   ancestral sampling, Ho et al. 2020, Alg. 2
    ddim_sample(model, x_T, schedule, *, steps=None, eta=0.0, clip_x0=True, generator=None, callback=None,
                cond=None, prediction=None)                          DDIM, Song et al. 2021, Eq. 12

``model(x, t, cond)`` is the network; ``schedule`` is the path x_t = a_t x0 + s_t eps that it was trained on:

    a ``Schedule`` (``make_schedule``)   the DDPM chain: t a 0-based index into T steps,
                                         a_t = sqrt(alpha_bar_t), s_t = sqrt(1 - alpha_bar_t)
    ``flow.FLOW``                        the straight path: t in [0, 1], a_t = 1 - t, s_t = t

Both samplers walk a decreasing list of times (``timesteps``: all T, or an evenly spaced subset; on the flow
path t_i = 1 - i / S), and at each one:

    1. the network's output becomes (x0_hat, eps_hat) in one place (``predict_x0_eps``, beside each
       prediction's equation); x0_hat is optionally clipped to [-1, 1] (or dynamically thresholded), and
       eps_hat recomputed from it (``denoise``)
    2. x at the next time from (x0_hat, eps_hat): DDPM's posterior q(x_{t-1} | x_t, x0_hat) plus noise
       (Eqs. 6-7), or DDIM's Eq. 12 (``ddim_step``). On the flow path DDIM with eta = 0 *is* Euler's method:
       x_s = (1 - s) x0_hat + s eps_hat = x_t + (s - t) v (``ddim_step``'s docstring).

A ``callback`` receives ``{"i", "t", "x_t", "x0_hat"}`` at every step (k-diffusion's hook; on the flow path
also ``"v"``): the notebooks use it to animate x_t and x0_hat. All noise comes from ``generator`` (a CPU
``torch.Generator``; tensors are moved to x_T's device), so a seed reproduces a sample exactly.

``sample`` (what lessons call) runs the network in chunks of at most ``SAMPLE_BATCH`` images, under the
device's autocast (``config.inference_autocast``: fp16 on a T4, fp32 on a CPU), while x_t and every noise
draw stay whole: the chain is the one an unbatched call walks, so a seed gives the same samples for any
batch size (up to float rounding in the network). On the flow path its samplers are ``euler`` (this DDIM)
and ``heun`` (``flow.heun_sample``, second order, on the same conversion).
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import inference_autocast
from .forward import extract, q_posterior
from .schedules import Schedule, snr

__all__ = ["check_finite", "check_model_inputs", "timesteps", "respace", "dynamic_threshold", "PREDICTIONS",
           "prediction_of", "predict_x0_eps", "denoise", "ddim_step", "ddpm_sample", "ddim_sample", "sample",
           "batched", "SAMPLERS", "DDIM_DEFAULT_STEPS", "DYNAMIC_PERCENTILE", "SAMPLE_BATCH"]

DDIM_DEFAULT_STEPS = 50         # Song et al. 2021, Table 1 reports S in {10, 20, 50, 100}: 50 is close to 1000
DYNAMIC_PERCENTILE = 0.995      # Saharia et al. 2022 (Imagen), Sec. 2.3 and Appendix E: p = 99.5 %
SAMPLE_BATCH = 1_000            # images per network call in ``sample`` (the pipeline's MAX_BATCH too): the gpu
                                # UNet needs about 0.5 MB of activations per image (estimated), so ~0.5 GB
                                # (1 GB guided), where 20,000 guided images in one call would need 10 GB
PREDICTIONS = ("eps", "x0", "v")   # what a network may predict: the noise, the clean sample, the flow's velocity


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


# --------------------------------------------------------------------------- what the network predicts
def _is_chain(schedule) -> bool:
    """True for the DDPM chain (a ``Schedule``: integer timesteps); False for a continuous path (``flow.FLOW``:
    anything with ``scales(t)``, ``network_time(t, x)`` and ``times(steps)``)."""
    if isinstance(schedule, Schedule):
        return True
    if all(hasattr(schedule, name) for name in ("scales", "network_time", "times")):
        return False
    raise ValueError(f"schedule must be a Schedule (make_schedule) or the flow path (flow.FLOW), "
                     f"got {type(schedule).__name__}")


def prediction_of(model: Callable, schedule, prediction: str | None = None) -> str:
    """What ``model`` predicts: ``prediction`` if given, else the network's own ``prediction`` attribute, else
    its training ``objective`` ("flow" -> "v", set by ``unet.load_unet``), else the path's usual one (the DDPM
    chain: "eps"; ``flow.FLOW``: "v"). Looks through guidance wrappers and ``batched``.

    Raises:
        ValueError: an unknown prediction, a velocity on the DDPM chain (the rectified-flow velocity lives on
            the flow path), or a noise prediction on the flow path (at t = 1 it says nothing of x0).
    """
    chain = _is_chain(schedule)
    if prediction is None:
        base = _base_model(model)
        prediction = getattr(base, "prediction", None)
        if prediction is None:
            objective = getattr(base, "objective", None)
            prediction = {"flow": "v", "eps": "eps"}.get(objective, "eps" if chain else "v")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    if chain and prediction == "v":
        raise ValueError("this is a flow-matching model (it predicts a velocity, lesson 12): sample it on the flow "
                         "path (course_lib.diffusion.flow.sample, the euler or heun sampler), not with a DDPM "
                         "schedule")
    if not chain and prediction == "eps":
        raise ValueError("this model was trained with the 'eps' objective (it predicts the noise): euler and heun "
                         "integrate a flow model's velocity; sample it with ddim or ddpm on its DDPM schedule")
    return prediction


def predict_x0_eps(output: torch.Tensor, x_t: torch.Tensor, a_t, s_t, prediction: str
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The one place a network's output becomes (x0_hat, eps_hat), on a path x_t = a_t x0 + s_t eps:

        "eps":  x0_hat = (x_t - s_t eps_hat) / a_t                Ho et al. 2020, Eq. 15 (a_t = sqrt(alpha_bar_t))
        "x0":   eps_hat = (x_t - a_t x0_hat) / s_t                 DALL-E 2's prior predicts the embedding
                                                                   itself (Ramesh et al. 2022, Sec. 2.2)
        "v":    x0_hat = x_t - s_t v,  eps_hat = x_t + a_t v       the rectified-flow velocity v = eps - x0 on
                                                                   the flow path a_t = 1 - t, s_t = t (Liu et al.
                                                                   2023; Esser et al. 2024, Sec. 2)

    Args:
        output: the network's prediction, like x_t. a_t, s_t: floats or tensors broadcasting against x_t.
    Returns:
        (x0_hat, eps_hat), like x_t.
    """
    if prediction == "eps":
        return (x_t - s_t * output) / a_t, output
    if prediction == "x0":
        return output, (x_t - a_t * output) / s_t
    if prediction == "v":
        return x_t - s_t * output, x_t + a_t * output
    raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")


def denoise(model: Callable, x_t: torch.Tensor, t, schedule, *, cond=None, clip_x0: bool | float | str = True,
            prediction: str = "eps") -> tuple[torch.Tensor, torch.Tensor]:
    """One call of the network, turned into a prediction of the clean image and of the noise
    (``predict_x0_eps``; for a noise-predicting network DDPM Eq. 15:
    x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_theta(x_t, t)) / sqrt(alpha_bar_t)).

    With ``clip_x0`` (True: clip to [-1, 1]; a number b: clip to [-b, b], the range of a latent space,
    lesson 11; "dynamic": ``dynamic_threshold``), x0_hat is brought into the data range and eps_hat is
    recomputed from it, so the two stay consistent (as in Ho et al.'s code and diffusers' ``clip_sample``).

    Args:
        x_t: (B, C, H, W) noisy images (or (B, D) vectors). cond: passed to ``model`` unchanged.
        t: (B,) long timesteps on a ``Schedule``; a float in [0, 1] on the flow path (the network sees
            ``schedule.network_time(t, x_t)``).
        prediction: what the network predicts, "eps", "x0" or "v" (see ``prediction_of``).
    Returns:
        (x0_hat, eps_hat): both like x_t, float32.
    """
    _check_clip(clip_x0)
    if _is_chain(schedule):
        a_t, s_t = extract(schedule.sqrt_alpha_bar, t, x_t), extract(schedule.sqrt_one_minus_alpha_bar, t, x_t)
        net_t = t
    else:
        a_t, s_t = schedule.scales(t)
        net_t = schedule.network_time(t, x_t)
    output = model(x_t, net_t, cond).float()
    if output.shape != x_t.shape:
        raise ValueError(f"the model returned shape {tuple(output.shape)} for x_t of shape {tuple(x_t.shape)}")
    x0_hat, eps_hat = predict_x0_eps(output, x_t, a_t, s_t, prediction)
    if clip_x0 is False:
        return x0_hat, eps_hat
    if clip_x0 == "dynamic":
        x0_hat = dynamic_threshold(x0_hat)
    else:
        b = 1.0 if clip_x0 is True else float(clip_x0)
        x0_hat = x0_hat.clamp(-b, b)
    return x0_hat, predict_x0_eps(x0_hat, x_t, a_t, s_t, "x0")[1]


def _randn(shape, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """Standard normal noise drawn on the generator's device (CPU by default), then moved to ``device``."""
    where = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=where).to(device)


def _check_x_T(x_T) -> None:
    if not isinstance(x_T, torch.Tensor) or x_T.dim() < 2:
        raise ValueError(f"x_T must be a batch tensor (B, C, H, W), got {type(x_T).__name__}"
                         + (f" of shape {tuple(x_T.shape)}" if isinstance(x_T, torch.Tensor) else ""))


def _check_eta(eta) -> None:
    if not (isinstance(eta, numbers.Real) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")


def _setup(x_T: torch.Tensor, schedule: Schedule, steps, eta: float) -> tuple[Schedule, torch.Tensor]:
    _check_x_T(x_T)
    _check_eta(eta)
    if schedule.device != x_T.device:
        schedule = schedule.to(x_T.device)
    return schedule, timesteps(schedule.T, steps)


# --------------------------------------------------------------------------- DDPM
@torch.no_grad()
def ddpm_sample(model: Callable, x_T: torch.Tensor, schedule: Schedule, *, steps=None, eta: float = 1.0,
                clip_x0: bool | float | str = True, generator: torch.Generator | None = None,
                callback: Callable[[dict], None] | None = None, cond=None, variance: str = "beta_tilde",
                prediction: str | None = None) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2): for t = T-1, ..., 0

        x_{t-1} = mu_tilde_t(x_t, x0_hat) + sigma_t z,   z ~ N(0, I), and z = 0 at the last step

    with the posterior mean mu_tilde of Eq. 7 (which equals Algorithm 2's
    (x_t - beta_t / sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_t) when x0_hat is not clipped) and either
    sigma_t^2 = beta_t or sigma_t^2 = beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
    (Sec. 3.2: both gave similar samples). With ``steps`` < T the chain is respaced (``respace``).

    Args:
        model: ``model(x, t, cond)`` -> its prediction, like x (in eval mode).
        x_T: (B, C, H, W) the starting noise.
        schedule: the ``Schedule`` the model was trained with (the DDPM chain; the flow path has no posterior
            of this form: sample it with ``ddim_sample``).
        steps: None (all T steps, the default), an int S (S evenly spaced steps) or explicit timesteps.
        eta: scales the noise: sigma_t <- eta sigma_t (1: Algorithm 2; 0: the posterior mean, no noise.
            That is *not* DDIM, whose eta = 0 is a different, deterministic update: use ``ddim_sample``).
        clip_x0: True (clip x0_hat to [-1, 1]), a bound b (to [-b, b]), False, or "dynamic".
        generator: seeds all noise (CPU generator; noise is moved to x_T's device).
        callback: called at every step with ``{"i": step number, "t": timestep (int), "x_t": the input of
            the step, "x0_hat": the predicted clean image}``.
        cond: passed to ``model`` unchanged (class labels, text).
        variance: "beta_tilde" (default) or "beta".
        prediction: what the network predicts, "eps" or "x0" (default: read from the model, ``prediction_of``).

    Returns:
        (B, C, H, W) float32 samples (x0_hat of the last step).
    """
    if variance not in ("beta", "beta_tilde"):
        raise ValueError(f"variance must be 'beta' or 'beta_tilde', got {variance!r}")
    _check_clip(clip_x0)
    if not isinstance(schedule, Schedule):
        raise ValueError("ddpm samples the DDPM chain (a Schedule); on the flow path use ddim (Euler) or heun")
    prediction = prediction_of(model, schedule, prediction)
    schedule, ts = _setup(x_T, schedule, steps, eta)
    S = len(ts)
    sub = schedule if S == schedule.T else respace(schedule, ts)   # sub index j <-> timestep ts[S - 1 - j]
    x = x_T.float()
    B = x.shape[0]
    for i, t in enumerate(ts.tolist()):
        j = S - 1 - i
        # 1. predict the clean image (Eq. 15 for a noise prediction), clipped
        x0_hat, _ = denoise(model, x, torch.full((B,), t, dtype=torch.long, device=x.device), schedule,
                            cond=cond, clip_x0=clip_x0, prediction=prediction)
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
def _alpha_bar(level, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(alpha_bar, c) of a level as 0-d tensors: alpha_bar itself (the DDPM chain; c None, i.e. 1), or, for a
    pair (a, s) of a path x = a x0 + s eps, that of the DDPM chain's point x / c = sqrt(alpha_bar) x0 +
    sqrt(1 - alpha_bar) eps: alpha_bar = a^2 / c^2, c = sqrt(a^2 + s^2) (``flow.ddpm_to_flow``)."""
    if isinstance(level, (tuple, list)):
        if len(level) != 2:
            raise ValueError(f"a level is alpha_bar or a pair (a, s), got {len(level)} values")
        a, s = (torch.as_tensor(v, dtype=like.dtype, device=like.device) for v in level)
        c2 = a * a + s * s
        return a * a / c2, c2.sqrt()
    return torch.as_tensor(level, dtype=like.dtype, device=like.device), None


def ddim_step(x0_hat: torch.Tensor, eps_hat: torch.Tensor, alpha_bar_t, alpha_bar_prev, *, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """One DDIM update (Song et al. 2021, Eq. 12), from x_t to x_{t_prev}:

        x_prev = sqrt(alpha_bar_prev) x0_hat + sqrt(1 - alpha_bar_prev - sigma_t^2) eps_hat + sigma_t noise
        sigma_t = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t)) sqrt(1 - alpha_bar_t / alpha_bar_prev)
                                                                                                  (Eq. 16)

    eta = 0 is deterministic (DDIM); eta = 1 has DDPM's posterior variance beta_tilde (then the update
    equals DDPM's ancestral step). ``t_prev`` may be any earlier timestep, which is what makes few steps work.

    The same update serves any path x_t = a_t x0 + s_t eps: pass pairs (a, s) instead of alpha_bar. DDIM only
    uses x0_hat and eps_hat, which do not change when x is scaled, and x_t / sqrt(a_t^2 + s_t^2) is a point of
    the DDPM chain with alpha_bar_t = a_t^2 / (a_t^2 + s_t^2) (Karras et al. 2022, Sec. 3: a sampler need not
    care about the scale); so the step is taken there and scaled back. With eta = 0 it reads
    x_prev = a_prev x0_hat + s_prev eps_hat. On the flow path (a = 1 - t, s = t), a velocity network gives
    x0_hat = x_t - t v and eps_hat = x_t + (1 - t) v (``predict_x0_eps``), so

        x_s = (1 - s)(x_t - t v) + s (x_t + (1 - t) v) = x_t + (s - t) v

    one step of Euler's method on dx/dt = v: the flow model's Euler sampler *is* this DDIM (``flow.euler_sample``).

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
            (alpha_bar_prev = 1 for the final step to x_0); or pairs (a, s) of the path's scales.
        eta: >= 0. noise: like x0_hat, required when sigma_t > 0.
    Returns:
        x_prev, like x0_hat.
    """
    a_t, _ = _alpha_bar(alpha_bar_t, x0_hat)
    a_prev, c_prev = _alpha_bar(alpha_bar_prev, x0_hat)
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
    # 5. on a path given as pairs (a, s): back from the DDPM chain's point to the path's, x = c (x / c)
    return x_prev if c_prev is None else c_prev * x_prev


@torch.no_grad()
def ddim_sample(model: Callable, x_T: torch.Tensor, schedule, *, steps=None, eta: float = 0.0,
                clip_x0: bool | float | str = True, generator: torch.Generator | None = None,
                callback: Callable[[dict], None] | None = None, cond=None,
                final_alpha_bar: float | torch.Tensor = 1.0, prediction: str | None = None) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021, Eq. 12, see ``ddim_step``) over a subset of the timesteps, for a
    network that predicts the noise, the clean sample or (on the flow path) the velocity.

    With eta = 0 the map x_T -> x_0 is deterministic (the same noise always gives the same digit) and works
    with few steps (Song et al. Table 1: 20-50 steps are close to 1000 DDPM steps); eta = 1 behaves like DDPM.
    On the flow path (``schedule=flow.FLOW``) eta = 0 is Euler's method on the flow's ODE.

    Args:
        model: ``model(x, t, cond)`` -> its prediction, like x (in eval mode).
        x_T: (B, C, H, W) the starting noise.
        schedule: the ``Schedule`` the model was trained with, or ``flow.FLOW`` for a flow model.
        steps: an int S (S evenly spaced timesteps, see ``timesteps``; on the flow path t_i = 1 - i / S),
            explicit timesteps (on the flow path: times from 1 towards 0), or None (``DDIM_DEFAULT_STEPS``,
            at most T).
        eta: the amount of noise, >= 0 (0: deterministic DDIM; 1: DDPM's posterior variance).
        clip_x0: True (clip x0_hat to [-1, 1]), a bound b (to [-b, b]), False, or "dynamic".
        generator: seeds all noise (CPU generator; noise is moved to x_T's device).
        callback: called at every step with ``{"i", "t", "x_t", "x0_hat"}`` (see ``ddpm_sample``); on the
            flow path also ``"v"``, the velocity the step follows (eps_hat - x0_hat).
        cond: passed to ``model`` unchanged.
        final_alpha_bar: alpha_bar_prev of the last step, the signal level of x_0 itself (the DDPM chain only).
            Keep the default 1 (x_0 is clean: the paper's alpha_bar_0 = 1, which has no entry in the 0-based
            table). The option exists to reproduce the off-by-one of appendix A1: 0-based code that reads
            alpha_bar_{t-1} as ``alpha_bar[t - 1]`` gets ``alpha_bar[-1]`` at t = 0, which Python wraps to the
            *noisiest* step.
        prediction: "eps", "x0" or "v" (default: read from the model, ``prediction_of``).

    Returns:
        (B, C, H, W) float32 samples.
    """
    _check_clip(clip_x0)
    if not 0.0 <= float(final_alpha_bar) <= 1.0:
        raise ValueError(f"final_alpha_bar must be in [0, 1], got {float(final_alpha_bar)}")
    prediction = prediction_of(model, schedule, prediction)
    steps = min(DDIM_DEFAULT_STEPS, getattr(schedule, "T", DDIM_DEFAULT_STEPS)) if steps is None else steps
    chain = _is_chain(schedule)
    if chain:
        schedule, ts = _setup(x_T, schedule, steps, eta)
        ts = ts.tolist()
        final = torch.as_tensor(final_alpha_bar, dtype=torch.float32).to(x_T.device)   # 1: x_0 is clean
        levels = [schedule.alpha_bar[t] for t in ts] + [final]     # alpha_bar at each t, then at x_0
    else:
        if float(final_alpha_bar) != 1.0:
            raise ValueError("final_alpha_bar is for the DDPM chain; the flow path ends at its last time")
        _check_x_T(x_T)
        _check_eta(eta)
        times = schedule.times(steps)                               # from 1 towards 0, its end included
        ts, levels = times[:-1], [schedule.scales(t) for t in times]
    x = x_T.float()
    B = x.shape[0]
    for i, t in enumerate(ts):
        last = i == len(ts) - 1
        t_in = torch.full((B,), t, dtype=torch.long, device=x.device) if chain else t
        x0_hat, eps_hat = denoise(model, x, t_in, schedule, cond=cond, clip_x0=clip_x0, prediction=prediction)
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0_hat, **({} if chain else {"v": eps_hat - x0_hat})})
        noise = _randn(x.shape, generator, x.device) if (eta > 0 and not last) else None
        x = ddim_step(x0_hat, eps_hat, levels[i], levels[i + 1], eta=eta, noise=noise)
    return x


SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"ddpm": ddpm_sample, "ddim": ddim_sample}


def _base_model(model: Callable) -> Callable:
    """The network inside guidance wrappers (``Guided.model``, ``AutoGuided.model``)."""
    while hasattr(model, "model") and isinstance(getattr(model, "model"), torch.nn.Module):
        model = model.model
    return model


def check_model_inputs(model: Callable, schedule, cond=None) -> None:
    """Refuse, before sampling, a path the model was not trained on (a velocity model on a DDPM schedule, a
    noise model on the flow path: ``prediction_of``), a schedule of another length than the chain the model
    was trained on (``model.T``, set by ``unet.load_unet``) and class labels the model does not know
    (0 .. num_classes - 1, or -1 for "no condition").

    Raises:
        ValueError: naming the mismatch.
    """
    base = _base_model(model)
    prediction_of(base, schedule)
    trained_T = getattr(base, "T", None)
    if _is_chain(schedule) and isinstance(trained_T, int) and trained_T != schedule.T:
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


def sample(model: Callable, n: int, schedule, *, sampler: str = "ddim", steps=None,
           eta: float | None = None, generator: torch.Generator | None = None, cond=None,
           device: torch.device | str = "cpu", clip_x0: bool | float | str | None = None,
           callback: Callable[[dict], None] | None = None, shape: tuple[int, ...] = (1, 28, 28),
           batch_size: int = SAMPLE_BATCH, prediction: str | None = None) -> torch.Tensor:
    """Draw x_T ~ N(0, I) with ``generator`` and run the sampler on it: what lessons call.

    The samplers are ``SAMPLERS`` ("ddim", "ddpm") on a DDPM ``Schedule``, and the flow path's own
    (``flow.FLOW.samplers``: "euler", which is ``ddim_sample`` there, and "heun") on ``flow.FLOW``.
    The network sees at most ``batch_size`` images per call, under the device's autocast (``batched``).
    x_T for all n is drawn first and each step's noise is drawn for all n at once, exactly as without
    batches, so the same seed gives the same samples for every ``batch_size`` (to float rounding).

    Args:
        n: how many samples. sampler: see above. steps, callback, cond, prediction: see the samplers.
        eta: None uses the sampler's default (DDPM 1.0, DDIM 0.0); not for the flow samplers.
        clip_x0: None: True on a DDPM schedule, False on the flow path (its samplers integrate the plain ODE).
        device: where x_T and the sampling live (the model's device).
        shape: one sample's shape (C, H, W).
        batch_size: images per network call (default ``SAMPLE_BATCH``); bounds the memory, not the result.
    Returns:
        (n, 1, 28, 28) float32 samples, roughly in [-1, 1].
    Raises:
        ValueError: before any compute, for a bad ``n``, ``eta``, ``steps`` or ``batch_size``, an unknown
            sampler, a model trained on another path or another T, or labels the model does not know
            (``check_model_inputs``); after it, for samples holding NaN or infinities (``check_finite``), never
            returned as images.
    """
    chain = _is_chain(schedule)
    table = SAMPLERS if chain else schedule.samplers
    if sampler not in table:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {', '.join(table)}" if chain else
                         f"unknown {schedule.name} sampler {sampler!r}: choose one of {', '.join(table)} "
                         f"(ddim and ddpm by those names sample DDPM models: samplers.sample with their schedule)")
    if not (isinstance(n, numbers.Integral) and n >= 1):
        raise ValueError(f"n must be a whole number >= 1, got {n!r}")
    if eta is not None:
        if not chain:
            raise ValueError("eta is the noise of DDIM and DDPM on a DDPM schedule; the flow samplers are "
                             "deterministic ODE solvers")
        _check_eta(eta)
    if not chain and steps is not None:
        schedule.times(steps)                          # checks steps before any compute
    check_model_inputs(model, schedule, cond)
    net = batched(model, batch_size, device)           # checks batch_size
    x_T = _randn((n, *shape), generator, torch.device(device))
    kwargs = {} if eta is None else {"eta": eta}
    return check_finite(table[sampler](net, x_T, schedule, steps=steps, clip_x0=chain if clip_x0 is None else clip_x0,
                                       generator=generator, callback=callback, cond=cond, prediction=prediction,
                                       **kwargs))
