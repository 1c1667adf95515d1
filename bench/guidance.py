"""Benchmark: classifier-free guidance on the class-conditional model (lesson 05).

For the active profile (``COURSE_PROFILE``, else auto; or ``--profile``) it gets the class model with
``get_model("class", ...)``, training it when missing (and timing that), then, at each guidance scale w in
{0, 1, 2, 3, 5}, draws N = ``profile.n_eval`` samples with labels balanced over 0-9 and records

    accuracy    how often the course classifier recognises the intended label
    fid         classifier-feature FID against N real test digits, next to fid_floor (real vs real, same N)
    seconds     sampling time (DDIM, ``profile.sample_steps`` steps, guided: one doubled batch per step)

plus the unconditional denoiser's FID at the same N when a finished ``denoiser`` model exists (DDIM, a
k-means cluster drawn per sample, no guidance: the mixture sum_c p(c) p(x | c)). Targets:

    cpu   accuracy >= 97 % at some w, with FID at that w no worse than the unconditional model's (N = 1,000)
    gpu   accuracy >= 99.5 % at some w, with FID at that w within 2x the real-vs-real floor (N = 10,000)

Usage:
    python bench/guidance.py [--profile test|cpu|gpu] [--threads K] [--n N] [--train | --no-train]

Writes ``bench/results/guidance-<profile>.json``.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from course_lib.data.clusters import draw_clusters  # noqa: E402
from course_lib.config import Profile, Runtime  # noqa: E402
from course_lib.diffusion.guidance import guided  # noqa: E402
from course_lib.measures.metrics import evaluate_samples, real_images  # noqa: E402
from course_lib.registry import find_matching, get_model  # noqa: E402
from course_lib.diffusion.samplers import sample  # noqa: E402
from course_lib.diffusion.schedules import make_schedule  # noqa: E402

WS = (0.0, 1.0, 2.0, 3.0, 5.0)      # guidance scales (our w: 0 unconditional, 1 conditional)
CHUNK = 1000                        # images per sampling call (the guided batch is twice that)
SEED = 0
TARGETS = {                         # accuracy at some w, and the FID condition at that w
    "cpu": {"accuracy": 0.97, "fid": "<= unconditional FID", "n": 1_000},
    "gpu": {"accuracy": 0.995, "fid": "<= 2 x fid_floor", "n": 10_000},
}


def timed_get(name: str, profile: Profile, rt: Runtime, train: bool) -> tuple[torch.nn.Module, float | None]:
    """``get_model``, and the seconds spent training when the model had to be trained (else None)."""
    had = find_matching(name, profile) is not None
    t0 = time.perf_counter()
    model = get_model(name, profile, rt, train_if_missing=train, progress=True)
    return model, (None if had else round(time.perf_counter() - t0, 1))


@torch.no_grad()
def draw(model, labels: torch.Tensor | None, n: int, profile: Profile, rt: Runtime, schedule
         ) -> tuple[torch.Tensor, float]:
    """n samples in chunks of CHUNK (labels: class labels, clusters or None). Returns (samples on the CPU, seconds)."""
    g = torch.Generator().manual_seed(SEED)
    out = []
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for start in range(0, n, CHUNK):
        cond = None if labels is None else labels[start:start + CHUNK].to(rt.device)
        m = min(CHUNK, n - start)
        out.append(sample(model, m, schedule, steps=profile.sample_steps, generator=g, cond=cond,
                          device=rt.device).cpu())
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return torch.cat(out), time.perf_counter() - t0


def check_targets(profile: Profile, rows: list[dict], uncond: dict | None) -> dict | None:
    """Which w (if any) meets the profile's target; None for profiles without one."""
    target = TARGETS.get(profile.name)
    if target is None:
        return None
    met = []
    for r in rows:
        if r["accuracy"] < target["accuracy"]:
            continue
        if profile.name == "cpu":
            ok = uncond is not None and r["fid"] <= uncond["fid"]
        else:
            ok = r["fid"] <= 2 * r["fid_floor"]
        if ok:
            met.append(r["w"])
    note = None
    if profile.name == "cpu" and uncond is None:
        note = "no finished unconditional 'denoiser' model: the FID part of the target could not be checked"
    best = max(rows, key=lambda r: (r["accuracy"], -r["fid"]))
    return {**target, "met_at_w": met, "passed": bool(met), "best_accuracy_w": best["w"], "note": note}


def extra(p) -> None:
    p.add_argument("--n", type=int, help="samples per w (default: profile.n_eval)")
    p.add_argument("--train", action=argparse.BooleanOptionalAction, default=True,
                   help="train the class model and the classifier when missing (default: yes)")


def main() -> int:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    n = args.n or profile.n_eval
    if n < 2:
        raise SystemExit(f"--n must be at least 2 (FID needs a covariance), got {n}")
    try:
        model, class_train_s = timed_get("class", profile, rt, args.train)
        clf, clf_train_s = timed_get("classifier", profile, rt, args.train)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}\n(run without --no-train to train it)")
    schedule = make_schedule(profile.schedule, profile.T, rt.device)
    real = real_images(profile, n)
    labels = torch.arange(n) % 10                                       # balanced over 0-9

    rows = []
    for w in WS:
        samples, secs = draw(guided(model, w), labels, n, profile, rt, schedule)
        r = evaluate_samples(clf, samples, labels, real)
        rows.append({"w": w, "accuracy": r["accuracy"], "fid": r["fid"], "fid_floor": r["fid_floor"],
                     "confident": r["confident"], "histogram": r["histogram"], "sampling_s": round(secs, 2),
                     "images_per_s": round(n / secs, 1)})
        print(f"w = {w:3.1f}: accuracy {r['accuracy']:6.1%}  FID {r['fid']:8.2f}  (floor {r['fid_floor']:.2f})  "
              f"sampling {secs:6.1f} s")

    uncond = None
    try:
        denoiser = get_model("denoiser", profile, rt, train_if_missing=False, progress=False)
    except FileNotFoundError:
        print("no finished unconditional 'denoiser' model for this profile: skipping its FID")
    else:
        clusters = draw_clusters(denoiser.cluster_sizes, n, torch.Generator().manual_seed(SEED))
        samples, secs = draw(denoiser, clusters, n, profile, rt, schedule)
        r = evaluate_samples(clf, samples, None, real)
        uncond = {"fid": r["fid"], "fid_floor": r["fid_floor"], "confident": r["confident"],
                  "histogram": r["histogram"], "sampling_s": round(secs, 2)}
        print(f"unconditional denoiser: FID {r['fid']:.2f}  (floor {r['fid_floor']:.2f})")

    targets = check_targets(profile, rows, uncond)
    common.save("guidance", profile, rt, {
        "profile_config": profile.to_dict(), "threads": torch.get_num_threads(), "n": n, "sampler": "ddim", "sample_steps": profile.sample_steps,
        "seed": SEED, "class_train_s": class_train_s, "classifier_train_s": clf_train_s, "guidance": rows,
        "unconditional": uncond, "targets": targets})
    if targets is not None:
        print(f"target ({targets['accuracy']:.1%} accuracy, FID {targets['fid']}): "
              f"{'met at w = ' + str(targets['met_at_w']) if targets['passed'] else 'NOT met'}"
              + (f" - {targets['note']}" if targets["note"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
