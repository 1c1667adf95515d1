"""Benchmark: the miniature Stable Diffusion 3 (lesson 13, ``mini-sd3``) beside lesson 09's model
(``text2image-lm``: the UNet with the same frozen language model), on the same machine in one run.

For each model (its finished checkpoint or the shipped weights; trained when missing), by the course classifier:

    digits        digit accuracy on training-style prompts (``vocabulary.benchmark_prompts``, lesson 08's set)
    held_out      digit accuracy on lesson 09's held-out phrasings (six phrasings x ten digits, no word of them
                  in any training caption: ``text2image.HELD_OUT_WORDS``)
    attributes    the fraction of paired-noise pairs ordered the right way by the measured attribute, for the
                  trained words and the four held-out synonym pairs (``text2image.attribute_control``)
    fid           classifier-feature FID of the training-style samples beside the real-vs-real floor at that N
    train         minutes of training from its training.json: the loop plus encoding the data once (captions;
                  for mini-sd3 also the latents), the CPU model, threads and the load when it was trained
    seconds_per_image, parameters (the trained network; the frozen encoder, 22.7 M, is shared)
    euler_steps   mini-sd3 only: digit accuracy (200 digits) at 4, 6, 10 and 20 Euler steps

Each model samples with its own defaults (text2image-lm: DDIM, the profile's steps; mini-sd3: the Euler steps
and guidance its folder's ``config.json`` holds).

``--study`` instead trains short runs of MMDiT variants (width, depth, patch, learning rate) for ``--study-steps``
steps each, on the first 10,000 training digits, and records, per variant, the flow-matching loss on 1,000 test digits' latents (fixed times, noises
and captions), a quick digit accuracy (100 images) and the CPU seconds: ``mini_sd3_study-<profile>.json``.

Targets (issue 37; cpu profile, 2 cores): training <= 10 min with encoding; digit accuracy >= 98 % on
training-style prompts, >= 97 % held out; held-out synonyms ordered in >= 80 % of pairs; FID <= 3x the floor.

    python bench/mini_sd3.py [--profile cpu] [--threads K] [--n N] [--pairs K] [--study --study-steps S]

Writes ``bench/results/mini_sd3-<profile>.json`` (or ``mini_sd3_study-<profile>.json``).
"""
from __future__ import annotations

import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from language_encoder import TRAINED_WORDS, _cpu_model, _phrasing  # noqa: E402
from text_to_image import SEED, digit_accuracy  # noqa: E402

from course_lib.measures.metrics import evaluate_samples, real_images  # noqa: E402
from course_lib.registry import find_matching, get_model  # noqa: E402
from course_lib.store import read_training  # noqa: E402
from course_lib.training.text2image import (HELD_OUT_ATTRIBUTES, attribute_control, held_out_pair,  # noqa: E402
                                            held_out_prompts)

TARGETS = {"cpu": {"train_seconds": 10 * 60, "accuracy": 0.98, "held_out_accuracy": 0.97, "ordered": 0.80,
                   "fid_ratio": 3.0}}
MODELS = ("mini-sd3", "text2image-lm")
STUDY_N_TRAIN = 10_000       # training digits the study's short runs draw from (encoded once per variant)


def extra(p):
    p.add_argument("--n", type=int, default=None, help="samples per accuracy measure (default: profile.n_eval)")
    p.add_argument("--pairs", type=int, default=10, help="noise pairs per digit per attribute pair (default 10)")
    p.add_argument("--study", action="store_true", help="train and compare MMDiT variants instead")
    p.add_argument("--study-steps", type=int, default=300, help="steps per study variant (default 300)")


def _sampling(pipe) -> tuple[int, float, str]:
    """The model folder's sampling defaults, which ``digit_accuracy`` samples with."""
    s = pipe.sampling
    return s["steps"], s["guidance"], f"{s['sampler']}-{s['steps']}"


