"""The speedrun (issue 38): from nothing to good digits against the clock, one curve per recipe.

Every recipe trains from nothing through ``loop.fit`` (``training/speedrun.py``: lesson 05's pixel class model,
lesson 12's pixel flow model, lesson 11's latent model, a latent flow model, and the speedrun preset with one
lever changed at a time), for ``--budget`` seconds of training. Every ``--every`` seconds of training (the
measuring itself off the clock: ``speedrun.Every``) its EMA model draws ``--n`` digits, labels 0-9 in turn,
from fixed start noises (seed 0), with its sampling defaults; the course classifier reads them: accuracy of
the asked-for digit, and FID in its features beside the real-vs-real floor at the same N
(``measures.metrics.evaluate_samples``). After the last step: the same at ``--final-n``. The target is
accuracy >= 99 % AND FID <= 2x the floor; each curve records when it first gets there.

The levers that change only speed (``channels_last``, ``torch.compile``) are timed as training-step rates
(``--rate-steps`` steps after a warm-up), not as curves: they do not change what a step computes.

The limit: the machine's FLOP rate for the recipe's own convolutions (each conv of the UNet timed alone at its
training shape, forward) and for a large fp32 matrix product, the recipe's FLOPs per training image
(``speedrun.flops_per_image``: forward and backward), and so the fraction of each rate a training step reaches.

    python bench/speedrun.py --profile cpu --threads 2 [--budget 150] [--curves a,b] [--no-rates]
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from course_lib.measures.metrics import evaluate_samples, real_images  # noqa: E402
from course_lib.registry import get_model  # noqa: E402
from course_lib.training import speedrun  # noqa: E402

TARGET_ACCURACY, TARGET_FID_RATIO = 0.99, 2.0


def study(profile) -> dict[str, speedrun.SpeedrunRecipe]:
    """The curves: the lessons' recipes at the speedrun's UNet size, the preset, and the preset with one lever
    changed."""
    base = speedrun.recipe_config(profile)
    out = {name: dataclasses.replace(base, **changes) for name, changes in speedrun.STUDY_BASES.items()}
    out["speedrun preset"] = base
    levers = {
        "uniform t": dict(time="uniform"),
        "Min-SNR 5": dict(min_snr_gamma=5.0),
        "lr 2e-3": dict(lr=2e-3),
        "lr 8e-3": dict(lr=8e-3),
        "warm-up 200": dict(warmup=200),
        "EMA 0.99": dict(ema_decay=0.99),
        "batch 64": dict(batch=64),
        "batch 128": dict(batch=128),
        "narrower 16-32": dict(channels=(16, 32)),
        "wider 48-96": dict(channels=(48, 96)),
        "deeper 2 blocks": dict(blocks=2),
    }
    for name, changes in levers.items():
        out[f"preset + {name}"] = dataclasses.replace(base, **changes)
    return out


class Stepper:
    """Training steps of one recipe as ``fit`` takes them (forward, backward, fused AdamW), to time its rate."""

    def __init__(self, recipe, profile, rt, autoencoder=None):
        self.recipe = recipe
        self.run = speedrun.build_run(recipe, profile, rt, autoencoder=autoencoder)
        self.opt = torch.optim.AdamW(self.run.model.parameters(), lr=recipe.lr, fused=True)
        self.g = torch.Generator().manual_seed(0)

    def steps(self, k: int) -> float:
        """Seconds for ``k`` steps."""
        t0 = time.perf_counter()
        for _ in range(k):
            loss, _ = self.run.loss_fn(self.run.model, self.run.get_batch(self.g), self.g)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return time.perf_counter() - t0


def step_rate(recipe, profile, rt, steps: int, warmup: int = 3, autoencoder=None) -> dict:
    """Training images per second of ``recipe``: ``steps`` timed steps after ``warmup`` untimed ones."""
    st = Stepper(recipe, profile, rt, autoencoder)
    first = st.steps(warmup)
    secs = st.steps(steps)
    return {"images_per_s": round(steps * recipe.batch / secs, 1), "warmup_s": round(first, 2),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def lever_rates(profile, rt, steps: int, rounds: int, autoencoder) -> dict:
    """The training rate of the preset and of each lever that changes the cost of a step, timed in
    interleaved rounds (each round: ``steps`` steps of every variant), so a change of load hits them all alike.
    The median round is kept; FLOPs per image from ``speedrun.flops_per_image``."""
    base = speedrun.recipe_config(profile)
    variants = {"preset": base, "channels_last": dataclasses.replace(base, channels_last=True),
                "torch.compile": dataclasses.replace(base, compile=True),
                "batch 64": dataclasses.replace(base, batch=64), "batch 128": dataclasses.replace(base, batch=128),
                "narrower 16-32": dataclasses.replace(base, channels=(16, 32)),
                "wider 48-96": dataclasses.replace(base, channels=(48, 96)),
                "deeper 2 blocks": dataclasses.replace(base, blocks=2),
                "latent (4x7x7, same UNet widths)": dataclasses.replace(base, space="latent"),
                "noise target (eps)": dataclasses.replace(base, objective="eps")}
    out, steppers = {}, {}
    for name, r in variants.items():
        try:
            st = Stepper(r, profile, rt, autoencoder)
            warm = st.steps(3)                              # includes torch.compile's compilation
        except Exception as e:                              # e.g. compile without a C++ compiler: say why
            out[name] = {"error": str(e).splitlines()[0][:200]}
            continue
        steppers[name] = st
        out[name] = {"first_3_steps_s": round(warm, 2), "seconds": [],
                     "prepare_s": round(st.run.prepare_seconds, 2)}
        print(f"rate {name}: first 3 steps {warm:.1f} s", flush=True)
    for _ in range(rounds):
        for name, st in steppers.items():
            out[name]["seconds"].append(st.steps(steps))
    for name, st in steppers.items():
        secs = sorted(out[name]["seconds"])[len(out[name]["seconds"]) // 2]
        flops = speedrun.flops_per_image(st.recipe, profile)["total"]
        ips = steps * st.recipe.batch / secs
        out[name].update(images_per_s=round(ips, 1), steps_per_s=round(steps / secs, 2),
                         flops_per_image=flops, gflops_per_s=round(flops * ips / 1e9, 2),
                         seconds=[round(v, 3) for v in out[name]["seconds"]])
        print(f"rate {name}: {ips:.0f} images/s, {flops * ips / 1e9:.1f} GFLOP/s", flush=True)
    out["_load_average_after"] = [round(v, 2) for v in os.getloadavg()]
    out["_steps_per_round"], out["_rounds"] = steps, rounds
    return out


def conv_rate(recipe, profile, batch: int, seconds: float = 0.5) -> dict:
    """The machine's FLOP rate on this recipe's own convolutions: each Conv2d of its UNet timed alone (forward,
    fp32) at the shape it sees in training, FLOPs 2 * out elements * (in channels / groups) * k * k."""
    net = speedrun.unet_from_config(speedrun.speedrun_config(recipe, profile)).eval()
    shapes = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape, o.numel())))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    shape = (4, 7, 7) if recipe.space == "latent" else (1, 28, 28)
    with torch.no_grad():
        net(torch.randn(batch, *shape), torch.rand(batch) * 999, torch.arange(batch) % 10)
    for h in hooks:
        h.remove()
    total_flops = total_s = 0.0
    fmt = torch.channels_last if recipe.channels_last else torch.contiguous_format
    with torch.no_grad():
        for m, in_shape, out_numel in shapes:
            x = torch.randn(in_shape).contiguous(memory_format=fmt)
            w = m.weight.contiguous(memory_format=fmt)
            flops = 2 * out_numel * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
            F.conv2d(x, w, m.bias, m.stride, m.padding)
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds / len(shapes) or n < 3:
                F.conv2d(x, w, m.bias, m.stride, m.padding)
                n += 1
            total_s += (time.perf_counter() - t0) / n
            total_flops += flops
    return {"convs": len(shapes), "memory_format": "channels_last" if recipe.channels_last else "contiguous",
            "flops_per_forward_batch": total_flops, "gflops_per_s": round(total_flops / total_s / 1e9, 2)}


def matmul_rate(size: int = 1024, seconds: float = 1.0) -> float:
    """GFLOP/s of a square fp32 matrix product (the machine's practical peak for dense work)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n < 3:
        a @ b
        n += 1
    return round(2 * size ** 3 * n / (time.perf_counter() - t0) / 1e9, 2)


def curve(name, recipe, profile, rt, clf, real_n, real_final, n, final_n, budget, every, autoencoder, probe_steps):
    """One recipe from nothing: steps for ``budget`` seconds at its probed rate, measured every ``every`` s."""
    probe = step_rate(recipe, profile, rt, probe_steps, autoencoder=autoencoder)
    steps = max(50, int(budget * probe["images_per_s"] / recipe.batch))
    run = speedrun.build_run(recipe, profile, rt, autoencoder=autoencoder)
    labels, labels_final = torch.arange(n) % 10, torch.arange(final_n) % 10

    def measure(model, train_s, step, final=False):
        lab, real = (labels_final, real_final) if final else (labels, real_n)
        t0 = time.perf_counter()
        x = run.sample(model, lab, seed=0)
        ev = evaluate_samples(clf, x, lab, real)
        rec = {"accuracy": round(ev["accuracy"], 4), "fid": round(ev["fid"], 3), "fid_floor": round(ev["fid_floor"], 3),
               "fid_ratio": round(ev["fid"] / ev["fid_floor"], 3), "confident": round(ev["confident"], 4),
               "n": len(lab), "measure_s": round(time.perf_counter() - t0, 1),
               "load_average_1min": round(os.getloadavg()[0], 2)}
        print(f"  {name}: {train_s:6.1f} s, step {step}: accuracy {rec['accuracy']:.1%}, FID {rec['fid']:.2f} "
              f"({rec['fid_ratio']:.2f}x floor), load {rec['load_average_1min']}", flush=True)
        return rec

    hook = speedrun.Every(every, measure, at_end=False)
    res = speedrun.run_fit(run, profile, rt, steps=steps, progress=False, hooks=[hook])
    final = measure(res.ema_model, round(res.seconds - hook.paused, 2), steps, final=True)
    points = hook.records
    reached = next((p for p in points if p["accuracy"] >= TARGET_ACCURACY
                    and p["fid_ratio"] <= TARGET_FID_RATIO), None)
    return {"name": name, "recipe": {**dataclasses.asdict(recipe), "channels": list(recipe.channels)},
            "probe": probe, "steps": steps, "train_s": round(res.seconds - hook.paused, 2),
            "images_per_s": round(steps * recipe.batch / (res.seconds - hook.paused), 1),
            "prepare_s": round(run.prepare_seconds, 2), "points": points,
            "final": {"train_s": round(res.seconds - hook.paused, 2), "step": steps, **final},
            "first_at_target_s": reached["train_s"] if reached else None,
            "final_at_target": final["accuracy"] >= TARGET_ACCURACY and final["fid_ratio"] <= TARGET_FID_RATIO}


def plot(curves, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for c in curves:
        pts = c["points"] + [c["final"]]
        xs = [p["train_s"] for p in pts]
        a.plot(xs, [100 * p["accuracy"] for p in pts], marker=".", label=c["name"])
        b.plot(xs, [p["fid_ratio"] for p in pts], marker=".", label=c["name"])
    a.axhline(100 * TARGET_ACCURACY, color="k", ls="--", lw=0.8)
    b.axhline(TARGET_FID_RATIO, color="k", ls="--", lw=0.8)
    a.set(xlabel="training seconds (last point: N = 1,000)", ylabel="asked-for digit read (%)", ylim=(0, 101))
    b.set(xlabel="training seconds (last point: N = 1,000)", ylabel="FID / same-N floor", yscale="log")
    b.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return sorted(f for f in line.split(":", 1)[1].split()
                              if f.startswith(("avx", "amx", "fma", "sse4", "f16c")))
    except OSError:
        pass
    return []


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def measure_folder(folder: Path, args, profile, rt, clf) -> int:
    """The registered model as ``train speedrun`` left it: its pipeline, its defaults, N = ``--final-n``."""
    from course_lib import load_pipeline, store
    pipe = load_pipeline(folder, rt.device)
    labels = torch.arange(args.final_n) % 10
    t0 = time.perf_counter()
    x = pipe(labels=labels, seed=0)
    sample_s = time.perf_counter() - t0
    ev = evaluate_samples(clf, x, labels, real_images(profile, args.final_n))
    tr = store.read_training(folder)
    ratio = ev["fid"] / ev["fid_floor"]
    rec = {"folder": str(folder), "steps": tr["step"], "batch_size": tr["batch_size"],
           "train_seconds": tr.get("train_seconds"), "command_wall_s": args.wall_s, "sampling": pipe.sampling,
           "n": args.final_n, "accuracy": round(ev["accuracy"], 4), "confident": round(ev["confident"], 4),
           "fid": round(ev["fid"], 3), "fid_floor": round(ev["fid_floor"], 3), "fid_ratio": round(ratio, 3),
           "sampling_s": round(sample_s, 1),
           "target_met": bool(ev["accuracy"] >= TARGET_ACCURACY and ratio <= TARGET_FID_RATIO
                              and (args.wall_s is None or args.wall_s <= 300)),
           "load_average": [round(v, 2) for v in os.getloadavg()]}
    base = speedrun.recipe_config(profile)                 # the limit of the recipe just trained, on this machine
    flops = speedrun.flops_per_image(base, profile)["total"]
    convs, mm = conv_rate(base, profile, base.batch), matmul_rate()
    achieved = flops * tr["step"] * tr["batch_size"] / tr["train_seconds"] / 1e9 if tr.get("train_seconds") else None
    rec["limit"] = {"flops_per_training_image": flops, "conv_gflops_per_s": convs["gflops_per_s"],
                    "conv_memory_format": convs["memory_format"], "matmul_1024_gflops_per_s": mm,
                    "training_gflops_per_s": round(achieved, 2) if achieved else None,
                    "fraction_of_conv_rate": round(achieved / convs["gflops_per_s"], 3) if achieved else None,
                    "fraction_of_matmul_rate": round(achieved / mm, 3) if achieved else None,
                    "threads": torch.get_num_threads()}
    print(f"registered run: {rec}")
    path = common.RESULTS / f"speedrun-{profile.name}.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    if "machine" in old:
        old["curves_machine"], old["curves_date"] = old.pop("machine"), old.pop("date", None)
    old.pop("benchmark", None), old.pop("profile", None)
    common.save("speedrun", profile, rt, {**old, "registered_run": rec})
    return 0


def extra(p) -> None:
    p.add_argument("--budget", type=float, default=150.0, help="training seconds per curve (default 150)")
    p.add_argument("--every", type=float, default=30.0, help="measure every this many training seconds")
    p.add_argument("--n", type=int, default=500, help="digits per measurement inside a run (default 500)")
    p.add_argument("--final-n", type=int, default=1_000, help="digits of the last measurement (default 1,000)")
    p.add_argument("--curves", default="", help="comma-separated curve names (default: all; none: only the rates; see --list)")
    p.add_argument("--list", action="store_true", help="print the curve names and exit")
    p.add_argument("--probe-steps", type=int, default=10, help="steps timed to set each curve's steps")
    p.add_argument("--rate-steps", type=int, default=10, help="steps per round of the rates (default 10)")
    p.add_argument("--rate-rounds", type=int, default=3, help="interleaved rounds of the rates (default 3)")
    p.add_argument("--no-rates", action="store_true", help="skip the speed-only levers and the FLOP limit")
    p.add_argument("--merge", action="store_true", help="keep the curves already in the JSON, replacing those run")
    p.add_argument("--measure-folder", help="instead: measure this finished speedrun folder through its pipeline "
                   "(load_pipeline, the folder's sampling defaults) at --final-n, and record it in the JSON")
    p.add_argument("--wall-s", type=float, help="with --measure-folder: the wall time of the `train` command")


def main() -> int:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    curves_all = study(profile)
    if args.list:
        print("\n".join(curves_all))
        return 0
    names = [c.strip() for c in args.curves.split(",") if c.strip()] if args.curves != "none" else []
    names = names or ([] if args.curves == "none" else list(curves_all))
    unknown = [c for c in names if c not in curves_all]
    if unknown:
        raise SystemExit(f"error: unknown curve {unknown[0]!r}: choose from {', '.join(curves_all)}")
    if args.n < 2 or args.final_n < 2 or args.budget <= 0 or args.every <= 0:
        raise SystemExit("error: --n and --final-n must be >= 2, --budget and --every > 0")
    clf = get_model("classifier", profile, rt, progress=False)
    if args.measure_folder:
        return measure_folder(Path(args.measure_folder), args, profile, rt, clf)
    ae = None
    if any(curves_all[c].space == "latent" for c in names):
        ae = get_model("autoencoder", profile, rt, progress=False)
    real_n, real_final = real_images(profile, args.n), real_images(profile, args.final_n)
    path = common.RESULTS / f"speedrun-{profile.name}.json"
    old = json.loads(path.read_text()) if (args.merge and path.is_file()) else {}
    done = {c["name"]: c for c in old.get("curves", [])}
    for name in names:
        print(f"{name}: training for {args.budget:.0f} s", flush=True)
        done[name] = curve(name, curves_all[name], profile, rt, clf, real_n, real_final, args.n, args.final_n,
                           args.budget, args.every, ae, args.probe_steps)
    curves = [done[n] for n in curves_all if n in done]
    result = {"targets": {"accuracy": TARGET_ACCURACY, "fid_over_floor": TARGET_FID_RATIO, "n_inside": args.n,
                          "n_final": args.final_n},
              "cpu_model": cpu_model(), "cpu_flags": cpu_flags(), "budget_s": args.budget, "every_s": args.every,
              "curves": curves,
              "time_to_target_s": {c["name"]: c["first_at_target_s"] for c in curves}}
    if not args.no_rates:
        base = speedrun.recipe_config(profile)
        if ae is None:
            ae = get_model("autoencoder", profile, rt, progress=False)
        rates = lever_rates(profile, rt, args.rate_steps, args.rate_rounds, ae)
        flops = speedrun.flops_per_image(base, profile)
        convs = conv_rate(base, profile, base.batch)
        mm = matmul_rate()
        achieved = rates["preset"]["gflops_per_s"]
        result["speed_levers"] = rates
        result["limit"] = {"flops_per_training_image": flops["total"], "flops_by_operator": flops["by_operator"],
                           "conv_gflops_per_s": convs["gflops_per_s"], "matmul_1024_gflops_per_s": mm,
                           "training_step_gflops_per_s": achieved,
                           "fraction_of_conv_rate": round(achieved / convs["gflops_per_s"], 3),
                           "fraction_of_matmul_rate": round(achieved / mm, 3),
                           "load_average": [round(v, 2) for v in os.getloadavg()]}
        print(f"limit: {result['limit']}", flush=True)
    for key, value in old.items():                      # --merge: what this run did not measure is kept
        if key not in ("benchmark", "profile", "date", "machine"):
            result.setdefault(key, value)
    common.save("speedrun", profile, rt, result)
    plot(curves, common.RESULTS / f"speedrun-{profile.name}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
