"""One training loop for every model in the course (denoiser, class model, metrics classifier, CLIP,
text-to-image). It knows nothing about diffusion: a model, a loss function and a way to draw a batch.

    for step in range(start, steps):
        lr = warmup_cosine(step)                      # linear warm-up, then cosine decay to 10 %
        batch = get_batch(generator)                   # random indices into data already on the device
        loss = loss_fn(model, batch, generator)        # under autocast (bf16 / fp16 / fp32)
        loss.backward(); clip_grad_norm_(1.0); AdamW.step()
        ema.update_parameters(model)                   # EMA, decay warmed up, its count kept in Python
        every N steps and at the end: atomic checkpoint

AdamW is fused (one kernel for the whole update, on a CPU too). On a GPU the loop is kept from waiting on
the GPU: the noise generator lives there (``rng_device``; captions, drawn on the host, get a CPU generator of
their own: ``batch_rng_device``), the losses are read every ``SYNC_EVERY`` steps rather than every step, and
the EMA updates all tensors in one go, counting its updates in Python (torch's ``AveragedModel`` copies its
counter between host and GPU at every update). The other waits: each checkpoint (it reads the losses and
copies the weights to the host), the guide copy at ``guide_step``, and whatever a ``get_batch`` copies from
the host (the CLIP and text-to-image batches are built there, then copied from pinned memory without
waiting). With fp16 (a T4) the grad scaler hands its inf check to the fused AdamW, which waits for nothing.
With ``COURSE_COMPILE=1`` the forward and backward pass run as CUDA graphs (``config.Runtime``).

Resuming continues the run exactly: raw weights, EMA, optimizer moments, the generator and the CPU RNG
are restored, and the learning rate is a pure function of the step, so on the CPU a resumed run reaches
bit-identical weights to an uninterrupted one.
"""
from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .. import store
from ..config import Runtime, autocast, get_runtime
from . import checkpoints

SYNC_EVERY = 25          # on a GPU, read the losses (and check them for NaN) every this many steps
                         # (the loop's only regular wait for the GPU: see the module docstring for the others)

__all__ = ["TrainResult", "fit", "EMA", "ema_avg_fn", "ema_multi_avg_fn", "warmup_cosine_lr", "plot_losses"]


