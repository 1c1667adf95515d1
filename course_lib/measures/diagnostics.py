"""Checks that catch the classic diffusion bugs, the ones where "the loss went down but my samples are noise"
(appendix A1). Each function tests one thing and returns a ``Finding``: truthy when the check passes, with a
message that says what was measured and, when it fails, what the usual cause is.

    check_data_range          training data in [-1, 1], and really using that range    (data in [0, 1])
    check_sample_stats        samples' pixel mean and spread against real digits       (any bug, after the fact)
    check_sampler_oracle      a sampler driven by the exact denoiser of one image returns that image
                                                                                      (off-by-one in t)
    signal_levels             the sqrt(alpha_bar) each pixel of x_t really got
    check_broadcast           ... is one value per example                              (wrong broadcast axis)
    check_ema_weights         the model carries a checkpoint's EMA weights, not its raw ones
    check_eval_mode           no layer is left in training mode                         (dropout while sampling)
    effective_guidance_scale  the w a guided prediction really applies
    check_guidance_direction  ... is the w you asked for, and not negative             (flipped guidance sign)
    check_flow_oracle         a flow sampler driven by the exact velocity of one image returns that image
                                                                                      (flipped time convention)
    check_embedding_region    embeddings fed to a decoder lie among the ones it was trained on
                                                                                      (text embedding to unCLIP)

``Finding.raise_if_failed()`` turns a failed check into a ``ValueError``, for scripts and training loops.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..diffusion.forward import predict_eps_from_x0
from ..diffusion.guidance import null_labels
from ..diffusion.schedules import Schedule

__all__ = ["Finding", "check_data_range", "check_sample_stats", "check_sampler_oracle", "signal_levels",
           "check_broadcast", "check_ema_weights", "check_eval_mode", "effective_guidance_scale",
           "check_guidance_direction", "MODE_DEPENDENT", "ORACLE_ATOL"]

# layers that can compute something different in train() and in eval() mode (see ``_mode_dependent``)
MODE_DEPENDENT = (nn.modules.dropout._DropoutNd, nn.modules.batchnorm._BatchNorm,
                  nn.modules.instancenorm._InstanceNorm)
ORACLE_ATOL = 1e-3   # float32 rounding of a whole sampling run (tests/test_samplers.py's tolerance at T = 1000)


@dataclass
class Finding:
    """The outcome of one check: ``ok``, a one-paragraph ``message`` and the numbers behind it."""
    check: str
    ok: bool
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok

    def __repr__(self) -> str:                     # what a notebook shows for a cell ending in a check
        return f"[{'ok' if self.ok else 'FAIL'}] {self.check}: {self.message}"

    def raise_if_failed(self) -> "Finding":
        """Raise ``ValueError`` with the message when the check failed; return ``self`` otherwise."""
        if not self.ok:
            raise ValueError(repr(self))
        return self


# --------------------------------------------------------------------------- 1. the data
def check_data_range(x: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0), reach: float = 0.1,
                     atol: float = 1e-3) -> Finding:
    """Training images must lie in ``value_range`` *and* fill it: the darkest pixel near ``lo``, the
    brightest near ``hi``. Diffusion adds unit-variance noise, so data in [0, 1] (what ``ToTensor()``
    gives) carries a quarter of the signal power the schedule was designed for, and samples come out grey.

    Args:
        x: a batch of images, any shape.
        value_range: ``(lo, hi)`` the range the model expects (the course: ``[-1, 1]``).
        reach: how close, as a fraction of ``hi - lo``, the extremes must come to ``lo`` and ``hi``
            (MNIST batches always hold pure black and pure white pixels).
        atol: rounding allowed beyond the range.
    Returns:
        a ``Finding`` with ``values`` ``min``, ``max``, ``mean``.
    """
    lo, hi = (float(v) for v in value_range)
    if not lo < hi:
        raise ValueError(f"value_range must be (lo, hi) with lo < hi, got {value_range!r}")
    x = x.detach().float()
    mn, mx, mean = x.min().item(), x.max().item(), x.mean().item()
    values = {"min": mn, "max": mx, "mean": mean}
    seen = f"values in [{mn:.3g}, {mx:.3g}], mean {mean:.3g}"
    if mn < lo - atol or mx > hi + atol:
        return Finding("data range", False, f"{seen}: outside [{lo:g}, {hi:g}]. Raw 0..255 bytes, or a "
                       f"normalisation by mean and std (torchvision's Normalize)?", values)
    slack = reach * (hi - lo)
    if mn > lo + slack or mx < hi - slack:
        return Finding("data range", False, f"{seen}: only part of [{lo:g}, {hi:g}] is used. Data in [0, 1]? "
                       f"Map it with x * 2 - 1.", values)
    return Finding("data range", True, f"{seen}: fills [{lo:g}, {hi:g}].", values)


def check_sample_stats(samples: torch.Tensor, real: torch.Tensor, tol: float = 0.15) -> Finding:
    """Samples should have the pixel statistics of the data: compare the mean and the standard deviation of
    all pixel values with those of real images. A grey haze (data in [0, 1], raw weights), static (a broken
    last step) or washed-out digits all move these two numbers long before any metric is set up.

    Args:
        samples, real: ``(N, C, H, W)`` in [-1, 1] (real: e.g. ``load_mnist`` or ``metrics.real_images``).
        tol: the largest difference allowed in either number, in pixel units. The default is a quarter of
            MNIST's pixel standard deviation (0.62 in [-1, 1]).
    Returns:
        a ``Finding`` with ``values`` ``mean``, ``std``, ``real_mean``, ``real_std``.
    """
    if samples.shape[1:] != real.shape[1:]:
        raise ValueError(f"samples {tuple(samples.shape)} and real {tuple(real.shape)} differ in image shape")
    s, r = samples.detach().float().cpu(), real.detach().float().cpu()
    if not torch.isfinite(s).all():
        return Finding("sample statistics", False, "the samples contain NaN or inf: the sampler diverged.",
                       {"mean": math.nan, "std": math.nan, "real_mean": r.mean().item(), "real_std": r.std().item()})
    values = {"mean": s.mean().item(), "std": s.std().item(), "real_mean": r.mean().item(),
              "real_std": r.std().item()}
    seen = (f"pixel mean {values['mean']:.3f} (real {values['real_mean']:.3f}), "
            f"std {values['std']:.3f} (real {values['real_std']:.3f})")
    hints = []
    if values["mean"] > values["real_mean"] + tol:
        hints.append("brighter: a grey background or heavy strokes (data range? raw weights?)")
    if values["mean"] < values["real_mean"] - tol:
        hints.append("darker: faint or missing strokes")
    if values["std"] > values["real_std"] + tol:
        hints.append("more spread: leftover noise (a broken last step? wrong timesteps?)")
    if values["std"] < values["real_std"] - tol:
        hints.append("less spread: washed out, low contrast (data range?)")
    if hints:
        return Finding("sample statistics", False, f"{seen}: differ by more than {tol:g}; "
                       f"{'; '.join(hints)}.", values)
    return Finding("sample statistics", True, f"{seen}: within {tol:g} of the data.", values)


# --------------------------------------------------------------------------- 2. the sampler
def check_sampler_oracle(sampler: Callable[..., torch.Tensor], schedule: Schedule, x0: torch.Tensor,
                         atol: float = ORACLE_ATOL, seed: int = 0) -> Finding:
    """Run a sampler with the *exact* denoiser of a data set made of one image x0,

        eps*(x_t, t) = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)     (DDPM Eq. 4 solved for eps)

    from random noise: a correct sampler must return x0 (the property test of ``tests/test_samplers.py``).
    No trained network is involved, so any error is the sampler's own: a timestep off by one, a wrong
    schedule entry, a wrong last step. Off-by-ones that barely change real samples still show here.

    Args:
        sampler: ``sampler(model, x_T, schedule) -> x_0``, e.g. ``functools.partial(ddim_sample, steps=10)``.
        schedule: the schedule to test with.
        x0: ``(1, C, H, W)`` one image in [-1, 1].
        atol: the largest error allowed (float32 rounding; see ``ORACLE_ATOL``).
        seed: seeds x_T (4 copies) and the sampler's generator when it takes one.
    Returns:
        a ``Finding`` with ``values`` ``max_error``.
    """
    if x0.dim() != 4 or x0.shape[0] != 1:
        raise ValueError(f"x0 must be one image (1, C, H, W), got shape {tuple(x0.shape)}")
    x0 = x0.detach().float().to(schedule.device)

    def oracle(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        return predict_eps_from_x0(x, t, x0.expand_as(x), schedule)

    g = torch.Generator().manual_seed(seed)
    x_T = torch.randn((4, *x0.shape[1:]), generator=g).to(schedule.device)
    out = sampler(oracle, x_T, schedule)
    err = (out.float() - x0).abs().max().item()
    if not math.isfinite(err) or err > atol:
        return Finding("sampler oracle", False, f"the exact denoiser of one image was sampled into something "
                       f"else: max error {err:.3g} (allowed {atol:g}). The sampler's arithmetic is wrong: "
                       f"check the timestep indices and the last step (alpha_bar_prev = 1 at x_0).",
                       {"max_error": err})
    return Finding("sampler oracle", True, f"the exact denoiser of one image samples that image "
                   f"(max error {err:.2g}).", {"max_error": err})


# --------------------------------------------------------------------------- 3. broadcasting
def signal_levels(q_sample_fn: Callable[..., torch.Tensor], schedule: Schedule, t: torch.Tensor,
                  shape: tuple[int, ...] = (1, 28, 28)) -> torch.Tensor:
    """The factor sqrt(alpha_bar) that each pixel of x_t really received from ``q_sample_fn``: it is called
    with all-ones images and zero noise, so x_t *is* that factor (DDPM Eq. 4 with x0 = 1, eps = 0).

    Args:
        q_sample_fn: ``q_sample_fn(x0, t, schedule, noise=...)``, e.g. ``forward.q_sample``.
        t: ``(B,)`` long timesteps, one per example.
        shape: one image's shape.
    Returns:
        ``(B, *shape)``: for a correct q_sample, image i is filled with sqrt(alpha_bar[t_i]).
    """
    t = torch.as_tensor(t, dtype=torch.long).to(schedule.device)
    x0 = torch.ones((t.shape[0], *shape), device=schedule.device)
    return q_sample_fn(x0, t, schedule, noise=torch.zeros_like(x0))


def check_broadcast(q_sample_fn: Callable[..., torch.Tensor], schedule: Schedule,
                    shape: tuple[int, ...] = (1, 28, 28), atol: float = 1e-6) -> Finding:
    """Each example must be scaled by *its own* sqrt(alpha_bar_t): ``signal_levels`` must be constant
    within an image and equal to sqrt(alpha_bar[t_i]).

    A ``(B,)`` vector shaped to the wrong axis crashes for most batch sizes, but broadcasts silently when
    the batch size equals the size of that axis (28, the width of a digit). So the check tries batches
    of every size in ``shape`` (the dangerous ones) and one that matches none.

    Args:
        q_sample_fn: ``q_sample_fn(x0, t, schedule, noise=...)``, e.g. ``forward.q_sample`` or
            ``functools.partial(q_sample, axis=-1)``.
        shape: one image's shape.
    Returns:
        a ``Finding`` with ``values`` ``max_error`` and ``batch_sizes``.
    """
    sizes = sorted({s for s in shape if s > 1} | {max(shape) + 3})
    worst = 0.0
    for B in sizes:
        t = (torch.arange(B) * (schedule.T - 1) // max(B - 1, 1)).long()     # spread over 0 .. T-1
        try:
            levels = signal_levels(q_sample_fn, schedule, t, shape)
        except (RuntimeError, ValueError) as e:
            return Finding("broadcast", False, f"a batch of {B} examples with different t crashed: {e}",
                           {"max_error": math.inf, "batch_sizes": sizes})
        if levels.shape != (B, *shape):
            return Finding("broadcast", False, f"a batch of {B} gave x_t of shape {tuple(levels.shape)} "
                           f"instead of {(B, *shape)}: a per-example value broadcast into a new axis.",
                           {"max_error": math.inf, "batch_sizes": sizes})
        want = schedule.sqrt_alpha_bar[t.to(schedule.device)].view(B, *([1] * len(shape)))
        err = (levels - want).abs().max().item()
        worst = max(worst, err)
        if err > atol:
            return Finding("broadcast", False, f"with a batch of {B}, x_t's signal level is off by up to "
                           f"{err:.3g}: example i is not scaled by sqrt(alpha_bar[t_i]) alone. A (B,) vector "
                           f"reshaped along the wrong axis (it should be (B, 1, 1, 1)).",
                           {"max_error": err, "batch_sizes": sizes})
    return Finding("broadcast", True, f"one signal level per example for batches of {sizes} "
                   f"(max error {worst:.2g}).", {"max_error": worst, "batch_sizes": sizes})


# --------------------------------------------------------------------------- 4. which model
def check_ema_weights(model: nn.Module, folder: str | Path) -> Finding:
    """The model you sample with should carry the checkpoint's EMA weights (``model.safetensors``), not the
    raw ones the optimizer updated (``trainer/raw_model.safetensors``). Compares every parameter.

    Args:
        model: a UNet. folder: a checkpoint folder written by training (or shipped weights).
    Returns:
        a ``Finding`` with ``values`` ``ema_diff`` and ``raw_diff`` (largest parameter difference; raw is
        NaN when the folder keeps no raw weights, like the shipped ones).
    """
    from ..networks.unet import load_unet  # the registry imports training code: only when needed
    ema, _ = load_unet(folder)
    try:
        raw, _ = load_unet(folder, raw=True)
    except FileNotFoundError:
        raw = None

    def diff(other: nn.Module) -> float:
        mine, theirs = model.state_dict(), other.state_dict()
        if mine.keys() != theirs.keys():
            return math.inf
        return max(((mine[k].detach().float().cpu() - theirs[k].float()).abs().max().item() if mine[k].numel()
                    else 0.0) for k in mine)

    ema_diff = diff(ema)
    raw_diff = diff(raw) if raw is not None else math.nan
    values = {"ema_diff": ema_diff, "raw_diff": raw_diff}
    if ema_diff == 0.0:
        return Finding("EMA weights", True, f"the model carries the EMA weights of {folder}.", values)
    if raw_diff == 0.0:
        return Finding("EMA weights", False, f"the model carries the RAW weights of {folder} (largest "
                       f"difference to the EMA ones: {ema_diff:.3g}). Sample with the averaged weights: "
                       f"load_unet(folder) or get_model, not load_unet(folder, raw=True).", values)
    return Finding("EMA weights", False, f"the model carries neither the EMA nor the raw weights of {folder} "
                   f"(largest difference to the EMA ones: {ema_diff:.3g}).", values)


def _mode_dependent(m: nn.Module) -> bool:
    """Dropout with p > 0 (random units dropped), batch norm (the batch's statistics instead of the running
    ones), instance norm when it keeps running statistics."""
    if isinstance(m, nn.modules.dropout._DropoutNd):
        return m.p > 0
    if isinstance(m, nn.modules.instancenorm._InstanceNorm):
        return m.track_running_stats
    return isinstance(m, MODE_DEPENDENT)


def check_eval_mode(model: nn.Module) -> Finding:
    """Sample in eval mode: ``model.eval()``. Lists the submodules left in training mode, and among them
    the ones whose output depends on it (dropout drops random units, batch norm uses the batch's statistics).

    Returns:
        a ``Finding`` with ``values`` ``training`` (names of modules in training mode) and ``mode_dependent``
        (the subset that changes the output).
    """
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    active = [name or type(model).__name__ for name, m in model.named_modules()
              if m.training and _mode_dependent(m)]
    values = {"training": training, "mode_dependent": active}
    if not training:
        return Finding("eval mode", True, "every module is in eval mode.", values)
    if active:
        shown = ", ".join(active[:4]) + (f" and {len(active) - 4} more" if len(active) > 4 else "")
        return Finding("eval mode", False, f"{len(training)} modules are in training mode, {len(active)} of "
                       f"which change the output ({shown}): every call is random. Call model.eval() "
                       f"before sampling.", values)
    return Finding("eval mode", False, f"{len(training)} modules are in training mode. None of them changes "
                   f"the output (no dropout, no batch norm), so samples are unaffected for now; call "
                   f"model.eval() anyway.", values)


# --------------------------------------------------------------------------- 5. guidance
def effective_guidance_scale(eps_guided: torch.Tensor, eps_uncond: torch.Tensor, eps_cond: torch.Tensor
                             ) -> float:
    """The w that ``eps_guided = eps_uncond + w (eps_cond - eps_uncond)`` applies (Ho & Salimans 2022, Eq. 6
    in our convention), by least squares: w = <eps_guided - eps_uncond, d> / <d, d>, d = eps_cond - eps_uncond.
    """
    d = (eps_cond - eps_uncond).detach().cpu().double().flatten()      # on the CPU: mps has no float64
    a = (eps_guided - eps_uncond).detach().cpu().double().flatten()
    dd = torch.dot(d, d).item()
    if dd == 0.0:
        raise ValueError("eps_cond equals eps_uncond: the condition changes nothing, so w is undefined")
    return torch.dot(a, d).item() / dd


@torch.no_grad()
def check_guidance_direction(guided_model: Callable, model: Callable, x_t: torch.Tensor, t: torch.Tensor,
                             cond: Any, null_cond: Callable[[Any], Any] = null_labels,
                             expected_w: float | None = None, rtol: float = 1e-3) -> Finding:
    """Guidance must push *towards* the condition: the guided prediction's effective scale
    (``effective_guidance_scale``) must be >= 0, and equal to the w you asked for.

    Args:
        guided_model: the guided ``model(x, t, cond)`` under test, e.g. ``guided(model, w)``.
        model: the conditional model it wraps.
        x_t, t, cond: a batch to test on (e.g. noise, a middle t, labels).
        null_cond: the "no condition" for ``cond`` (default: labels -> -1).
        expected_w: the scale you meant (default: ``guided_model.w`` where it has one).
        rtol: relative tolerance on w.
    Returns:
        a ``Finding`` with ``values`` ``w`` (the effective scale) and ``expected_w``.
    """
    expected_w = expected_w if expected_w is not None else getattr(guided_model, "w", None)
    eps_g = guided_model(x_t, t, cond).float()
    eps_c, eps_u = model(x_t, t, cond).float(), model(x_t, t, null_cond(cond)).float()
    w = effective_guidance_scale(eps_g, eps_u, eps_c)
    values = {"w": w, "expected_w": expected_w}
    if w < -rtol:
        return Finding("guidance direction", False, f"the guided prediction applies w = {w:.3g}: it pushes "
                       f"AWAY from the condition (a flipped sign, or swapped eps_cond and eps_uncond)"
                       + (f"; you asked for w = {expected_w:g}." if expected_w is not None else "."), values)
    if expected_w is not None and abs(w - expected_w) > rtol * max(1.0, abs(expected_w)):
        return Finding("guidance direction", False, f"the guided prediction applies w = {w:.3g}, not the "
                       f"w = {expected_w:g} you asked for (Ho & Salimans' w is ours minus 1).", values)
    return Finding("guidance direction", True, f"the guided prediction applies w = {w:.3g}, towards the "
                   f"condition.", values)


# --------------------------------------------------------------------------- Part 2's bugs (appendix A1, section 6)
def check_flow_oracle(sampler: Callable[..., torch.Tensor], x0: torch.Tensor, atol: float = ORACLE_ATOL,
                      seed: int = 0) -> Finding:
    """Run a flow sampler with the *exact* velocity of a data set made of one image x0, in the course's
    convention (x_t = (1 - t) x0 + t eps, t = 0 data, t = 1 noise; ``diffusion.flow``):

        v*(x_t, t) = (x_t - x0) / t          (``flow.marginal_velocity`` with one data point)

    Every path is then a straight line into x0, so a correct sampler started from noise at t = 1 must return x0,
    even with one Euler step. A sampler written in the other convention (noise at t = 0, t increasing: Liu et
    al. 2023, Lipman et al. 2023, MIT 6.S184) walks away from it. No trained network is involved.

    Args:
        sampler: ``sampler(model, x_1) -> x_0`` where ``model(x, t * 1000, cond)`` returns v, e.g.
            ``functools.partial(flow.euler_sample, steps=5)``.
        x0: ``(1, C, H, W)`` one image in [-1, 1]. atol: the largest error allowed. seed: seeds x_1 (4 copies).
    Returns:
        a ``Finding`` with ``values`` ``max_error``.
    """
    from ..diffusion.flow import TIME_SCALE
    if x0.dim() != 4 or x0.shape[0] != 1:
        raise ValueError(f"x0 must be one image (1, C, H, W), got shape {tuple(x0.shape)}")
    x0 = x0.detach().float()

    def oracle(x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        tt = (torch.as_tensor(t, dtype=torch.float32).to(x.device) / TIME_SCALE).reshape(-1, *[1] * (x.dim() - 1))
        return (x - x0.to(x.device)) / tt.clamp(min=1e-6)            # at t = 0 the exact field is infinite

    x_1 = torch.randn((4, *x0.shape[1:]), generator=torch.Generator().manual_seed(seed))
    out = sampler(oracle, x_1)
    err = (out.float().cpu() - x0).abs().max().item()
    if not math.isfinite(err) or err > atol:
        return Finding("flow oracle", False, f"the exact velocity of one image was integrated into something "
                       f"else: max error {err:.3g} (allowed {atol:g}). Check the time convention: the course's "
                       f"flow starts from noise at t = 1 and ends at data at t = 0 (papers with noise at t = 0 "
                       f"need t -> 1 - t and v -> -v).", {"max_error": err})
    return Finding("flow oracle", True, f"the exact velocity of one image is integrated into that image "
                   f"(max error {err:.2g}).", {"max_error": err})


def check_embedding_region(z: torch.Tensor, bank: torch.Tensor, quantile: float = 0.01) -> Finding:
    """An embedding fed to a decoder must lie where its training embeddings lie. For each row of ``z``, the
    cosine with its nearest neighbour in ``bank`` (the image embeddings the decoder was trained on) is compared
    with the bank's own nearest-neighbour cosines (each to another bank row): a row below the bank's
    ``quantile`` is off the region. CLIP's text embeddings fail it (the modality gap, Liang et al. 2022), which
    is why unCLIP needs a prior (lesson 10).

    Args: z: (N, D) embeddings to feed. bank: (M, D) training embeddings, M >= 2 (normalised here).
    Returns: a ``Finding`` with ``values`` ``nearest_cosine`` (the median over z), ``bank_floor`` and
        ``off_region`` (the fraction of z below it).
    """
    import torch.nn.functional as F
    if z.dim() != 2 or bank.dim() != 2 or z.shape[1] != bank.shape[1] or len(bank) < 2:
        raise ValueError(f"z must be (N, D) and bank (M >= 2, D) with the same D, got {tuple(z.shape)} and "
                         f"{tuple(bank.shape)}")
    z, bank = F.normalize(z.float().cpu(), dim=-1), F.normalize(bank.float().cpu(), dim=-1)
    own = bank @ bank.T
    own.fill_diagonal_(-2.0)                                            # each bank row's nearest *other* row
    floor = torch.quantile(own.max(1).values, quantile).item()
    near = (z @ bank.T).max(1).values
    off = (near < floor).float().mean().item()
    values = {"nearest_cosine": near.median().item(), "bank_floor": floor, "off_region": off}
    if off > 0.5:
        return Finding("embedding region", False, f"{off:.0%} of the embeddings lie off the decoder's training "
                       f"region (median nearest cosine {values['nearest_cosine']:.2f} against a floor of "
                       f"{floor:.2f}): are these text embeddings fed to an image-embedding decoder?", values)
    return Finding("embedding region", True, f"{1 - off:.0%} of the embeddings lie among the training ones "
                   f"(median nearest cosine {values['nearest_cosine']:.2f}, floor {floor:.2f}).", values)
