"""Flow matching (rectified flow): a straight line from each image to its noise, and a network that learns
the velocity along it; sampling integrates that velocity from noise (t = 1) back to data (t = 0).

    x_t = (1 - t) x0 + t eps,   t in [0, 1]        the path (Esser et al. 2024, SD3, Eq. 3; Liu et al. 2023,
                                                    Eq. 1, and Lipman et al. 2023's optimal-transport path
                                                    with sigma_min = 0, both with t -> 1 - t)
    v   = d x_t / dt = eps - x0                     the velocity target (conditional flow matching)
    L   = E_t,x0,eps || v_theta(x_t, t) - (eps - x0) ||^2     (Lipman et al. 2023, Eq. 23, t -> 1 - t)

The time convention is SD3's (and diffusers' ``FlowMatchEulerDiscreteScheduler``): t = 0 is data, t = 1 is
noise, as in the DDPM chain of lessons 01-04. Liu et al., Lipman et al. and MIT 6.S184 put noise at t = 0.

How this relates to the DDPM chain of lessons 01-04: DDPM's x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar)
eps is the same family of Gaussian paths x = a x0 + s eps with another schedule (a^2 + s^2 = 1 there,
a + s = 1 here). Dividing a DDPM x_t by sqrt(alpha_bar) + sqrt(1 - alpha_bar) lands on the straight path at
t = sqrt(1 - alpha_bar) / (sqrt(alpha_bar) + sqrt(1 - alpha_bar)) (``ddpm_to_flow``), and DDIM with eta = 0
is Euler's method on that ODE written in those coordinates (Song et al. 2021, Sec. 4.3; Karras et al. 2022,
Sec. 3). What changes is the target (v instead of eps), where in t the training looks (``sample_time``) and
the shape of the paths the ODE follows.

The flow model is the class model's UNet with another output meaning. Its time input is continuous:
``model(x, t * TIME_SCALE, cond)`` with t in [0, 1], so the sinusoidal embedding sees the same range
(0..1000) as the DDPM models' integer steps. ``FLOW.network_time`` does that scaling; the samplers call it.

Sampling is ``samplers.py``'s, with ``FLOW`` (the path x_t = a_t x0 + s_t eps, a_t = 1 - t, s_t = t) as the
schedule: its DDIM with eta = 0 *is* Euler's method, x_s = x_t + (s - t) v (``samplers.ddim_step``). The names
lesson 12 teaches stay, each a call of it:

    euler_sample(model, x_1, *, steps, cond=None, callback=None)    samplers.ddim_sample on FLOW, prediction "v"
    heun_sample(model, x_1, *, steps, cond=None, callback=None)     Karras et al. 2022, Algorithm 1 (2nd order)
    sample(model, n, *, sampler="euler", steps, generator, cond, device)   samplers.sample on FLOW

Classifier-free guidance is ``guidance.guided`` around the model, unchanged: its rule
v_uncond + w (v_cond - v_uncond) is linear in the prediction, and v is linear in eps and x0 at a given
(x_t, t) (``eps_from_v``), so guiding v is guiding eps.
"""
from __future__ import annotations

import numbers
from typing import Callable

import numpy as np
import torch

from .samplers import DDIM_DEFAULT_STEPS, SAMPLE_BATCH, ddim_sample, ddim_step, denoise, prediction_of
from .samplers import sample as _sample

__all__ = ["TIME_SCALE", "TIMES", "FLOW", "FlowSchedule", "FLOW_SAMPLERS", "check_t", "flow_path", "velocity_target",
           "sample_time", "flow_loss", "x0_from_v", "eps_from_v", "v_from_eps", "v_from_x0", "ddpm_to_flow",
           "velocity", "flow_times", "euler_sample", "heun_sample", "sample", "nfe", "straightness", "reflow_pairs",
           "logit_normal_density", "marginal_velocity"]

TIME_SCALE = 1000.0          # the network sees t * 1000: the range of the DDPM models' integer steps
TIMES = ("uniform", "logit-normal")


