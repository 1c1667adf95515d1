"""Benchmark: how close the few-step samplers come to the full 1,000-step DDPM chain (issue 5's "DDIM-50
within 10% of DDPM-1000 on FID"), for the active profile's denoiser.

For each guidance scale w (default: 1, the mixture, and the profile's self-guidance scale) it samples N
digits with DDPM-1000, DDPM-50 and DDIM-50 from the same start noise x_T and the same k-means clusters
(seed 1, as ``bench/train_denoiser.py``, whose DDIM-50 and DDPM-50 figures these repeat), and reports
confident fraction, FID beside the real-vs-real floor at the same N, and sampling time. DDPM-1000 is
20x the work of the 50-step samplers: at N = 1,000 on 2 CPU cores it takes about 25 minutes for w = 1
and twice that for a guided w. The JSON is saved after every measurement, so a stopped run keeps what it
has measured; ``--add`` measures more scales into the same JSON.

    python bench/samplers.py [--profile cpu] [--threads 2] [--n 1000] [--guidance 1 2] [--add]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from train_denoiser import timed_sample  # noqa: E402

from course_lib.data.clusters import draw_clusters  # noqa: E402
from course_lib.diffusion.guidance import guided  # noqa: E402
from course_lib.measures.metrics import evaluate_samples, real_images  # noqa: E402
from course_lib.registry import get_model  # noqa: E402
from course_lib.diffusion.schedules import make_schedule  # noqa: E402
from course_lib.training.denoiser import recipe_config as denoiser_recipe  # noqa: E402

KEYS = ("n", "confident", "mean_confidence", "fid", "fid_floor", "histogram")
SAMPLERS = (("ddim50", "ddim", 50), ("ddpm50", "ddpm", 50), ("ddpm1000", "ddpm", None))


def extra(p):
    p.add_argument("--n", type=int, default=None, help="samples per measurement (default: profile.n_eval)")
    p.add_argument("--guidance", type=float, nargs="*", default=None,
                   help="self-guidance scales (default: 1 and the profile's)")
    p.add_argument("--add", action="store_true",
                   help="keep the other scales already in the JSON (same profile and N), so scales can be "
                        "measured in separate runs; each scale records the run that measured it")


def compare(results: dict) -> dict:
    """For each scale measured with both samplers: DDIM-50's FID as a multiple of DDPM-1000's, and whether
    it is within 10 %."""
    out = {}
    for w, r in results.items():
        if "ddim50" in r and "ddpm1000" in r:
            ratio = r["ddim50"]["fid"] / r["ddpm1000"]["fid"]
            out[w] = {"ddim50_fid_over_ddpm1000_fid": round(ratio, 3), "within_10pct": ratio <= 1.1}
    return out


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    n = args.n or profile.n_eval
    model = get_model("denoiser", profile, rt)
    clf = get_model("classifier", profile, rt)
    real = real_images(profile, n, rt.device)
    schedule = make_schedule(profile.schedule, profile.T, rt.device)
    clusters = draw_clusters(model.cluster_sizes, n, torch.Generator().manual_seed(1), rt.device)
    scales = args.guidance if args.guidance is not None else sorted({1.0, denoiser_recipe(profile).self_guidance})
    results, speed, runs = {}, {}, {}
    earlier = common.RESULTS / f"samplers-{profile.name}.json"
    if args.add and earlier.is_file():
        old = json.loads(earlier.read_text())
        if old.get("n") == n:
            results, speed = old["quality"], old["sampling_images_per_s"]
            runs = old.get("measured_by") or {k: {"date": old["date"], "machine": old["machine"]} for k in results}
    for w in scales:
        key = f"w{w:g}"
        results[key], speed[key] = {}, {}
        runs[key] = {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": common.machine(rt)}
        for name, sampler, steps in SAMPLERS:
            x, sec = timed_sample(guided(model, w), n, schedule, rt, sampler, steps, seed=1, cond=clusters)
            ev = evaluate_samples(clf, x, real=real)
            results[key][name] = {k: ev[k] for k in KEYS}
            speed[key][name] = round(n / sec, 2)
            print(f"w = {w:g}, {name}: confident {ev['confident']:.3f}, FID {ev['fid']:.2f} "
                  f"(floor {ev['fid_floor']:.2f}), {sec:.0f} s", flush=True)
            common.save("samplers", profile, rt, {"n": n, "quality": results, "sampling_images_per_s": speed,
                                                   "ddim50_vs_ddpm1000": compare(results), "measured_by": runs})


if __name__ == "__main__":
    main()
