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
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Callable

import torch
from torch import nn

__all__ = ["MAX_SCALE", "check_scale", "Guided", "guided", "null_labels", "cfg_combine", "AutoGuided", "autoguided"]


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


class Guided(nn.Module):
    """``Guided(model, w)(x, t, cond)``: the classifier-free-guided noise prediction.

    Args:
        model: a conditional ``model(x, t, cond)`` trained with condition dropout.
        w: the guidance scale (0: unconditional, 1: conditional, >1: guided).
        null_cond: makes the "no condition" for a given ``cond`` (default: labels -> -1).
    With ``cond=None`` the wrapper is the unconditional model. w = 0 and w = 1 return the unconditional
    and conditional predictions exactly (one forward pass, no mixing).
    """

    def __init__(self, model: Callable, w: float, null_cond: Callable[[Any], Any] = null_labels):
        super().__init__()
        self.model, self.w, self.null_cond = model, check_scale(w), null_cond

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        if cond is None:
            return self.model(x, t, None)
        if self.w == 1.0:
            return self.model(x, t, cond)
        if self.w == 0.0:
            return self.model(x, t, self.null_cond(cond))
        B = x.shape[0]
        eps = self.model(torch.cat([x, x]), torch.cat([t, t]), _cat(cond, self.null_cond(cond)))
        eps_cond, eps_uncond = eps[:B], eps[B:]                       # (B, C, H, W) each
        return cfg_combine(eps_uncond, eps_cond, self.w)


def guided(model: Callable, w: float, null_cond: Callable[[Any], Any] = null_labels) -> Guided:
    """Shorthand for ``Guided(model, w, null_cond)``."""
    return Guided(model, w, null_cond)


class AutoGuided(nn.Module):
    """``AutoGuided(model, guide, w)(x, t, cond)``: autoguidance, eps_guide + w (eps_model - eps_guide)
    (Karras et al. 2024, Eq. 2 in our notation).

    Args:
        model: the trained ``model(x, t, cond)``.
        guide: a weaker version of it with the same interface (e.g. ``models.get_guide(profile)``).
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
