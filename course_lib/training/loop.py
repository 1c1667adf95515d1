"""One training loop for every model in the course (denoiser, class model, metrics classifier, CLIP,
text-to-image). It knows nothing about diffusion: a model, a loss function and a way to draw a batch.

    for step in range(start, steps):
        lr = warmup_cosine(step)                      # linear warm-up, then cosine decay to 10 %
        batch = get_batch(generator)                   # random indices into data already on the device
        loss = loss_fn(model, batch, generator)        # under autocast (bf16 / fp16 / fp32)
        loss.backward(); clip_grad_norm_(1.0); AdamW.step()
        ema.update_parameters(model)                   # EMA, decay warmed up, its count kept in Python
        hook.after_step(...) for each hook             # progress bar, loss by t, guide snapshot
        every N steps and at the end: atomic checkpoint

AdamW is fused (one kernel for the whole update, on a CPU too). On a GPU the loop is kept from waiting on
the GPU: the noise generator lives there (``rng_device``; captions, drawn on the host, get a CPU generator of
their own: ``batch_rng_device``), the losses are read every ``SYNC_EVERY`` steps rather than every step, and
the EMA updates all tensors in one go, counting its updates in Python (torch's ``AveragedModel`` copies its
counter between host and GPU at every update). The other waits: each checkpoint (it reads the losses and
copies the weights to the host), the guide copy (``GuideSnapshot``), and whatever a ``get_batch`` copies from
the host (the CLIP and text-to-image batches are built there, then copied from pinned memory without
waiting). With fp16 (a T4) the grad scaler hands its inf check to the fused AdamW, which waits for nothing.
With ``COURSE_COMPILE=1`` the forward and backward pass run as CUDA graphs (``config.Runtime``).

Whatever else a run does is a hook (``Hook``, passed in ``fit(hooks=[...])``): the progress bar
(``ProgressBar``), the loss broken down by t (``LossByT``) and the EMA weights kept early for autoguidance
(``GuideSnapshot``). The loop itself stays the recipe above.

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
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from .. import store
from ..config import Runtime, autocast, get_runtime
from . import checkpoints

SYNC_EVERY = 25          # on a GPU, read the losses (and check them for NaN) every this many steps
                         # (the loop's only regular wait for the GPU: see the module docstring for the others)
GRAD_CLIP = 1.0          # the gradient's global norm is clipped to this (every model of the course)
WEIGHT_DECAY = 0.0       # AdamW's decoupled weight decay: none (the course's models are small and EMA-averaged)

__all__ = ["TrainResult", "fit", "Hook", "Run", "LossByT", "GuideSnapshot", "ProgressBar", "EMA",
           "ema_avg_fn", "ema_multi_avg_fn", "warmup_cosine_lr"]


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


# ------------------------------------------------------------------------------------------------ hooks
@dataclass
class Run:
    """What a hook sees of the run ``fit`` is making (read it; only ``training`` may be written to)."""
    steps: int                       # the whole run's
    start: int                       # the step this call starts at (> 0 after a resume)
    end: int                         # the step this call stops at
    batch_size: int
    out: Path | None
    ema: "EMA"
    losses: list[float]              # read so far (the whole run's, including before a resume)
    saved: dict | None               # the training record resumed from, or None
    training: dict                   # the record written to training.json at every checkpoint
    t0: float = 0.0                  # when this call's first step began (time.perf_counter)


class Hook:
    """Something ``fit`` calls at fixed points of a run. Every method does nothing here: override the ones
    you need. ``fit`` calls them in the order of its ``hooks`` list.

        start(run)                     before the first step, after a resume restored the loop's state
        after_step(run, step, extras)  after step ``step`` (0-based) updated the weights and the EMA;
                                       ``extras`` is what ``loss_fn`` returned beside the loss
        sync(run)                      when ``fit`` reads the losses back from the device (and before saving)
        record(run) -> dict            entries for ``training.json``, at every checkpoint
        tensors(run) -> dict           state dicts for ``save_checkpoint`` (``{"guide": ...}``), every checkpoint
        finish(run, result)            after the last step; may fill in the ``TrainResult``
        close()                        always, last, even when the run stops on an error
    """

    def start(self, run: Run) -> None: ...

    def after_step(self, run: Run, step: int, extras: dict) -> None: ...

    def sync(self, run: Run) -> None: ...

    def record(self, run: Run) -> dict:
        return {}

    def tensors(self, run: Run) -> dict:
        return {}

    def finish(self, run: Run, result: "TrainResult") -> None: ...

    def close(self) -> None: ...


class LossByT(Hook):
    """The loss broken down by timestep: ``bins`` equal bins of t in [0, T), each bin's mean loss, from the
    ``extras["t"]`` (B,) and ``extras["per_example"]`` (B,) that ``loss_fn`` returns. Summed on the host in
    numpy's float64 and, between two reads, on the device in float32 (Apple's mps has no float64); saved in
    ``training.json`` (``loss_by_t_sum``, ``loss_by_t_count``), so a resumed run goes on counting."""

    def __init__(self, T: int, bins: int = 10):
        self.T, self.n = T, bins
        self.sums, self.counts = np.zeros(bins), np.zeros(bins)
        self.dev: tuple[torch.Tensor, torch.Tensor] | None = None

    def start(self, run: Run) -> None:
        if run.saved is not None and "loss_by_t_sum" in run.saved:
            self.sums = np.array(run.saved["loss_by_t_sum"], dtype=np.float64)
            self.counts = np.array(run.saved["loss_by_t_count"], dtype=np.float64)

    def after_step(self, run: Run, step: int, extras: dict) -> None:
        if "t" not in extras or "per_example" not in extras:
            return
        t_ = extras["t"].detach()
        if self.dev is None:
            self.dev = (torch.zeros(self.n, device=t_.device), torch.zeros(self.n, device=t_.device))
        b = (t_ * self.n // self.T).clamp(max=self.n - 1)
        self.dev[0].index_add_(0, b, extras["per_example"].detach().float())
        self.dev[1].index_add_(0, b, torch.ones_like(b, dtype=torch.float32))

    def sync(self, run: Run) -> None:
        if self.dev is not None:
            self.sums[:] += self.dev[0].cpu().numpy()
            self.counts[:] += self.dev[1].cpu().numpy()
            self.dev = None

    def record(self, run: Run) -> dict:
        return {"loss_by_t_sum": self.sums.tolist(), "loss_by_t_count": self.counts.tolist()}

    def finish(self, run: Run, result: "TrainResult") -> None:
        if self.counts.sum() > 0:
            centers = ((torch.arange(self.n) + 0.5) * self.T / self.n).tolist()
            result.loss_by_t = {"t_mid": centers, "loss": (self.sums / np.maximum(self.counts, 1)).tolist()}


class GuideSnapshot(Hook):
    """Keep the EMA weights as they were after step ``step``, saved with every later checkpoint as
    ``guide.safetensors``: the weaker, earlier self that autoguidance steers away from
    (``guidance.autoguided``; Karras et al. 2024). It costs no training at all; a resume carries it along."""

    def __init__(self, step: int):
        self.step = step
        self.state: dict[str, torch.Tensor] | None = None

    def start(self, run: Run) -> None:
        if not 0 < self.step < run.steps:
            raise ValueError(f"guide_step must be between 0 and steps={run.steps} (exclusive), got {self.step}")
        run.training["guide_step"] = self.step
        if run.saved is not None:
            self.state = store.load_guide_state(run.out)

    def after_step(self, run: Run, step: int, extras: dict) -> None:
        if step + 1 == self.step:
            self.state = {k: v.detach().cpu().clone() for k, v in run.ema.module.state_dict().items()}

    def tensors(self, run: Run) -> dict:
        return {"guide": self.state}


class ProgressBar(Hook):
    """A tqdm bar over the whole run (a resumed run starts part-way), with the mean of the last 50 losses and
    the examples per second; nothing when ``enabled`` is False."""

    def __init__(self, desc: str = "training", enabled: bool = True):
        self.desc, self.enabled, self.bar = desc, enabled, None

    def start(self, run: Run) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=run.steps, initial=run.start, desc=self.desc, disable=not self.enabled,
                        mininterval=1.0, leave=True)

    def after_step(self, run: Run, step: int, extras: dict) -> None:
        done = step + 1 - run.start
        if (done % 10 == 0 or step + 1 == run.end) and run.losses:
            rate = done * run.batch_size / (time.perf_counter() - run.t0)
            recent = run.losses[-50:]
            self.bar.set_postfix(loss=f"{sum(recent) / len(recent):.4f}", img_s=f"{rate:.0f}")
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ------------------------------------------------------------------------------------------------ the loop
def fit(model: nn.Module, loss_fn: Callable[..., Any], get_batch: Callable[[torch.Generator], Any], *,
        steps: int, lr: float, warmup_steps: int, batch_size: int, ema_decay: float, config: dict,
        meta: dict | None = None, out: str | Path | None = None, checkpoint_every: int = 0,
        runtime: Runtime | None = None, seed: int = 0, export: Callable[[nn.Module, Path], None] | None = None,
        stop_after: int | None = None, hooks: Sequence[Hook] = (), rng_device: torch.device | str | None = None,
        batch_rng_device: torch.device | str | None = None, sync_every: int | None = None) -> TrainResult:
    """Train ``model`` with AdamW, warm-up + cosine LR, gradient clipping, EMA and mixed precision.

    Args:
        loss_fn: ``loss_fn(model, batch, generator)`` returning the scalar loss, or ``(loss, extras)``;
            ``extras`` goes to the hooks (``LossByT`` reads ``"t"`` and ``"per_example"``).
        get_batch: ``get_batch(generator)`` returning a batch already on the device.
        steps: total optimizer steps of the whole run (a resumed run stops at the same total).
        config: the model config (JSON-able). Resuming requires the saved one to be equal.
        meta: more JSON-able facts saved with the checkpoint (profile, data source, kind, ...).
        out: checkpoint folder; resumes from it when it holds a checkpoint of the same run.
        checkpoint_every: also write a checkpoint every this many steps (0: only at the end).
        export: how to write the EMA model's ``config.json`` + ``model.safetensors`` (default: ours).
        stop_after: stop (with a checkpoint) after this many steps in this call: for demos and tests.
        hooks: what else the run does (``Hook``): ``ProgressBar``, ``LossByT``, ``GuideSnapshot``.
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
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=WEIGHT_DECAY,
                            fused=rt.device.type in ("cuda", "cpu"))
    scaler = torch.amp.GradScaler("cuda") if rt.use_grad_scaler else None
    gen = torch.Generator(device=rng_device or "cpu").manual_seed(seed)                 # loss_fn's (noise)
    batch_gen = gen                                                                     # get_batch's
    if batch_rng_device is not None and torch.device(batch_rng_device) != gen.device:
        batch_gen = torch.Generator(device=batch_rng_device).manual_seed(seed)
    start, prior_seconds, losses = 0, 0.0, []
    training = {"config": config, **(meta or {}), "steps": steps, "lr": lr, "warmup_steps": warmup_steps,
                "batch_size": batch_size, "ema_decay": ema_decay, "seed": seed}

    saved = checkpoints.check_resumable(out, config, steps, meta)      # None: nothing to resume
    if saved is not None:
        rng = checkpoints.load_trainer_state(out, model=model, ema=ema, optimizer=opt)
        _restore_generator(gen, rng["generator"], seed, start=int(saved["step"]))
        if batch_gen is not gen:
            _restore_generator(batch_gen, rng.get("batch_generator", torch.empty(0)), seed, start=int(saved["step"]))
        torch.set_rng_state(rng["cpu"])
        start = int(saved["step"])
        prior_seconds = float(saved.get("train_seconds", 0.0))
        losses = list(saved.get("losses", []))
    end = steps if stop_after is None else min(steps, start + stop_after)
    run = Run(steps=steps, start=start, end=end, batch_size=batch_size, out=out, ema=ema, losses=losses,
              saved=saved, training=training)

    train_model = model
    if rt.compile and rt.device.type == "cuda":     # the forward and backward pass; mode: Runtime.compile_mode
        train_model = torch.compile(model, mode=None if rt.compile_mode == "default" else rt.compile_mode)
    graphs = train_model is not model and rt.compile_mode in ("reduce-overhead", "max-autotune")  # CUDA graphs
    last_good = str(out) if (out is not None and store.has_checkpoint(out)) else None

    pending: list[tuple[int, torch.Tensor]] = []       # (step, loss on the device) not yet read
    sync_every = sync_every or (1 if rt.device.type == "cpu" else SYNC_EVERY)

    def flush() -> None:
        """Read the pending losses (one transfer), stop at the first NaN or inf; then the hooks' sync."""
        if pending:
            values = torch.stack([v for _, v in pending]).float().cpu().tolist()
            for (s_, _), v in zip(pending, values):
                if not math.isfinite(v):
                    raise FloatingPointError(
                        f"the loss became {v} at step {s_}. Last good checkpoint: "
                        f"{last_good or 'none (no checkpoint was written yet)'}. Check the data range and the "
                        f"learning rate (lr={lr}), then resume from that checkpoint.")
            losses.extend(values)
            pending.clear()
        for h in hooks:
            h.sync(run)

    def save(step: int) -> None:
        nonlocal last_good
        flush()                                        # never checkpoint weights trained on a NaN
        if out is None:
            return
        training.update(step=step, losses=[round(v, 6) for v in losses],
                        train_seconds=round(prior_seconds + time.perf_counter() - run.t0, 1))
        tensors: dict = {}
        for h in hooks:
            training.update(h.record(run))
            tensors.update(h.tensors(run))
        training.update(device=rt.device.type, precision=rt.precision)
        checkpoints.save_checkpoint(out, model=model, ema=ema, optimizer=opt,
                                    rng={"generator": gen.get_state(), "cpu": torch.get_rng_state(),
                                         **({} if batch_gen is gen else {"batch_generator": batch_gen.get_state()})},
                                    training=training, export=export, **tensors)
        last_good = str(out)

    try:
        for h in hooks:
            h.start(run)
        model.train()
        run.t0 = time.perf_counter()
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
                nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
                opt.step()
            ema.update_parameters(model)
            for h in hooks:
                h.after_step(run, step, extras)
            if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < end:
                save(step + 1)
        flush()
        if rt.device.type == "cuda":
            torch.cuda.synchronize(rt.device)
        seconds = time.perf_counter() - run.t0
        n_done = (end - start)
        if n_done > 0 or (out is not None and not store.has_checkpoint(out)):
            save(end)
        model.eval()
        ema.module.eval()
        result = TrainResult(model, ema.module, losses, end, seconds,
                             n_done * batch_size / seconds if seconds > 0 and n_done else 0.0, {}, out, start)
        for h in hooks:
            h.finish(run, result)
        return result
    finally:
        for h in hooks:
            h.close()


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