def _train_record(name: str, profile) -> dict:
    folder = find_matching(name, profile)
    tr = read_training(folder)
    encode = tr.get("encode_seconds", tr.get("caption_seconds")) or 0.0
    loop = tr.get("train_seconds") or 0.0
    return {"checkpoint": str(folder), "steps": tr["step"], "batch_size": tr["batch_size"],
            "loop_seconds": loop, "encode_seconds": encode, "minutes_with_encoding": round((loop + encode) / 60, 2),
            "cpu_seconds": tr.get("cpu_seconds"), "trained_on": tr.get("device"), "note": tr.get("machine_note")}


def measure(name: str, profile, rt, clf, n: int, pairs: int) -> dict:
    pipe = get_model(name, profile, rt)
    steps, guidance, sampler = _sampling(pipe)
    prof = profile.replace(sample_steps=steps)                          # what attribute_control samples with
    net = pipe.mmdit if hasattr(pipe, "mmdit") else pipe.unet
    digits, images, labels, seconds = digit_accuracy(pipe, clf, prof, rt, n)
    ev = evaluate_samples(clf, images, labels, real=real_images(profile, len(images), rt.device))
    fid = {"n": ev["n"], "fid": round(ev["fid"], 3), "fid_floor": round(ev["fid_floor"], 3),
           "ratio": round(ev["fid"] / ev["fid_floor"], 2), "confident": round(ev["confident"], 4)}
    held, _ = held_out_prompts()
    held_out = digit_accuracy(pipe, clf, prof, rt, n, prompts=held, kind=_phrasing)[0]
    attributes = {}
    todo = {**{k: (a, None) for k, a in TRAINED_WORDS.items()},
            **{k: (a, held_out_pair(k)) for k, (a, _, _) in HELD_OUT_ATTRIBUTES.items()}}
    for label, (attribute, pair) in todo.items():
        r = attribute_control(pipe, prof, attribute, n_per_digit=pairs, guidance=guidance, seed=SEED, steps=steps,
                              prompt_pair=pair)
        attributes[label] = {"ordered": round(r["ordered"], 4), "difference_sd": round(r["difference_sd"], 3),
                             "n_pairs": r["n_pairs"]}
    return {"sampler": sampler, "guidance": guidance, "parameters": sum(p.numel() for p in net.parameters()),
            "train": _train_record(name, profile), "digits": digits, "held_out": held_out, "fid": fid,
            "attributes": attributes, "seconds_per_image": round(seconds / len(images), 5)}


def targets_met(r: dict, t: dict) -> dict:
    held = [v["ordered"] for k, v in r["attributes"].items() if k not in TRAINED_WORDS]
    return {f"train_with_encoding<={t['train_seconds']}s": r["train"]["minutes_with_encoding"] * 60 <= t["train_seconds"],
            f"digit_accuracy>={t['accuracy']}": r["digits"]["accuracy"] >= t["accuracy"],
            f"held_out_accuracy>={t['held_out_accuracy']}": r["held_out"]["accuracy"] >= t["held_out_accuracy"],
            f"held_out_synonyms_ordered>={t['ordered']} (each)": min(held) >= t["ordered"],
            f"fid<={t['fid_ratio']}x_floor": r["fid"]["ratio"] <= t["fid_ratio"]}


def steps_sweep(profile, rt, clf, n: int, steps=(4, 6, 10, 20)) -> dict:
    """mini-sd3's digit accuracy (training-style prompts, ``n`` digits) by Euler steps at its guidance: the
    sampling default is the fewest steps that hold the accuracy."""
    pipe = get_model("mini-sd3", profile, rt, progress=False)
    out = {}
    for s in steps:                                      # digit_accuracy samples with the pipeline's defaults
        pipe.sampling, pipe.default_steps = {**pipe.sampling, "steps": s}, s
        out[str(s)] = digit_accuracy(pipe, clf, profile, rt, n)[0]["accuracy"]
    return out