def ema_avg_fn(decay: float) -> Callable:
    """Exponential moving average with a warm-up: d_n = min(decay, (1 + n) / (10 + n)).

    Early on the average follows the model closely (d is small), so early EMA weights are not just the
    initial random ones; it averages over roughly the last tenth of the steps so far, until the warm-up
    reaches ``decay`` (after about 9,000 steps for 0.999) and the average spans about 1 / (1 - decay) steps.
    One tensor at a time, for reading and testing; training uses ``ema_multi_avg_fn``, the same average.
    """
    multi = ema_multi_avg_fn(decay)

    def avg_fn(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        out = averaged.clone()
        multi([out], [current], torch.as_tensor(num_averaged))
        return out
    return avg_fn


def ema_multi_avg_fn(decay: float) -> Callable:
    """The warmed-up EMA, d_n = min(decay, (1 + n) / (10 + n)) (see ``ema_avg_fn``), for whole lists of
    tensors at once (``AveragedModel(multi_avg_fn=...)``): a few ``torch._foreach_*`` kernels, not a few
    per tensor.
    ``num_averaged`` is a tensor (as ``AveragedModel`` passes it; d is then computed on the tensors' device)
    or a Python int (as ``EMA`` passes it: d is computed on the host, nothing is copied); both give the
    same float32 d, so the same weights.
    """
    @torch.no_grad()
    def multi_avg_fn(averaged: list[torch.Tensor], current: list[torch.Tensor],
                     num_averaged: torch.Tensor | int) -> None:
        if not averaged[0].is_floating_point():       # integer buffers are copied, not averaged
            torch._foreach_copy_(averaged, current)
            return
        if isinstance(num_averaged, numbers.Integral):
            n = float(num_averaged)
            d32 = torch.tensor(min((1.0 + n) / (10.0 + n), decay), dtype=averaged[0].dtype)   # a double, rounded once
            d, one_minus_d = float(d32), float(1.0 - d32)                  # the tensor branch's values, exactly
        else:
            n = num_averaged.to(torch.float32)      # exact below 2**24 updates; no float64 on the device (mps)
            d = ((1.0 + n) / (10.0 + n)).clamp(max=decay).to(averaged[0].dtype)
            one_minus_d = 1.0 - d
        torch._foreach_mul_(averaged, d)                                   # d * averaged
        torch._foreach_add_(averaged, torch._foreach_mul(current, one_minus_d))   # + (1 - d) * current
    return multi_avg_fn


class EMA(AveragedModel):
    """The weights' exponential moving average (``ema_multi_avg_fn(decay)``, over parameters and buffers), as
    ``AveragedModel`` keeps it, but counting its updates in a Python int (``updates``): torch's class keeps
    the count in a CPU tensor and, with the model on a GPU, copies it there (and compares it) at every
    update, so every step would wait for a host copy. ``n_averaged`` is still updated, on the CPU, so the
    state dict (and so every checkpoint) is the same as ``AveragedModel``'s.
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__(model, multi_avg_fn=ema_multi_avg_fn(decay), use_buffers=True)
        self.updates = 0

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = [p.detach() for p in (*self.module.parameters(), *self.module.buffers())]
        current = [p.detach() for p in (*model.parameters(), *model.buffers())]
        if self.updates == 0:                                              # the first update copies
            torch._foreach_copy_(averaged, current)
        else:
            groups: dict[tuple, tuple[list, list]] = {}
            for a, c in zip(averaged, current, strict=True):
                group = groups.setdefault((a.device, a.dtype), ([], []))
                group[0].append(a)
                group[1].append(c)
            for a, c in groups.values():
                self.multi_avg_fn(a, c, self.updates)
        self.updates += 1
        self.n_averaged.fill_(self.updates)                                # on the CPU: no transfer

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self.updates = int(self.n_averaged)                                # a CPU tensor: no transfer
        return result


def warmup_cosine_lr(step: int, steps: int, lr: float, warmup: int, final_frac: float = 0.1) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` down to ``final_frac * lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (final_frac + (1 - final_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


@dataclass
class TrainResult:
    model: nn.Module                 # raw weights
    ema_model: nn.Module             # the averaged weights (use these to sample)
    losses: list[float]              # one per step, the whole run (including before a resume)
    step: int
    seconds: float                   # wall time of this call
    items_per_s: float               # training examples per second in this call
    loss_by_t: dict[str, list[float]] = field(default_factory=dict)  # {"t_mid": [...], "loss": [...]}
    out: Path | None = None
    resumed_from: int = 0


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, mininterval=1.0, leave=True)


def fit(model: nn.Module, loss_fn: Callable[..., Any], get_batch: Callable[[torch.Generator], Any], *,
        steps: int, lr: float, warmup_steps: int, batch_size: int, ema_decay: float, config: dict,
        meta: dict | None = None, out: str | Path | None = None, checkpoint_every: int = 0,
        runtime: Runtime | None = None, grad_clip: float = 1.0, weight_decay: float = 0.0, seed: int = 0,
        export: Callable[[nn.Module, Path], None] | None = None, desc: str = "training",
        progress: bool = True, t_bins: int = 10, T: int | None = None, stop_after: int | None = None,
        guide_step: int | None = None, rng_device: torch.device | str | None = None,
        batch_rng_device: torch.device | str | None = None, sync_every: int | None = None) -> TrainResult:
    """Train ``model`` with AdamW, warm-up + cosine LR, gradient clipping, EMA and mixed precision.

    Args:
        loss_fn: ``loss_fn(model, batch, generator)`` returning the scalar loss, or ``(loss, extras)``
            where ``extras`` may hold ``"t"`` (B,) and ``"per_example"`` (B,) to break the loss down by t.
        get_batch: ``get_batch(generator)`` returning a batch already on the device.
        steps: total optimizer steps of the whole run (a resumed run stops at the same total).
        config: the model config (JSON-able). Resuming requires the saved one to be equal.
        meta: more JSON-able facts saved with the checkpoint (profile, data source, kind, ...).
        out: checkpoint folder; resumes from it when it holds a checkpoint of the same run.
        checkpoint_every: also write a checkpoint every this many steps (0: only at the end).
        export: how to write the EMA model's ``config.json`` + ``model.safetensors`` (default: ours).
        T: number of diffusion steps, to bin ``extras["t"]`` (loss by t).
        stop_after: stop (with a checkpoint) after this many steps in this call: for demos and tests.
        guide_step: keep a copy of the EMA weights as they were after this step, saved with every later
            checkpoint as ``guide.safetensors``: the weaker, earlier self that autoguidance steers away
            from (``guidance.autoguided``). It costs no training at all.
        rng_device: where the generator handed to ``get_batch`` and ``loss_fn`` lives (default: the CPU).
            On a GPU, a generator there lets a step draw its batch and noise without copying from the host.
        batch_rng_device: where the generator handed to ``get_batch`` lives, when it must differ from
            ``rng_device`` (default: the same generator for both). Captions are drawn on the host with a CPU
            generator (``captions.random_captions``) while the noise is drawn on the GPU: ``"cpu"`` there.
            Both generators are saved with the checkpoint.
        sync_every: read the losses (and check them for NaN) every this many steps; default 1 on a CPU,
            ``SYNC_EVERY`` on a GPU. They are also read before every checkpoint, so no checkpoint ever holds
            weights trained on a NaN. On a GPU this keeps the loop from waiting for the GPU inside a step.

    Raises:
        ValueError: if ``out`` holds a checkpoint this run cannot resume (``checkpoints.check_resumable``:
            another config, naming the differing field; other k-means clusters in ``meta``; another ``steps``).
            Or ``out`` is a folder training must not write into (``checkpoints.check_training_target``).
        FloatingPointError: when the loss becomes NaN or inf, naming the step and the last good checkpoint.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be a whole number >= 1, got {steps!r}")
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    rt = runtime or get_runtime()
    out = checkpoints.check_training_target(out) if out is not None else None   # before any compute
    model.to(rt.device)
    ema = EMA(model, ema_decay)
    # fused: one kernel for the whole update (on a 2-core CPU too: 2 ms a step instead of 9 for the cpu UNet)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                            fused=rt.device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler("cuda") if rt.use_grad_scaler else None
    gen = torch.Generator(device=rng_device or "cpu").manual_seed(seed)                 # loss_fn's (noise)
    batch_gen = gen                                                                     # get_batch's
    if batch_rng_device is not None and torch.device(batch_rng_device) != gen.device:
        batch_gen = torch.Generator(device=batch_rng_device).manual_seed(seed)
    losses: list[float] = []
    # the loss by t: summed on the host in numpy's float64, and between two reads on the device in float32
    # (Apple's mps has no float64)
    bins = np.zeros(t_bins), np.zeros(t_bins)
    start, prior_seconds = 0, 0.0
    training = {"config": config, **(meta or {}), "steps": steps, "lr": lr, "warmup_steps": warmup_steps,
                "batch_size": batch_size, "ema_decay": ema_decay, "seed": seed}
    if guide_step is not None:
        if not 0 < guide_step < steps:
            raise ValueError(f"guide_step must be between 0 and steps={steps} (exclusive), got {guide_step}")
        training["guide_step"] = guide_step
    guide: dict[str, torch.Tensor] | None = None          # the EMA weights after guide_step, once reached

    saved = checkpoints.check_resumable(out, config, steps, meta)      # None: nothing to resume
    if saved is not None:
        rng = checkpoints.load_trainer_state(out, model=model, ema=ema, optimizer=opt)
        guide = store.load_guide_state(out)
        _restore_generator(gen, rng["generator"], seed, start=int(saved["step"]))
        if batch_gen is not gen:
            _restore_generator(batch_gen, rng.get("batch_generator", torch.empty(0)), seed, start=int(saved["step"]))
        torch.set_rng_state(rng["cpu"])
        start = int(saved["step"])
        prior_seconds = float(saved.get("train_seconds", 0.0))
        losses = list(saved.get("losses", []))
        if "loss_by_t_sum" in saved:
            bins = (np.array(saved["loss_by_t_sum"], dtype=np.float64),
                    np.array(saved["loss_by_t_count"], dtype=np.float64))

    train_model = model
    if rt.compile and rt.device.type == "cuda":     # the forward and backward pass; mode: Runtime.compile_mode
        train_model = torch.compile(model, mode=None if rt.compile_mode == "default" else rt.compile_mode)
    graphs = train_model is not model and rt.compile_mode in ("reduce-overhead", "max-autotune")  # CUDA graphs
    last_good = str(out) if (out is not None and store.has_checkpoint(out)) else None

    pending: list[tuple[int, torch.Tensor]] = []       # (step, loss on the device) not yet read
    sync_every = sync_every or (1 if rt.device.type == "cpu" else SYNC_EVERY)
    dev_bins: tuple[torch.Tensor, torch.Tensor] | None = None

    def flush() -> None:
        """Read the pending losses (one transfer), stop at the first NaN or inf, fold in the loss by t."""
        nonlocal dev_bins
        if pending:
            values = torch.stack([v for _, v in pending]).float().cpu().tolist()
            for (s_, _), v in zip(pending, values):
                if not math.isfinite(v):
                    bar.close()
                    raise FloatingPointError(
                        f"the loss became {v} at step {s_}. Last good checkpoint: "
                        f"{last_good or 'none (no checkpoint was written yet)'}. Check the data range and the "
                        f"learning rate (lr={lr}), then resume from that checkpoint.")
            losses.extend(values)
            pending.clear()
        if dev_bins is not None:
            bins[0][:] += dev_bins[0].cpu().numpy()
            bins[1][:] += dev_bins[1].cpu().numpy()
            dev_bins = None

    def save(step: int) -> None:
        nonlocal last_good
        flush()                                        # never checkpoint weights trained on a NaN
        if out is None:
            return
        training.update(step=step, losses=[round(v, 6) for v in losses],
                        train_seconds=round(prior_seconds + time.perf_counter() - t0, 1),
                        loss_by_t_sum=bins[0].tolist(), loss_by_t_count=bins[1].tolist(),
                        device=rt.device.type, precision=rt.precision)
        checkpoints.save_checkpoint(out, model=model, ema=ema, optimizer=opt,
                                    rng={"generator": gen.get_state(), "cpu": torch.get_rng_state(),
                                         **({} if batch_gen is gen else {"batch_generator": batch_gen.get_state()})},
                                    training=training, export=export, guide=guide)
        last_good = str(out)

    end = steps if stop_after is None else min(steps, start + stop_after)
    model.train()
    t0 = time.perf_counter()
    bar = _progress(steps, start, desc, progress)
    step = start
    for step in range(start, end):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine_lr(step, steps, lr, warmup_steps)
        batch = get_batch(batch_gen)
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()    # a new step: the graphs' last outputs may be reused
        with autocast(rt):
            res = loss_fn(train_model, batch, gen)
        loss, extras = (res if isinstance(res, tuple) else (res, {}))
        pending.append((step, loss.detach()))
        if len(pending) >= sync_every:
            flush()                                    # on a CPU every step: a NaN stops before its update
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        ema.update_parameters(model)
        if guide_step is not None and step + 1 == guide_step:
            guide = {k: v.detach().cpu().clone() for k, v in ema.module.state_dict().items()}
        if T and "t" in extras and "per_example" in extras:
            t_ = extras["t"].detach()
            if dev_bins is None:
                dev_bins = (torch.zeros(t_bins, device=t_.device), torch.zeros(t_bins, device=t_.device))
            b = (t_ * t_bins // T).clamp(max=t_bins - 1)
            dev_bins[0].index_add_(0, b, extras["per_example"].detach().float())
            dev_bins[1].index_add_(0, b, torch.ones_like(b, dtype=torch.float32))
        done = step + 1 - start
        if (done % 10 == 0 or step + 1 == end) and losses:
            rate = done * batch_size / (time.perf_counter() - t0)
            recent = losses[-50:]
            bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", img_s=f"{rate:.0f}")
        bar.update(1)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < end:
            save(step + 1)
    flush()
    if rt.device.type == "cuda":
        torch.cuda.synchronize(rt.device)
    bar.close()
    seconds = time.perf_counter() - t0
    n_done = (end - start)
    if n_done > 0 or (out is not None and not store.has_checkpoint(out)):
        save(end)
    model.eval()
    ema.module.eval()
    by_t = {}
    if bins[1].sum() > 0:
        centers = ((torch.arange(t_bins) + 0.5) * (T or t_bins) / t_bins).tolist()
        by_t = {"t_mid": centers, "loss": (bins[0] / np.maximum(bins[1], 1)).tolist()}
    return TrainResult(model, ema.module, losses, end, seconds,
                       n_done * batch_size / seconds if seconds > 0 and n_done else 0.0, by_t, out, start)


def _restore_generator(gen: torch.Generator, state: torch.Tensor, seed: int, start: int) -> None:
    """Restore the trainer's generator; a state saved on another device (a GPU run resumed on a CPU, say)
    cannot be, so the generator is re-seeded from (seed, step): the run goes on, just not bit-identically."""
    try:
        gen.set_state(state)
    except RuntimeError:
        import warnings
        warnings.warn(f"the checkpoint's random state comes from another device than {gen.device}: "
                      f"re-seeding at step {start}, so this resumed run will not repeat an uninterrupted one "
                      f"exactly", stacklevel=3)
        gen.manual_seed(seed * 1_000_003 + start)


def plot_losses(result: TrainResult | dict, smooth: int = 50):
    """The loss curve (raw and smoothed) and, when available, the loss broken down by t."""
    import matplotlib.pyplot as plt
    losses = result.losses if isinstance(result, TrainResult) else result["losses"]
    by_t = result.loss_by_t if isinstance(result, TrainResult) else _by_t_from_training(result)
    ncols = 2 if by_t else 1
    fig, axes = plt.subplots(1, ncols, figsize=(5 * ncols, 3.2), squeeze=False)
    ax = axes[0, 0]
    ax.plot(losses, alpha=0.3, label="per step")
    if len(losses) >= smooth:
        k = torch.ones(smooth) / smooth
        sm = torch.nn.functional.conv1d(torch.tensor(losses).view(1, 1, -1), k.view(1, 1, -1)).flatten()
        ax.plot(range(smooth - 1, len(losses)), sm.tolist(), label=f"mean of {smooth}")
    ax.set(xlabel="step", ylabel="loss", yscale="log", title="training loss")
    ax.legend()
    if by_t:
        axes[0, 1].bar(by_t["t_mid"], by_t["loss"], width=0.8 * (by_t["t_mid"][1] - by_t["t_mid"][0]))
        axes[0, 1].set(xlabel="t", ylabel="mean loss", title="loss by timestep t")
    fig.tight_layout()
    return fig


def _by_t_from_training(training: dict) -> dict:
    if "loss_by_t_sum" not in training:
        return {}
    s, c = training["loss_by_t_sum"], training["loss_by_t_count"]
    if not sum(c):
        return {}
    n = len(s)
    T = training.get("config", {}).get("T", n)
    return {"t_mid": [(i + 0.5) * T / n for i in range(n)], "loss": [a / max(b, 1) for a, b in zip(s, c)]}