def _t(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """t as (B, 1, ..., 1) for x of shape (B, ...), in x's dtype; t a scalar or (B,) tensor."""
    t = torch.as_tensor(t).to(x.dtype).to(x.device)          # the dtype first: no float64 t reaches mps
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or of shape ({x.shape[0]},), got {tuple(t.shape)}")
    return t.view(-1, *([1] * (x.dim() - 1)))


def check_t(t: torch.Tensor | float) -> None:
    """Refuse times outside [0, 1] (t = 0 is data, t = 1 is noise) and NaN. A tensor is checked in its own
    dtype where it lies (a float64 copy on the device would fail on Apple's mps, which has no float64);
    numbers and lists in float64 on the host."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        bad = t[torch.isnan(t) | (t < 0) | (t > 1)] if t.is_floating_point() else t[(t < 0) | (t > 1)]
    else:
        a = np.asarray(t, dtype=np.float64)
        bad = a[np.isnan(a) | (a < 0) | (a > 1)]
    bad = bad.reshape(-1)
    if len(bad):
        raise ValueError(f"flow time t must be in [0, 1] (0: data, 1: noise), got {bad[0].item()}")


# --------------------------------------------------------------------------- the path and its target
def flow_path(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps (Esser et al. 2024, SD3, Eq. 3; Liu et al. 2023, Eq. 1 with t -> 1 - t). x0, eps: (B, ...); t: scalar or (B,) in [0, 1]."""
    check_t(t)
    if x0.shape != eps.shape:
        raise ValueError(f"x0 and eps must have the same shape, got {tuple(x0.shape)} and {tuple(eps.shape)}")
    t_ = _t(t, x0)
    return (1 - t_) * x0 + t_ * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """v = d x_t / dt = eps - x0: the same for every t on a straight path (Lipman et al. 2023, Eq. 23, with their
    t = 0 noise turned into ours, t = 0 data)."""
    return eps - x0


def sample_time(n: int, time: str, generator: torch.Generator | None = None, device="cpu",
                m: float = 0.0, s: float = 1.0) -> torch.Tensor:
    """n training times in (0, 1): ``"uniform"``, or ``"logit-normal"``: t = sigmoid(u), u ~ N(m, s^2)
    (Esser et al. 2024, SD3, Eq. 19: most samples in the middle, because near either end the best prediction is a
    mean and teaches little (their Sec. 3.1); m = 0,
    s = 1 was their best). Drawn on the generator's device, then moved to ``device``. Returns (n,) float32."""
    where = generator.device if generator is not None else torch.device("cpu")
    if time == "uniform":
        t = torch.rand(n, generator=generator, device=where)
    elif time == "logit-normal":
        t = torch.sigmoid(m + s * torch.randn(n, generator=generator, device=where))
    else:
        raise ValueError(f"time must be one of {', '.join(TIMES)}, got {time!r}")
    return t.to(device)


def flow_loss(model: Callable, x0: torch.Tensor, *, time: str = "logit-normal",
              generator: torch.Generator | None = None, cond=None,
              weight: Callable[[torch.Tensor], torch.Tensor] | None = None, return_parts: bool = False,
              eps: torch.Tensor | None = None):
    """The conditional flow-matching loss, weighted:  E_t [ w(t) || v_theta(x_t, t) - (eps - x0) ||^2 ].

    The time density *is* a weighting (Esser et al. 2024, Sec. 3.1: drawing t from pi(t) is the same loss as
    uniform t with weight pi(t)); ``time`` picks it, ``weight`` (default 1) multiplies on top, e.g.
    ``lambda t: 1 / t ** 2`` turns the v-error into an error on x0 (``x0_from_v``: x0 = x_t - t v).

    Args:
        model: ``model(x, t * TIME_SCALE, cond)`` -> v, like x.
        x0: (B, C, H, W) training images in [-1, 1].
        time: "uniform" or "logit-normal" (``sample_time``).
        generator: seeds t and eps. cond: passed to the model (labels, -1 = none).
        eps: the noise paired with each x0 (default: fresh N(0, I), the independent coupling); reflow passes
            the noise each x0 was sampled from (``reflow_pairs``).
    Returns:
        the scalar loss; with ``return_parts``, (loss, {"t": (B,) long bins of t in 0..999, "per_example": (B,)})
        for ``training.loop.fit``'s loss-by-t.
    """
    B = x0.shape[0]
    t = sample_time(B, time, generator, x0.device)                              # (B,)
    where = generator.device if generator is not None else torch.device("cpu")
    if eps is None:
        eps = torch.randn(x0.shape, generator=generator, device=where).to(x0.device)
    x_t = flow_path(x0, eps, t)                                                 # Eq. 1
    v_hat = model(x_t, t * TIME_SCALE, cond)
    per_example = (v_hat.float() - velocity_target(x0, eps)).pow(2).flatten(1).mean(1)   # (B,)
    if weight is not None:
        per_example = per_example * weight(t)
    loss = per_example.mean()
    if not return_parts:
        return loss
    return loss, {"t": (t * TIME_SCALE).long().clamp(max=int(TIME_SCALE) - 1), "per_example": per_example}


# --------------------------------------------------------------------------- eps, x0 and v at one (x_t, t)
def x0_from_v(x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
    """x0 = x_t - t v (from x_t = (1 - t) x0 + t eps and v = eps - x0)."""
    return x_t - _t(t, x_t) * v


def eps_from_v(x_t: torch.Tensor, t, v: torch.Tensor) -> torch.Tensor:
    """eps = x_t + (1 - t) v."""
    return x_t + (1 - _t(t, x_t)) * v


def v_from_eps(x_t: torch.Tensor, t, eps: torch.Tensor) -> torch.Tensor:
    """v = (eps - x_t) / (1 - t): undefined at t = 1, where x_t is eps and says nothing of x0."""
    return (eps - x_t) / (1 - _t(t, x_t))


def v_from_x0(x_t: torch.Tensor, t, x0: torch.Tensor) -> torch.Tensor:
    """v = (x_t - x0) / t: undefined at t = 0, where x_t is x0 and says nothing of eps."""
    return (x_t - x0) / _t(t, x_t)


def ddpm_to_flow(x_ddpm: torch.Tensor, alpha_bar) -> tuple[torch.Tensor, torch.Tensor]:
    """A DDPM point x = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps, moved onto the straight path:
    x / (a + s) = (1 - t) x0 + t eps with a = sqrt(alpha_bar), s = sqrt(1 - alpha_bar), t = s / (a + s).

    Args: x_ddpm: (B, ...); alpha_bar: scalar or (B,). Returns: (x on the flow path, t as (B,))."""
    ab = torch.as_tensor(alpha_bar, dtype=torch.float32, device=x_ddpm.device)
    ab = ab.expand(x_ddpm.shape[0]) if ab.dim() == 0 else ab                      # (B,)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    return x_ddpm / _t(a + s, x_ddpm), s / (a + s)


# --------------------------------------------------------------------------- sampling: the ODE dx/dt = v
def velocity(model: Callable, x: torch.Tensor, t: float, cond=None) -> torch.Tensor:
    """v_theta(x, t): the network called at time ``t`` in [0, 1] (it sees t * TIME_SCALE). Returns float32."""
    tt = torch.full((x.shape[0],), float(t) * TIME_SCALE, device=x.device)
    v = model(x, tt, cond).float()
    if v.shape != x.shape:
        raise ValueError(f"the model returned shape {tuple(v.shape)} for x of shape {tuple(x.shape)}")
    return v


def _times(steps: int) -> list[float]:
    """``flow_times`` as Python floats (doubles on the host: the samplers send no float64 to the device)."""
    if not (isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and steps >= 1):
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    return [1.0 - i / int(steps) for i in range(int(steps) + 1)]


def flow_times(steps: int) -> torch.Tensor:
    """The times a sampler visits: t_i = 1 - i / S, i = 0..S, from noise (1) to data (0). Returns (S + 1,)
    float64, on the CPU."""
    return torch.tensor(_times(steps), dtype=torch.float64)


class FlowSchedule:
    """The flow path as ``samplers.py``'s samplers see it (the role a ``Schedule`` plays for the DDPM chain):

        x_t = a_t x0 + s_t eps,   a_t = 1 - t,   s_t = t,   t in [0, 1]    (``flow_path``)

    a network that predicts v = eps - x0 (``prediction``), called at ``t * TIME_SCALE``, and its samplers:
    "euler" (``samplers.ddim_sample``: DDIM with eta = 0 on this path is Euler's method) and "heun".
    ``FLOW`` is the one instance.
    """
    name = "flow"
    prediction = "v"

    @staticmethod
    def scales(t: float) -> tuple[float, float]:
        """(a_t, s_t) = (1 - t, t), as Python floats."""
        return 1.0 - t, t

    @staticmethod
    def network_time(t: float, x: torch.Tensor) -> torch.Tensor:
        """What the network sees at time t for x (B, ...): (B,) float32 t * TIME_SCALE on x's device."""
        return torch.full((x.shape[0],), float(t) * TIME_SCALE, device=x.device)

    @staticmethod
    def times(steps) -> list[float]:
        """The times visited, from noise towards data, end included: an int S gives t_i = 1 - i / S
        (``flow_times``); a sequence is taken as given (strictly decreasing, in [0, 1])."""
        if isinstance(steps, numbers.Integral) or steps is None:
            return _times(steps)
        if isinstance(steps, torch.Tensor):
            steps = steps.detach().cpu().tolist()
        times = np.asarray(steps, dtype=np.float64).flatten()
        check_t(times)
        if times.size < 2 or not bool((times[1:] < times[:-1]).all()):
            raise ValueError(f"times must decrease strictly (from noise towards data), got {times.tolist()}")
        return times.tolist()

    @property
    def samplers(self) -> dict[str, Callable[..., torch.Tensor]]:
        return FLOW_SAMPLERS

    def __repr__(self) -> str:
        return "FLOW"


FLOW = FlowSchedule()


@torch.no_grad()
def euler_sample(model: Callable, x_1: torch.Tensor, *, steps: int = 10, times: torch.Tensor | None = None,
                 cond=None, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
    """Euler's method on dx/dt = v_theta(x, t), from t = 1 (noise) to t = 0 (data):

        x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i) v_theta(x_{t_i}, t_i)        one network call per step

    which is DDIM with eta = 0 on the flow path (``samplers.ddim_step``), so this is
    ``samplers.ddim_sample(model, x_1, FLOW, prediction="v", clip_x0=False)``. On exactly straight paths
    (v constant along each one) a single step is exact; the more the learned paths bend, the more steps it needs.

    Args:
        model: ``model(x, t * TIME_SCALE, cond)`` -> v (a guidance wrapper works unchanged).
        x_1: (B, C, H, W) the starting noise. steps: S (evenly spaced, ``flow_times``); or ``times``, a
            strictly decreasing sequence in [0, 1].
        cond: passed to the model. callback: called with ``{"i", "t", "x_t", "x0_hat", "v"}`` each step.
    Returns:
        (B, C, H, W) float32 samples at the last time (t = 0 for ``steps``).
    """
    return ddim_sample(model, x_1, FLOW, steps=steps if times is None else times, clip_x0=False, cond=cond,
                       callback=callback, prediction="v")


@torch.no_grad()
def heun_sample(model: Callable, x_1: torch.Tensor, schedule: FlowSchedule = FLOW, *, steps: int | None = 10,
                times: torch.Tensor | None = None, cond=None, callback: Callable[[dict], None] | None = None,
                clip_x0: bool | float | str = False, generator: torch.Generator | None = None,
                prediction: str | None = "v") -> torch.Tensor:
    """Heun's second-order method (Karras et al. 2022, Algorithm 1) on dx/dt = v_theta(x, t):

        x'        = x_t + (t' - t) v(x_t, t)                       an Euler step (``samplers.ddim_step``)
        x_{t'}    = x_t + (t' - t) (v(x_t, t) + v(x', t')) / 2     corrected by the slope at its end

    except on a last step that ends at t = 0, which stays Euler as in Karras et al. So S steps cost
    2 S - 1 network calls (``nfe``). Each v is the slope eps_hat - x0_hat of the network's prediction,
    converted as the DDIM sampler converts it (``samplers.denoise``). Arguments and returns as
    ``euler_sample``; ``schedule``, ``clip_x0``, ``generator`` (unused: Heun is deterministic) and ``prediction``
    make it callable as ``samplers.sample`` calls every sampler.
    """
    if schedule is not FLOW:
        raise ValueError("heun integrates the flow path: pass flow.FLOW as the schedule")
    prediction = prediction_of(model, FLOW, prediction)
    if times is None:
        times = DDIM_DEFAULT_STEPS if steps is None else steps      # None: as ddim_sample
    ts = FLOW.times(times)
    x = x_1.float()

    def slope(x: torch.Tensor, t: float):
        x0_hat, eps_hat = denoise(model, x, t, FLOW, cond=cond, clip_x0=clip_x0, prediction=prediction)
        return x0_hat, eps_hat, eps_hat - x0_hat          # d x_t / dt = d(a_t)/dt x0 + d(s_t)/dt eps = eps - x0

    for i, (t, t_next) in enumerate(zip(ts[:-1], ts[1:])):
        x0_hat, eps_hat, v = slope(x, t)
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_hat": x0_hat, "v": v})
        x_euler = ddim_step(x0_hat, eps_hat, FLOW.scales(t), FLOW.scales(t_next))
        if t_next == 0.0:                                         # Karras et al., Algorithm 1, line 7
            x = x_euler
        else:
            x = x + (t_next - t) * 0.5 * (v + slope(x_euler, t_next)[2])
    return x


def straightness(path: torch.Tensor) -> torch.Tensor:
    """How straight each sampled path is: |x_end - x_start| / (the summed length of its segments), 1 for a
    straight line. Args: path: (S + 1, B, ...) the points visited. Returns: (B,)."""
    steps = (path[1:] - path[:-1]).flatten(2).norm(dim=2).sum(0)             # (B,)
    chord = (path[-1] - path[0]).flatten(1).norm(dim=1)
    return chord / steps.clamp(min=1e-12)


def reflow_pairs(model: Callable, n: int, *, steps: int = 100, generator: torch.Generator | None = None,
                 cond=None, device="cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Rectified flow's "reflow" (Liu et al. 2023, Sec. 2.1 and Algorithm 1): sample noises z, carry them to data with the
    model's ODE, and return the pairs (x0, z), for training a new flow on them (``flow_loss(eps=z)``): its
    paths cross less, so they are straighter and need fewer steps. Returns ((n, ...) x0, (n, ...) z)."""
    where = generator.device if generator is not None else torch.device("cpu")
    shape = getattr(model, "shape", None) or (2,)
    z = torch.randn((n, *shape), generator=generator, device=where).to(device)
    return euler_sample(model, z, steps=steps, cond=cond), z


FLOW_SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {"euler": ddim_sample, "heun": heun_sample}


def nfe(sampler: str, steps: int) -> int:
    """Network calls of ``steps`` steps of ``sampler`` (a guided call counts once: it is one doubled batch)."""
    return {"euler": steps, "heun": 2 * steps - 1}[sampler]


def sample(model: Callable, n: int, *, sampler: str = "euler", steps: int = 10, generator=None, cond=None,
           device: torch.device | str = "cpu", callback: Callable[[dict], None] | None = None,
           shape: tuple[int, ...] = (1, 28, 28), batch_size: int = SAMPLE_BATCH) -> torch.Tensor:
    """``samplers.sample(model, n, FLOW, ...)``: draw x_1 ~ N(0, I) with ``generator`` (CPU by default, moved
    to ``device``) and integrate back to t = 0 with ``sampler`` ("euler" or "heun"); what lessons call.

    Raises:
        ValueError: before any compute, for an unknown sampler, steps < 1, bad n, a model that is not a
            flow model, or labels it does not know (``samplers.check_model_inputs``).
    Returns: (n, *shape) float32 samples.
    """
    if steps is None:
        raise ValueError("steps must be a whole number >= 1, got None")
    return _sample(model, n, FLOW, sampler=sampler, steps=steps, generator=generator, cond=cond, device=device,
                   clip_x0=False, callback=callback, shape=shape, batch_size=batch_size)


# --------------------------------------------------------------------------- the density of t, and the marginal field
def logit_normal_density(t: torch.Tensor, m: float = 0.0, s: float = 1.0) -> torch.Tensor:
    """The density of ``sample_time(..., "logit-normal")``: t = sigmoid(u), u ~ N(m, s^2) (Esser et al. 2024,
    SD3, Sec. 3.1, Eq. 19):

        pi_ln(t; m, s) = 1 / (s sqrt(2 pi)) * 1 / (t (1 - t)) * exp(-(logit(t) - m)^2 / (2 s^2))

    Args: t: any shape, values in (0, 1) (a ``ValueError`` names a value outside). Returns: like t, float64.
    """
    t = torch.as_tensor(t, dtype=torch.float64)
    if not bool(((t > 0) & (t < 1)).all()):
        raise ValueError(f"t must lie strictly between 0 and 1, got values from {t.min().item():g} to "
                         f"{t.max().item():g}")
    if not s > 0:
        raise ValueError(f"s must be > 0, got {s!r}")
    logit = torch.log(t / (1 - t))
    return torch.exp(-(logit - m) ** 2 / (2 * s * s)) / (s * (2 * torch.pi) ** 0.5 * t * (1 - t))


@torch.no_grad()
def marginal_velocity(x_t: torch.Tensor, t: torch.Tensor | float, data: torch.Tensor,
                      weights: torch.Tensor | None = None) -> torch.Tensor:
    """The *marginal* velocity of a finite data set, in closed form: what flow matching's network learns.

    Each training pair (x0, eps) moves at its own *conditional* velocity eps - x0; at a point x_t several pairs
    pass, and the least-squares optimum is their average (Lipman et al. 2023, Sec. 3, Eq. 8; their Thm. 2: the
    conditional loss has the same gradients as the loss against this marginal field). With our convention
    x_t = (1 - t) x0 + t eps and data points d_k:

        p(d_k | x_t) ~ w_k N(x_t; (1 - t) d_k, t^2 I)        E[eps - x0 | x_t] = (x_t - E[x0 | x_t]) / t

    At t = 1 this is x_1 - mean(data): the velocity a sampler's first step needs is simple.

    Args:
        x_t: (B, ...) points. t: a float or (B,) in (0, 1]. data: (K, ...) the data set (same trailing shape).
        weights: (K,) probabilities of the points (default uniform).
    Returns: (B, ...) float32, E[eps - x0 | x_t].
    """
    if data.dim() != x_t.dim() or data.shape[1:] != x_t.shape[1:]:
        raise ValueError(f"data must be (K, {', '.join(map(str, x_t.shape[1:]))}) like x_t's points, got "
                         f"{tuple(data.shape)}")
    x = x_t.detach().cpu().double().flatten(1)                               # (B, D), on the host: no float64
    t = t.detach().cpu() if isinstance(t, torch.Tensor) else t
    tt = _t(t, x).flatten()                                                   # (B,)
    if not bool((tt > 0).all()) or not bool((tt <= 1).all()):
        raise ValueError(f"t must lie in (0, 1] (at t = 0 the field is not defined), got {tt.min().item():g}")
    K = data.shape[0]
    w = torch.full((K,), 1.0 / K, dtype=torch.float64) if weights is None else weights.detach().cpu().double()
    if w.shape != (K,) or bool((w < 0).any()):
        raise ValueError(f"weights must be ({K},) and non-negative, got {tuple(w.shape)}")
    d = data.detach().cpu().double().flatten(1)                               # (K, D)
    tc = tt[:, None]                                                          # (B, 1)
    sq = ((x[:, None, :] - (1 - tc)[:, :, None] * d[None]) ** 2).sum(-1)    # (B, K): |x_t - (1 - t) d_k|^2
    log_post = torch.log(w.clamp(min=1e-300))[None] - sq / (2 * tc ** 2)
    post = torch.softmax(log_post, dim=1)                                     # (B, K): p(d_k | x_t)
    x0_mean = post @ d                                                        # (B, D)
    return ((x - x0_mean) / tc).view(x_t.shape).float().to(x_t.device)
