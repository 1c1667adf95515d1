"""Benchmark: training throughput (examples/s) of every model for the active profile, and the wall time its
full training would take at that rate on this machine: the check behind "at most 10 minutes on 2 cores".

Each model trains for --steps steps from scratch into a temporary folder (the first few steps, warm-up
included, count too, so the estimate is conservative). Run it on a quiet machine; the JSON records the
load average so a contended measurement is visible as such.

    python bench/throughput.py [--profile cpu] [--threads 2] [--steps 60] [--models denoiser class ...]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from course_lib.models import REGISTRY, _steps_for  # noqa: E402


def extra(p):
    p.add_argument("--steps", type=int, default=60, help="steps timed per model (default 60)")
    p.add_argument("--models", nargs="*", default=list(REGISTRY), help="default: all")


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            train_fn = REGISTRY[name][1]
            res = train_fn(profile, Path(tmp) / name, rt, args.steps, False)
            batch = profile.clip_batch if name == "clip" else profile.batch_size
            steps = _steps_for(name, profile)
            rows[name] = {"examples_per_s": round(res.items_per_s, 1), "batch_size": batch,
                          "profile_steps": steps, "timed_steps": args.steps,
                          "estimated_full_training_s": round(steps * batch / res.items_per_s, 1)}
            print(f"{name:<10} {res.items_per_s:8.1f} examples/s -> {steps} steps in "
                  f"~{rows[name]['estimated_full_training_s']:.0f} s", flush=True)
    common.save("throughput", profile, rt, {"models": rows})


if __name__ == "__main__":
    main()