# --------------------------------------------------------------------------- the study
@torch.no_grad()
def validation_loss(pipe, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
    """The flow-matching loss of ``pipe.mmdit`` on test digits' latents (posterior means x s), the digit's
    word as the caption, fixed times t = 0.05..0.95 and fixed noise: comparable between variants."""
    from course_lib.diffusion.flow import TIME_SCALE, flow_path, velocity_target
    from course_lib.networks.unet import TextCond
    from course_lib.text.vocabulary import DIGIT_WORDS
    g = torch.Generator().manual_seed(0)
    z0 = pipe.autoencoder.encode(x_test).mean * pipe.autoencoder.scaling_factor
    eps = torch.randn(z0.shape, generator=g)
    t = torch.linspace(0.05, 0.95, len(z0))[torch.randperm(len(z0), generator=g)]
    words = pipe._encode(list(DIGIT_WORDS))
    cond = TextCond(*(part[y_test] for part in words))
    v = pipe.mmdit(flow_path(z0, eps, t), t * TIME_SCALE, cond)
    return float((v - velocity_target(z0, eps)).pow(2).mean())


def study(profile, rt, clf, steps: int) -> dict:
    from course_lib.data.mnist import load_mnist
    from course_lib.pipelines.mini_sd3 import MiniSD3Pipeline
    from course_lib.text.vocabulary import DIGIT_WORDS
    from course_lib.training.mini_sd3 import recipe_config, train_mini_sd3
    base = recipe_config(profile)
    profile = profile.replace(n_train=STUDY_N_TRAIN)           # short runs see fewer than 10,000 digits anyway
    variants = {"shipped recipe": {}, "patch 1 (49 tokens)": {"patch": 1}, "lr 2e-3": {"lr": 2e-3},
                "width 96, depth 6": {"width": 96, "depth": 6}}
    x_test, y_test = load_mnist("test", n=1000, quiet=True)
    out = {}
    for label, change in variants.items():
        preset = dataclasses.replace(base, steps=steps, warmup_steps=min(base.warmup_steps, steps // 5), **change)
        with tempfile.TemporaryDirectory() as tmp:
            cpu0, t0 = time.process_time(), time.perf_counter()
            res = train_mini_sd3(profile, Path(tmp) / "run", rt, progress=False, preset=preset)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            pipe = MiniSD3Pipeline.from_pretrained(Path(tmp) / "run", rt.device)
            images = pipe([f"{w}" for w in DIGIT_WORDS], 10, seed=SEED)
            from course_lib.networks.classifier import classify
            right = (classify(clf, images)[0].argmax(1) == torch.arange(10).repeat_interleave(10)).float().mean()
            out[label] = {"change": change, "steps": steps, "parameters": sum(p.numel() for p in res.model.parameters()),
                          "validation_loss": round(validation_loss(pipe, x_test, y_test), 4),
                          "train_loss_last_50": round(sum(res.losses[-50:]) / len(res.losses[-50:]), 4),
                          "digit_accuracy_100": round(float(right), 3),
                          "cpu_seconds_with_encoding": round(cpu, 1), "wall_seconds": round(wall, 1)}
            print(label, out[label], flush=True)
    return {"base": dataclasses.asdict(base), "n_train": STUDY_N_TRAIN, "variants": out}


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    clf = get_model("classifier", profile, rt)
    head = {"cpu_model": _cpu_model(), "load_average_at_start": load_at_start}
    if args.study:
        common.save("mini_sd3_study", profile, rt, {**head, **study(profile, rt, clf, args.study_steps)})
        return
    n = args.n or profile.n_eval
    cpu0 = time.process_time()
    models = {name: measure(name, profile, rt, clf, n, args.pairs) for name in MODELS}
    models["mini-sd3"]["euler_steps"] = steps_sweep(profile, rt, clf, min(n, 200))
    t = TARGETS.get(profile.name)
    targets = {name: targets_met(r, t) for name, r in models.items()} if t else {}
    common.save("mini_sd3", profile, rt, {**head, "n": n, "pairs_per_digit": args.pairs, "models": models,
                                          "targets_met": targets,
                                          "measuring_cpu_seconds": round(time.process_time() - cpu0, 1)})


if __name__ == "__main__":
    main()
