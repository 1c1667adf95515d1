"""Benchmark: the course CLIP for the active profile.

Trains it from scratch into a temporary folder (so the wall time is this machine's, not a shipped model's),
then records on held-out test digits: zero-shot digit accuracy ("a photo of the digit seven" ...), attribute
zero-shot accuracy (thick vs thin, slant left vs right, narrow vs wide; chance is 50 %), training time and
images/s. Targets: cpu profile within 10 minutes on 2 cores and >= 95 % digit accuracy; gpu >= 98 %.

    python bench/clip.py [--profile cpu] [--threads 2] [--steps N] [--n-test N]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from course_lib.data import captions  # noqa: E402
from course_lib.store import read_training  # noqa: E402
from course_lib.training.clip import clip_config_from_profile, evaluate_clip, train_clip  # noqa: E402
from course_lib.data.mnist import load_mnist  # noqa: E402
from course_lib.text.tokenizer import load_tokenizer  # noqa: E402
from course_lib.training.clip import recipe_config as clip_recipe  # noqa: E402

TARGETS = {"cpu": {"digit_accuracy": 0.95, "train_seconds": 600}, "gpu": {"digit_accuracy": 0.98}}


def extra(p):
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the clip recipe's steps)")
    p.add_argument("--n-test", type=int, default=None, help="test digits to score (default: all 10,000)")


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = train_clip(profile, out=Path(tmp) / "clip", runtime=rt, steps=args.steps, progress=True)
        wall = time.perf_counter() - t0                     # includes loading and measuring the data
        training = read_training(Path(tmp) / "clip")
    thresholds = captions.thresholds_from_json(training["thresholds"])
    x, y = load_mnist("test", n=args.n_test, quiet=True)
    t1 = time.perf_counter()
    scores = evaluate_clip(result.ema_model, load_tokenizer(), x, y, thresholds)
    eval_s = time.perf_counter() - t1
    n_params = sum(p.numel() for p in result.ema_model.parameters())
    out = {
        "config": clip_config_from_profile(profile) | {"vocabulary": len(training["config"]["vocabulary"])},
        "parameters": n_params, "steps": result.step, "batch_size": clip_recipe(profile).batch,
        "train": {"fit_seconds": round(result.seconds, 1), "wall_seconds_incl_data": round(wall, 1),
                  "images_per_s": round(result.items_per_s, 1),
                  "final_loss_mean_last_100": round(sum(result.losses[-100:]) / len(result.losses[-100:]), 4)},
        "zero_shot": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in scores.items()},
        "eval_seconds": round(eval_s, 1),
        "threads": args.threads,
    }
    target = TARGETS.get(profile.name)
    if target:
        out["targets"] = {
            f"digit_accuracy>={target['digit_accuracy']}": scores["digit_accuracy"] >= target["digit_accuracy"]}
        if "train_seconds" in target:
            out["targets"][f"train_seconds<={target['train_seconds']}"] = wall <= target["train_seconds"]
    common.save("clip", profile, rt, out)


if __name__ == "__main__":
    main()
