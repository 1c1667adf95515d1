"""Benchmark: training throughput (examples/s) of every model for the active profile, and the wall time its
full training would take at that rate on this machine: the check behind "at most 10 minutes on 2 cores".

Each model trains for --steps steps from scratch into a temporary folder (the first few steps, warm-up
included, count too, so the estimate is conservative). Run it on a quiet machine; the JSON records the
load average so a contended measurement is visible as such.

    python bench/throughput.py [--profile cpu] [--threads 2] [--steps 60] [--models denoiser class ...]
                               [--compare fp32]

``--compare fp32`` times every model a second time in that precision and records the speed-up of the
default precision over it (on a CPU with AMX, bf16 against fp32).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from course_lib.store import read_training  # noqa: E402
from course_lib.config import get_runtime  # noqa: E402
from course_lib.registry import MODELS  # noqa: E402


def extra(p):
    p.add_argument("--steps", type=int, default=60, help="steps timed per model (default 60)")
    p.add_argument("--models", nargs="*", default=list(MODELS), help="default: all")
    p.add_argument("--compare", choices=("fp32", "bf16", "fp16"), default=None,
                   help="also time every model in this precision and record the speed-up")


def time_model(name, profile, rt, steps, tmp) -> dict:
    train_fn = MODELS[name].train
    res = train_fn(profile, Path(tmp) / f"{name}-{rt.precision}", rt, steps, False)
    batch = read_training(Path(tmp) / f"{name}-{rt.precision}")["batch_size"]      # as the model trained
    full = MODELS[name].steps(profile)
    return {"examples_per_s": round(res.items_per_s, 1), "batch_size": batch, "profile_steps": full,
            "timed_steps": steps, "estimated_full_training_s": round(full * batch / res.items_per_s, 1)}


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    rows = {}
    other = get_runtime(rt.device, precision=args.compare) if args.compare else None
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            rows[name] = row = time_model(name, profile, rt, args.steps, tmp)
            line = (f"{name:<13} {rt.precision}: {row['examples_per_s']:8.1f} examples/s -> "
                    f"{row['profile_steps']} steps in ~{row['estimated_full_training_s']:.0f} s")
            if other is not None:
                base = time_model(name, profile, other, args.steps, tmp)
                row[f"{other.precision}_examples_per_s"] = base["examples_per_s"]
                row[f"speedup_over_{other.precision}"] = round(row["examples_per_s"] / base["examples_per_s"], 2)
                line += f"  ({other.precision}: {base['examples_per_s']:.1f}, x{row[f'speedup_over_{other.precision}']})"
            print(line, flush=True)
    common.save("throughput", profile, rt, {"models": rows})


if __name__ == "__main__":
    main()
