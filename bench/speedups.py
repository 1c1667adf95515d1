"""Benchmark: what each GPU lever gives the denoiser's training step, one lever added at a time.

    1. fp32, data on the host: the batch is indexed on the CPU and copied to the GPU every step, and the
       step's random numbers are drawn on the CPU (what a plain DataLoader loop does)
    2. + the whole dataset resident on the GPU, random numbers drawn there (``load_mnist(device=...)``)
    3. + bf16 autocast
    4. + ``torch.compile`` (mode "default": fused kernels)
    5. + CUDA graphs (``torch.compile`` mode "reduce-overhead", what ``COURSE_COMPILE=1`` uses)

Every configuration trains the profile's denoiser (same UNet, batch, loss, EMA and optimizer as
``models.train_denoiser``) through ``train.fit``: first a warm-up call (cuDNN autotuning; for 4 the
compilation, timed and reported), then a timed call of --steps steps. The JSON records images/s for each, and
each lever's speed-up over the configuration before it.

    python bench/speedups.py [--profile gpu] [--steps 300]
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from course_lib.config import Runtime  # noqa: E402
from course_lib.data.mnist import batch_indices, load_mnist  # noqa: E402
from course_lib.diffusion.forward import simple_loss  # noqa: E402
from course_lib.networks.unet import unet_from_config  # noqa: E402
from course_lib.training.denoiser import denoiser_config  # noqa: E402
from course_lib.diffusion.schedules import make_schedule  # noqa: E402
from course_lib.training.loop import fit  # noqa: E402
from course_lib.training.denoiser import recipe_config as denoiser_recipe  # noqa: E402

LEVERS = (  # name, data on the device, autocast dtype, torch.compile mode (None: eager)
    ("fp32, data on the host", False, None, None),
    ("+ data resident on the GPU", True, None, None),
    ("+ bf16 autocast", True, torch.bfloat16, None),
    ("+ torch.compile", True, torch.bfloat16, "default"),
    ("+ CUDA graphs (reduce-overhead)", True, torch.bfloat16, "reduce-overhead"),
)


def extra(p):
    p.add_argument("--steps", type=int, default=300, help="timed steps per configuration (default 300)")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (default 30)")


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    if rt.device.type != "cuda":
        raise SystemExit("bench/speedups.py measures GPU levers: run it on a machine with CUDA")
    cfg = denoiser_config(profile)
    batch = cfg["batch_size"]
    x_host, _ = load_mnist("train", profile=profile, quiet=True)
    x_dev = x_host.to(rt.device)
    schedule = make_schedule(profile.schedule, profile.T, rt.device)

    def loss_fn(m, x0, g):
        return simple_loss(m, x0, schedule, generator=g, min_snr_gamma=cfg.get("min_snr_gamma"), return_parts=True)

    rows, previous = {}, None
    for name, resident, dtype, mode in LEVERS:
        run_rt = Runtime(rt.device, dtype, False, mode is not None, mode or "reduce-overhead")
        if resident:
            def get_batch(g):
                return x_dev[batch_indices(len(x_dev), batch, g, rt.device)]
        else:
            def get_batch(g):                                        # g lives on the CPU here
                return x_host[batch_indices(len(x_host), batch, g)].to(rt.device)
        torch.manual_seed(0)
        model = unet_from_config(cfg)
        common_kw = dict(lr=denoiser_recipe(profile).lr, warmup_steps=profile.warmup_steps, batch_size=batch,
                         ema_decay=profile.ema_decay, config=cfg, runtime=run_rt,
                         rng_device=rt.device if resident else None)
        warm = fit(model, loss_fn, get_batch, steps=args.warmup, **common_kw)
        timed = fit(model, loss_fn, get_batch, steps=args.steps, **common_kw)
        row = {"images_per_s": round(timed.items_per_s, 1), "warmup_call_s": round(warm.seconds, 1),
               "timed_steps": args.steps, "precision": run_rt.precision, "compile": mode or False,
               "data_on_gpu": resident}
        if previous is not None:
            row["speedup_over_previous"] = round(timed.items_per_s / previous, 2)
        previous = timed.items_per_s
        rows[name] = row
        print(f"{name:<28} {row['images_per_s']:>10.1f} images/s  (warm-up call {row['warmup_call_s']} s)"
              + (f"  x{row['speedup_over_previous']}" if "speedup_over_previous" in row else ""), flush=True)
    first, last = rows[LEVERS[0][0]], rows[LEVERS[-1][0]]
    common.save("speedups", profile, rt, {
        "batch_size": batch, "levers": rows,
        "total_speedup": round(last["images_per_s"] / first["images_per_s"], 2),
        "note": "images/s of the denoiser's training step (forward, backward, AdamW, EMA) through train.fit, "
                "after a warm-up call; each row adds one lever to the row before"})


if __name__ == "__main__":
    main()
