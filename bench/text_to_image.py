"""Benchmark: text to image (lesson 08) for the active profile.

Gets the text-to-image pipeline with ``get_model("text2image", ...)`` (training it, and the CLIP it needs,
when missing) and records:

    train           the text2image training time and speed, from its training.json (CLIP training not counted)
    digits          on ``pipeline.benchmark_prompts()`` (every digit as a word and as a numeral, bare and with
                    thick / thin / left / right): how often the course classifier reads the digit the prompt
                    names, overall and per kind of prompt
    fid             classifier-feature FID of those samples against real test digits, next to the real-vs-real
                    floor at the same N
    attributes      for "thin"/"thick" and "left"/"right" on paired noise
                    (``text2image_training.attribute_control``): the measured difference in standard units and
                    the fraction of pairs ordered the right way
    seconds_per_image   generation time (DDIM, the profile's steps and guidance scale)
    quick_accuracy_by_guidance   ``text2image_training.prompt_accuracy`` (bare prompts, a quick N) at w in SWEEP

Targets:
    cpu   training <= 15 min on 2 cores; digit accuracy >= 95 %; both attributes ordered in >= 90 % of pairs
    gpu   digit accuracy >= 99 %; both attributes ordered in >= 97 % of pairs; FID <= 2 x floor

    python bench/text_to_image.py [--profile test|cpu|gpu] [--threads K] [--n N]

Writes ``bench/results/text_to_image-<profile>.json``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from course_lib import paths  # noqa: E402
from course_lib.store import read_training  # noqa: E402
from course_lib.measures.metrics import evaluate_samples, real_images  # noqa: E402
from course_lib.networks.classifier import classify  # noqa: E402
from course_lib.registry import find_matching, get_model  # noqa: E402
from course_lib.text.vocabulary import ATTRIBUTE_PAIRS, benchmark_prompts  # noqa: E402
from course_lib.training.text2image import attribute_control, prompt_accuracy  # noqa: E402

SEED = 0
SWEEP = (1.0, 2.0, 3.0, 5.0)        # guidance scales of the quick accuracy sweep (prompts "zero".."9", bare)
TARGETS = {
    "cpu": {"train_seconds": 15 * 60, "accuracy": 0.95, "ordered": 0.90},
    "gpu": {"accuracy": 0.99, "ordered": 0.97, "fid_over_floor": 2.0},
}


def extra(p):
    p.add_argument("--n", type=int, default=None, help="samples for accuracy and FID (default: profile.n_eval)")


def _sync(rt) -> None:
    if rt.device.type == "cuda":
        torch.cuda.synchronize()


def training_record(profile, name: str = "text2image") -> dict:
    folder = find_matching(name, profile)
    tr = read_training(folder)
    out = {"checkpoint": str(folder), "steps": tr["step"], "batch_size": tr["batch_size"],
           "wall_seconds": tr.get("train_seconds"), "trained_on": tr.get("device"),
           "final_loss_mean_last_100": round(sum(tr["losses"][-100:]) / max(1, len(tr["losses"][-100:])), 5)}
    if tr.get("train_seconds"):
        out["images_per_s"] = round(tr["step"] * tr["batch_size"] / tr["train_seconds"], 1)
    clip_folder = paths.default_checkpoint("clip")
    if (clip_folder / "training.json").is_file():
        out["clip_wall_seconds_not_counted"] = read_training(clip_folder).get("train_seconds")
    return out


def _kind(prompt: str) -> str:
    numeral = any(ch.isdigit() for ch in prompt)
    attribute = next((w for pair in ATTRIBUTE_PAIRS.values() for w in pair if w in prompt.split()), None)
    return f"{'numeral' if numeral else 'word'}, {attribute or 'bare'}"


def digit_accuracy(pipe, clf, profile, rt, n: int, prompts=None, kind=_kind
                   ) -> tuple[dict, torch.Tensor, torch.Tensor, float]:
    prompts = prompts or benchmark_prompts()
    k = max(1, n // len(prompts))
    _sync(rt)
    t0 = time.perf_counter()
    images, labels = pipe.generate_with_labels(prompts, k, seed=SEED)     # the model folder's steps and guidance
    _sync(rt)
    seconds = time.perf_counter() - t0
    right = (classify(clf, images)[0].argmax(1) == labels).float()
    kinds = [kind(p) for p in prompts for _ in range(k)]
    by_kind = {kind: round(float(right[[i for i, x in enumerate(kinds) if x == kind]].mean()), 4)
               for kind in sorted(set(kinds))}
    per_digit = [round(float(right[labels == d].mean()), 4) for d in range(10)]
    return ({"n": len(images), "n_per_prompt": k, "prompts": len(prompts), "accuracy": round(float(right.mean()), 4),
             "by_kind": by_kind, "per_digit": per_digit}, images, labels, seconds)


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    n = args.n or profile.n_eval
    trained_now = find_matching("text2image", profile) is None
    pipe = get_model("text2image", profile, rt)                      # trains (timed in training.json) if missing
    train = {**training_record(profile), "trained_by_this_run": trained_now}
    clf = get_model("classifier", profile, rt)

    digits, images, labels, seconds = digit_accuracy(pipe, clf, profile, rt, n)
    ev = evaluate_samples(clf, images, labels, real=real_images(profile, len(images), rt.device))
    fid = {"n": ev["n"], "fid": round(ev["fid"], 3), "fid_floor": round(ev["fid_floor"], 3),
           "confident": round(ev["confident"], 4)}
    attributes = {}
    for a in ATTRIBUTE_PAIRS:
        r = attribute_control(pipe, profile, a, n_per_digit=max(2, n // 20), seed=SEED)
        attributes[a] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                         if k in ("words", "n_pairs", "mean_low", "mean_high", "real_sd", "difference_sd", "ordered")}

    sweep = {str(w): round(prompt_accuracy(pipe, profile, rt, guidance=w, classifier=clf), 4) for w in SWEEP}

    targets = {}
    t = TARGETS.get(profile.name)
    if t:
        targets[f"digit_accuracy>={t['accuracy']}"] = digits["accuracy"] >= t["accuracy"]
        for a, r in attributes.items():
            targets[f"{a}_ordered>={t['ordered']}"] = r["ordered"] >= t["ordered"]
        if "train_seconds" in t:
            targets[f"train_wall<={t['train_seconds']}s"] = (train["wall_seconds"] or 1e9) <= t["train_seconds"]
        if "fid_over_floor" in t:
            targets[f"fid<={t['fid_over_floor']}x_floor"] = fid["fid"] <= t["fid_over_floor"] * fid["fid_floor"]
    common.save("text_to_image", profile, rt, {
        "n": n, "sample_steps": pipe.default_steps, "guidance": pipe.default_guidance, "train": train,
        "digits": digits, "fid": fid, "attributes": attributes, "quick_accuracy_by_guidance": sweep,
        "seconds_per_image": round(seconds / len(images), 5), "targets_met": targets})


if __name__ == "__main__":
    main()
