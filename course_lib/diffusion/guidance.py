"""Classifier-free guidance (Ho & Salimans 2022) as a model wrapper: it takes a conditional model and returns
a guided one with the same ``model(x, t, cond)`` interface, so every sampler works with it unchanged.

    eps_guided = eps_uncond + w * (eps_cond - eps_uncond)

with both predictions from ONE batched forward pass (the batch is doubled: conditional half, then the
"no condition" half). Our ``w`` follows diffusers' ``guidance_scale``: w = 0 is the unconditional model,
w = 1 the plain conditional one, w > 1 pushes samples towards what makes the condition likely. Ho &
Salimans write the same rule as (1 + w') eps_cond - w' eps_uncond, so their w' = our w - 1.

Autoguidance (Karras et al. 2024, "Guiding a diffusion model with a bad version of itself") uses the same
extrapolation without any condition: away from a *weaker* version of the same model,

    eps_guided = eps_guide + w * (eps_model - eps_guide)

where the guide makes the same kinds of mistakes, only more of them. Ours is the denoiser's own EMA weights
early in training (``training.loop.GuideSnapshot``), so it costs no extra training, only a second forward pass.

Guidance, measured (issue 36): the methods published since 2022 to keep CFG's accuracy without its loss of
diversity, each a knob of ``Guided`` (all neutral by default, so ``Guided(model, w)`` is plain CFG), built
from a dict of settings by ``from_settings``:

    interval   (lo, hi)   guide only at lo <= t <= hi, elsewhere the conditional prediction alone, one pass
                          (Kynkaenniemi et al. 2024, Sec. 3)
    rescale    phi        match the guided x0's std to the conditional one's, blended by phi
                          (Lin et al. 2024, Sec. 3.4)
    apg        eta, momentum, norm_threshold    the update's component parallel to the conditional x0
                          scaled by eta, a reverse momentum, a norm cap (Sadat et al. 2024, Sec. 3 and its algorithm)
    threshold  percentile Imagen's dynamic thresholding of the guided x0 (Saharia et al. 2022, Sec. 2.3)
    autoguidance          ``AutoGuided`` (Karras et al. 2024): needs a weaker model, not a "no condition"

Methods that work on the predicted clean image convert the model's output to x0 at (x_t, t) with a
``Prediction`` ("eps", "x0", "v" on a DDPM schedule, or "flow": the rectified-flow velocity), then back. The
conversion is affine in the output, x0 = a x_t + b out, so a change of x0 by d is a change of the output by
d / b: that is how each x0-space correction is applied, so a correction of exactly 0 leaves the output
bit-identical. ``drop_condition`` is the training side: Ho & Salimans' condition dropout, written once.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["MAX_SCALE", "check_scale", "Guided", "guided", "null_labels", "cfg_combine", "AutoGuided", "autoguided",
           "drop_condition", "Prediction", "PREDICTIONS", "METHODS", "KNOBS", "check_interval", "check_percentile",
           "check_nonnegative", "rescale_x0", "apg_update", "threshold_x0", "from_settings", "network_passes"]


MAX_SCALE = 1e4     # |w| beyond this is refused: at 1e30 the flow model's images were all NaN (float32 overflow)


def check_scale(w: float, name: str = "guidance scale w") -> float:
    """A guidance scale as a float, refusing NaN and infinities, and any |w| > ``MAX_SCALE``: w multiplies the
    difference of two predictions, so an absurd finite scale overflows float32 inside the sampler and turns
    every image into NaN just as NaN does. The useful range is about 0 to 10."""
    if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
        raise ValueError(f"the {name} must be a finite number, got {w!r}")
    if abs(w) > MAX_SCALE:
        raise ValueError(f"the {name} must be between -{MAX_SCALE:g} and {MAX_SCALE:g} (useful values are about "
                         f"0 to 10; larger ones overflow float32 in the sampler), got {w!r}")
    return float(w)


def null_labels(labels: torch.Tensor) -> torch.Tensor:
    """The "no condition" labels for a class model: -1 everywhere (the UNet's extra embedding entry)."""
    return torch.full_like(labels, -1)


def cfg_combine(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, w: float) -> torch.Tensor:
    """eps_uncond + w * (eps_cond - eps_uncond)  (Ho & Salimans 2022, Eq. 6, with our w = their w + 1)."""
    return eps_uncond + w * (eps_cond - eps_uncond)


def _cat(a: Any, b: Any) -> Any:
    """Concatenate two conditions along the batch: tensors, or named tuples of tensors (text)."""
    if isinstance(a, torch.Tensor):
        return torch.cat([a, b], dim=0)
    if isinstance(a, tuple) and hasattr(a, "_fields"):
        return type(a)(*(torch.cat([x, y], dim=0) for x, y in zip(a, b)))
    raise ValueError(f"cannot batch a condition of type {type(a).__name__}")


# --------------------------------------------------------------------------- checks of the knobs
def _real(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or math.isnan(v):
        raise ValueError(f"{name} must be a number, got {v!r}")
    return float(v)


def check_nonnegative(v: Any, name: str, *, finite: bool = True) -> float:
    """A knob that must be a number >= 0 (phi, eta, momentum, the norm threshold; inf allowed where
    ``finite=False``)."""
    v = _real(v, name)
    if v < 0 or (finite and math.isinf(v)):
        raise ValueError(f"{name} must be a {'finite ' if finite else ''}number >= 0, got {v!r}")
    return v


def check_interval(interval: Any, T: float) -> tuple[float, float]:
    """A guidance interval (lo, hi) in the model's time units, with 0 <= lo <= hi <= T."""
    if not isinstance(interval, (tuple, list)) or len(interval) != 2:
        raise ValueError(f"the guidance interval must be a pair (lo, hi) with 0 <= lo <= hi <= T = {T:g}, "
                         f"got {interval!r}")
    lo, hi = (_real(v, "the guidance interval's ends") for v in interval)
    if not 0 <= lo <= hi <= T:
        raise ValueError(f"the guidance interval must satisfy 0 <= lo <= hi <= T = {T:g}, got ({lo:g}, {hi:g})")
    return lo, hi


def check_percentile(p: Any) -> float:
    """Imagen's dynamic-thresholding percentile, in (0, 1] (Saharia et al. use 0.995)."""
    p = _real(p, "the dynamic-thresholding percentile")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"the dynamic-thresholding percentile must be in (0, 1], got {p!r}")
    return p


# --------------------------------------------------------------------------- the model's output <-> x0
PREDICTIONS = ("eps", "x0", "v", "flow")


class Prediction:
    """What a network predicts, and its predicted clean image at (x_t, t): x0 = a x_t + b out.

        "eps"   x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)     (Ho et al. 2020, Eq. 15; a DDPM schedule)
        "x0"    x0 = out
        "v"     x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v           (Salimans & Ho 2022, Sec. 4)
        "flow"  x0 = x_t - tau v, tau = t / time_scale               (``flow.x0_from_v``; t as the network sees it)

    ``T`` is the end of the time axis the network sees (schedule.T, or ``time_scale`` for "flow"): guidance
    intervals are checked against it.
    """

    def __init__(self, kind: str = "eps", schedule=None, time_scale: float = 1000.0):
        if kind not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {kind!r}")
        if kind in ("eps", "v") and schedule is None:
            raise ValueError(f"a {kind!r}-predicting model needs its schedule to convert to x0")
        self.kind, self.schedule = kind, schedule
        self.time_scale = check_nonnegative(time_scale, "time_scale")
        self.T = float(schedule.T) if schedule is not None and kind != "flow" else self.time_scale

    def _ab(self, t: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a, s) = (sqrt(abar_t), sqrt(1 - abar_t)) as (B, 1, ..., 1)."""
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        t = t.long().to(self.schedule.device)
        return (self.schedule.sqrt_alpha_bar[t].to(x.device, x.dtype).view(shape),
                self.schedule.sqrt_one_minus_alpha_bar[t].to(x.device, x.dtype).view(shape))

    def to_x0(self, out: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The clean image the output ``out`` predicts at (x, t)."""
        if self.kind == "x0":
            return out
        if self.kind == "flow":
            return x - (t.to(x.dtype) / self.time_scale).view(-1, *([1] * (x.dim() - 1))) * out
        a, s = self._ab(t, x)
        return (x - s * out) / a if self.kind == "eps" else a * x - s * out

    def slope(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """b = d x0 / d out, (B, 1, ..., 1): the output changes by d / b when x0 should change by d."""
        if self.kind == "x0":
            return torch.ones((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device)
        if self.kind == "flow":
            return -(t.to(x.dtype) / self.time_scale).view(-1, *([1] * (x.dim() - 1)))
        a, s = self._ab(t, x)
        return -s / a if self.kind == "eps" else -s


# --------------------------------------------------------------------------- the methods, one update each
def _std(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).std(dim=1).view(-1, *([1] * (x.dim() - 1)))


def rescale_x0(x0_cfg: torch.Tensor, x0_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """CFG rescale (Lin et al. 2024, Sec. 3.4), per image:

        x_rescaled = x_cfg * std(x_pos) / std(x_cfg)
        x_final    = phi x_rescaled + (1 - phi) x_cfg
    """
    x_rescaled = x0_cfg * _std(x0_cond) / _std(x0_cfg).clamp(min=1e-12)
    return phi * x_rescaled + (1 - phi) * x0_cfg


def apg_update(d_cond: torch.Tensor, d_uncond: torch.Tensor, *, eta: float = 1.0, norm_threshold: float = math.inf,
               previous: torch.Tensor | None = None, momentum: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive projected guidance's update (Sadat et al. 2024, Sec. 3 and its algorithm) on predicted clean
    images, per image:

        Delta   = D_cond - D_uncond + beta Delta_prev          reverse momentum, beta = -momentum
        Delta  *= min(1, r / ||Delta||)                        the norm threshold r
        Delta_par  = (<Delta, D_cond> / <D_cond, D_cond>) D_cond,   Delta_perp = Delta - Delta_par
        update  = Delta_perp + eta Delta_par                   and D_guided = D_cond + (w - 1) update

    Returns (update, Delta before the projection: the next step's ``previous``)."""
    delta = d_cond - d_uncond
    if momentum and previous is not None:
        delta = delta - momentum * previous
    running = delta                                            # the momentum buffer keeps it before the cap
    if math.isfinite(norm_threshold):
        norm = delta.flatten(1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
        delta = delta * (norm_threshold / norm.clamp(min=1e-12)).clamp(max=1.0)
    unit = d_cond.flatten(1)
    unit = (unit / unit.norm(dim=1, keepdim=True).clamp(min=1e-12)).view_as(d_cond)
    par = (delta * unit).flatten(1).sum(dim=1).view(-1, *([1] * (delta.dim() - 1))) * unit
    return (delta - par) + eta * par, running


def threshold_x0(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Imagen's dynamic thresholding (Saharia et al. 2022, Sec. 2.3): s = max(1, the percentile of |x0|),
    x0 <- clip(x0, -s, s) / s (``samplers.dynamic_threshold``)."""
    from .samplers import dynamic_threshold     # samplers is the home of the rule (clip_x0="dynamic")
    return dynamic_threshold(x0, percentile)


# --------------------------------------------------------------------------- the guided model
class Guided(nn.Module):
    """``Guided(model, w)(x, t, cond)``: the classifier-free-guided prediction, with the knobs of issue 36.

    Args:
        model: a conditional ``model(x, t, cond)`` trained with condition dropout.
        w: the guidance scale (0: unconditional, 1: conditional, >1: guided).
        null_cond: makes the "no condition" for a given ``cond`` (default: labels -> -1).
        interval: (lo, hi) in the network's time units (0 <= lo <= hi <= prediction.T): guidance only for
            lo <= t <= hi, the conditional prediction alone (one pass) elsewhere. None: every t.
        phi: CFG rescale's blend, >= 0 (0: off; Lin et al. use 0.7).
        eta, momentum, norm_threshold: APG's knobs (neutral 1, 0, inf: plain CFG). momentum >= 0 is the size of
            APG's *reverse* momentum, beta = -momentum (Sadat et al.'s beta = -0.5 is momentum = 0.5).
        percentile: dynamic thresholding of the guided x0 at this percentile, in (0, 1]. None: off.
        prediction: a ``Prediction`` (what the network outputs); needed by rescale, APG and thresholding.
    With ``cond=None`` the wrapper is the unconditional model. w = 0 and w = 1 return the unconditional
    and conditional predictions exactly (one forward pass, no mixing); every knob at its neutral value
    returns exactly ``cfg_combine``.
    """

    def __init__(self, model: Callable, w: float, null_cond: Callable[[Any], Any] = null_labels, *,
                 interval=None, phi: float = 0.0, eta: float = 1.0, momentum: float = 0.0,
                 norm_threshold: float = math.inf, percentile: float | None = None,
                 prediction: Prediction | None = None):
        super().__init__()
        self.model, self.w, self.null_cond = model, check_scale(w), null_cond
        self.phi = check_nonnegative(phi, "the rescale blend phi")
        self.eta = check_nonnegative(eta, "APG's parallel weight eta")
        self.momentum = check_nonnegative(momentum, "APG's momentum")
        self.norm_threshold = check_nonnegative(norm_threshold, "APG's norm threshold", finite=False)
        if self.norm_threshold == 0:
            raise ValueError("APG's norm threshold must be > 0 (inf: no threshold), got 0")
        self.percentile = None if percentile is None else check_percentile(percentile)
        self.apg = self.eta != 1.0 or self.momentum != 0.0 or math.isfinite(self.norm_threshold)
        if (self.phi or self.apg or self.percentile is not None or interval is not None) and prediction is None:
            raise ValueError("the interval (its T), rescale, APG and dynamic thresholding need what the model "
                             "predicts: pass prediction=Prediction('eps' | 'x0' | 'v' | 'flow', schedule)")
        self.prediction = prediction
        self.interval = None if interval is None else check_interval(interval, prediction.T)
        self.reset()

    def reset(self) -> None:
        """Forget APG's momentum (done automatically when a new chain starts: t goes up)."""
        self._t_last, self._k, self._previous = None, 0, []

    def _inside(self, t: torch.Tensor) -> torch.Tensor:
        lo, hi = self.interval
        return (t >= lo) & (t <= hi)                                   # Kynkaenniemi et al. 2024, Sec. 3

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is None:
            return self.model(x, t, None)
        if self.w == 1.0:
            return self.model(x, t, cond)
        if self.w == 0.0:
            return self.model(x, t, self.null_cond(cond))
        if self.interval is not None:
            inside = self._inside(t)
            if not bool(inside.any()):
                return self.model(x, t, cond)                           # outside: no guidance, one pass
        B = x.shape[0]
        out = self.model(torch.cat([x, x]), torch.cat([t, t]), _cat(cond, self.null_cond(cond)))
        p_cond, p_uncond = out[:B], out[B:]                             # (B, C, H, W) each
        if self.apg:
            guided = self._apg(p_cond, p_uncond, x, t)
        else:
            guided = cfg_combine(p_uncond, p_cond, self.w)
        if self.phi or self.percentile is not None:
            b = self.prediction.slope(x, t)
            x0 = self.prediction.to_x0(guided, x, t)
            x0_new = x0
            if self.phi:
                x0_new = rescale_x0(x0_new, self.prediction.to_x0(p_cond, x, t), self.phi)
            if self.percentile is not None:
                x0_new = threshold_x0(x0_new, self.percentile)
            guided = guided + (x0_new - x0) / b                          # x0 = a x + b out
        if self.interval is not None and not bool(inside.all()):
            guided = torch.where(inside.view(-1, *([1] * (x.dim() - 1))), guided, p_cond)
        return guided

    def _apg(self, p_cond, p_uncond, x, t) -> torch.Tensor:
        b = self.prediction.slope(x, t)
        d_cond = self.prediction.to_x0(p_cond, x, t)
        d_uncond = d_cond - b * (p_cond - p_uncond)                    # x0 is affine in the output
        t0 = float(t.flatten()[0])
        if self._t_last is None or t0 > self._t_last:                  # a new chain: forget the momentum
            self._previous = []
        if t0 != self._t_last:
            self._k = 0                                                # a new step (chunks share one t)
        self._t_last = t0
        k, self._k = self._k, self._k + 1
        prev = self._previous[k] if k < len(self._previous) and self._previous[k].shape == d_cond.shape else None
        update, delta = apg_update(d_cond, d_uncond, eta=self.eta, norm_threshold=self.norm_threshold,
                                   previous=prev, momentum=self.momentum)
        if self.momentum:
            if k < len(self._previous):
                self._previous[k] = delta
            else:
                self._previous.append(delta)
        # D_guided = D_cond + (w - 1) update, back in the output's units
        return p_cond + (self.w - 1) * update / b


def guided(model: Callable, w: float, null_cond: Callable[[Any], Any] = null_labels, **knobs) -> Guided:
    """Shorthand for ``Guided(model, w, null_cond, **knobs)``."""
    return Guided(model, w, null_cond, **knobs)


class AutoGuided(nn.Module):
    """``AutoGuided(model, guide, w)(x, t, cond)``: autoguidance, eps_guide + w (eps_model - eps_guide)
    (Karras et al. 2024, Eq. 2 in our notation).

    Args:
        model: the trained ``model(x, t, cond)``.
        guide: a weaker version of it with the same interface (e.g. ``registry.get_guide(profile)``).
        w: the scale (1: the model alone, one forward pass; > 1: steer away from the guide's mistakes).
    ``cond`` is passed to both networks unchanged (None for the unconditional denoiser).
    """

    def __init__(self, model: Callable, guide: Callable, w: float):
        super().__init__()
        self.model, self.guide, self.w = model, guide, check_scale(w, "autoguidance scale w")

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        eps_model = self.model(x, t, cond)
        if self.w == 1.0:
            return eps_model
        return cfg_combine(self.guide(x, t, cond), eps_model, self.w)


def autoguided(model: Callable, guide: Callable, w: float) -> AutoGuided:
    """Shorthand for ``AutoGuided(model, guide, w)``."""
    return AutoGuided(model, guide, w)


# --------------------------------------------------------------------------- training: condition dropout
def drop_condition(cond: torch.Tensor, p: float, generator: torch.Generator, null: Any = -1) -> torch.Tensor:
    """Classifier-free guidance training (Ho & Salimans 2022, Algorithm 1, line 3: c <- null with
    probability p_uncond): each row of ``cond`` (labels (B,), vectors (B, D), token rows (B, L)) becomes
    ``null`` (a number, or one row) with probability ``p``, so one network learns p(x | c) and p(x).

    One uniform draw per row from ``generator`` (on its device), whatever ``cond``'s device.
    """
    p = _real(p, "the condition-dropout probability p_uncond")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"the condition-dropout probability p_uncond must be in [0, 1], got {p!r}")
    drop = torch.rand(len(cond), generator=generator, device=generator.device).to(cond.device) < p
    null = torch.as_tensor(null, dtype=cond.dtype, device=cond.device)
    return torch.where(drop.view(-1, *([1] * (cond.dim() - 1))), null, cond)


# --------------------------------------------------------------------------- one door: a dict of settings
METHODS = ("cfg", "interval", "rescale", "apg", "threshold", "autoguidance")
KNOBS = {                           # the settings each method reads besides "guidance" (w) and "method"
    "cfg": (),
    "interval": ("interval",),
    "rescale": ("phi",),
    "apg": ("eta", "momentum", "norm_threshold"),
    "threshold": ("percentile",),
    "autoguidance": (),
}
_COMMON = ("guidance", "method", "sampler", "steps")     # "sampler" and "steps": the folder's sampling defaults


def from_settings(model: Callable, settings: dict, *, null_cond: Callable[[Any], Any] = null_labels,
                  prediction: Prediction | None = None, guide: Callable | None = None) -> nn.Module:
    """The guided model a dict of settings asks for, e.g. a model folder's ``config.json["sampling"]``:

        {"guidance": 2.0}                                            plain CFG (``method`` defaults to "cfg")
        {"guidance": 3.0, "method": "interval", "interval": [0, 600]}
        {"guidance": 3.0, "method": "rescale", "phi": 0.7}
        {"guidance": 3.0, "method": "apg", "eta": 0.0, "momentum": 0.5, "norm_threshold": 15.0}
        {"guidance": 3.0, "method": "threshold", "percentile": 0.995}
        {"guidance": 2.0, "method": "autoguidance"}                  (needs ``guide``)

    Any knob of ``Guided`` may be combined (e.g. "interval" with "phi"): ``method`` names the main one. An
    unknown method or key, or a bad value, is refused here, before any compute.
    """
    if not isinstance(settings, dict):
        raise ValueError(f"guidance settings must be a dict, got {type(settings).__name__}")
    method = settings.get("method", "cfg")
    if method not in METHODS:
        raise ValueError(f"unknown guidance method {method!r}: expected one of {METHODS}")
    allowed = set(_COMMON).union(*KNOBS.values())
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(f"unknown guidance settings {unknown}: expected some of {sorted(allowed)}")
    if "guidance" not in settings:
        raise ValueError("guidance settings need 'guidance' (the scale w)")
    w = settings["guidance"]
    if method == "autoguidance":
        if guide is None:
            raise ValueError("autoguidance needs guide= (a weaker version of the model)")
        extra = sorted(set(settings) - set(_COMMON))
        if extra:
            raise ValueError(f"autoguidance takes no other knobs, got {extra}")
        return AutoGuided(model, guide, w)
    knobs = {k: settings[k] for k in set(KNOBS["interval"] + KNOBS["rescale"] + KNOBS["apg"] + KNOBS["threshold"])
             if k in settings}
    missing = [k for k in KNOBS[method] if k not in settings and method in ("interval", "rescale", "threshold")]
    if missing:
        raise ValueError(f"guidance method {method!r} needs {missing}")
    if "interval" in knobs:
        knobs["interval"] = tuple(knobs["interval"]) if isinstance(knobs["interval"], list) else knobs["interval"]
    if "norm_threshold" in knobs and knobs["norm_threshold"] is None:
        knobs["norm_threshold"] = math.inf
    return Guided(model, w, null_cond, prediction=prediction, **knobs)


def network_passes(settings: dict, timesteps: Any) -> int:
    """Images through the network per sample for ``settings`` over the visited ``timesteps`` (a guided step
    costs 2, a conditional-only one 1): plain CFG with 25 DDIM steps costs 50."""
    ts = [float(t) for t in timesteps]
    w = float(settings.get("guidance", 1.0))
    if w in (0.0, 1.0):
        return len(ts)
    if settings.get("interval") is not None:
        lo, hi = settings["interval"]
        return sum(2 if lo <= t <= hi else 1 for t in ts)
    return 2 * len(ts)
