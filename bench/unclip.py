"""Benchmark: unCLIP on digits (lesson 10, ``unclip``): a decoder from CLIP image embeddings and a diffusion prior
from CLIP text embeddings, measured by the course classifier.

Gets the pipeline with ``get_model("unclip", ...)`` (training it when missing) and records:

    train           decoder and prior training time from the folder's training.json (loops, plus embedding the
                    training digits and the captions once)
    modality_gap    mean cosine of a digit's image embedding with its own caption's text embedding, against
                    image-image (same class) and the prior's sample for that caption
    digits          digit accuracy on lesson 08's prompt set (``pipeline.benchmark_prompts()``) with the prior
    digits_text     the same prompts, the text embedding fed to the decoder directly (the shortcut)
    digits_nearest  the real test-digit image embeddings nearest each prompt's text embedding (an upper bound;
                    ``pipeline.digit_prompts()``)
    prior_guidance  quick digit accuracy at prior guidance w = 1, 2, 4 (the decoder's w fixed)
    attributes      thin / thick and left / right: fraction of paired-noise pairs ordered the right way
                    (``text2image_training.attribute_control``), with the prior and with the shortcut
    variations      10 test digits per class, ``--variations`` each: class kept by the classifier, and their mean
                    pairwise RMS pixel distance against real same-class pairs (``unclip_training.variation_measures``)
    fid             classifier-feature FID of the prior's samples, beside the real-vs-real floor at that N
    seconds_per_image   generation time (prior + decoder, DDIM, the profile's steps)

With ``--diversity`` it measures only DALL-E 2's diversity claims (lesson 10), into
``bench/results/unclip_diversity-<profile>.json``:

    per_prompt_spread   on the 60 prompts, ``--per-prompt`` images each from paired start noises: the mean pairwise
                        RMS pixel distance among one prompt's images (``measures.comparisons.spread_per_group``),
                        with the prior (a new image embedding per image) and with the text shortcut (one text
                        embedding, only the noise varies), overall, bare prompts and prompts with an attribute
                        word, beside real test digits of one class in groups of the same size; and the digit
                        accuracy of the same images
    decoder_guidance    the decoder's w = 1, 2, 3, 4 with everything else fixed (for the prior: the same sampled
                        embeddings; for the shortcut: the same text embeddings), accuracy and per-prompt spread:
                        does guiding the decoder collapse the variety (Ramesh et al. 2022, Sec. 5.3, Fig. 9)?

Targets (cpu profile, 2 cores): decoder and prior together train in <= 10 min; with the prior, digit accuracy
>= 97 % and above the text shortcut; thick/thin and left/right ordered in >= 85 % of pairs; variations keep the
class >= 95 %.

    python bench/unclip.py [--profile test|cpu|gpu] [--threads K] [--n N] [--pairs K] [--variations K]
    python bench/unclip.py --diversity [--per-prompt K] [--profile ...] [--threads K]

Writes ``bench/results/unclip-<profile>.json``.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from language_encoder import _cpu_model  # noqa: E402
from text_to_image import SEED, digit_accuracy  # noqa: E402

from course_lib.data import captions  # noqa: E402
from course_lib.text import vocabulary  # noqa: E402
from course_lib.store import read_training  # noqa: E402
from course_lib.networks.clip import embed_images, embed_text  # noqa: E402
from course_lib.data.mnist import load_mnist  # noqa: E402
from course_lib.measures.metrics import evaluate_samples, real_images  # noqa: E402
from course_lib.networks.classifier import classify  # noqa: E402
from course_lib.registry import find_matching, get_model  # noqa: E402
from course_lib.text.vocabulary import digit_prompts  # noqa: E402
from course_lib.training.text2image import attribute_control, prompt_accuracy  # noqa: E402
from course_lib.pipelines.unclip import nearest_embeddings  # noqa: E402
from course_lib.training.unclip import variation_measures  # noqa: E402
from course_lib.measures.comparisons import spread_per_group  # noqa: E402

TARGETS = {"cpu": {"train_seconds": 10 * 60, "accuracy": 0.97, "ordered": 0.85, "class_kept": 0.95}}


def extra(p):
    p.add_argument("--n", type=int, default=600, help="samples per accuracy measure (default 600: 10 per prompt)")
    p.add_argument("--pairs", type=int, default=10, help="noise pairs per digit per attribute (default 10)")
    p.add_argument("--variations", type=int, default=8, help="variations per source digit (default 8)")
    p.add_argument("--diversity", action="store_true", help="only the diversity study (lesson 10), into "
                   "results/unclip_diversity-PROFILE.json")
    p.add_argument("--per-prompt", type=int, default=8, help="images per prompt in the diversity study (default 8)")


def _r(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in d.items()}


@torch.no_grad()
def modality_gap(pipe, n: int = 1000) -> dict:
    """Cosines on test digits: image with its own true caption, image with a same-class image, and the prior's
    sample for the caption with the image (the prior should land where images are, not where text is)."""
    x, y = load_mnist("test", n=n, quiet=True)
    img = embed_images(pipe.clip, x)
    thresholds = captions.default_thresholds()
    bins = captions.attribute_bins(captions.measure_attributes(x), y, thresholds)
    texts, _ = captions.random_captions(y, bins, torch.Generator().manual_seed(SEED))
    txt = embed_text(pipe.clip, pipe.tokenizer, texts)
    perm = torch.cat([(y == d).nonzero()[:, 0].roll(1) for d in range(10)])                # same class, other digit
    order = torch.cat([(y == d).nonzero()[:, 0] for d in range(10)])
    z = pipe.prior_embeddings(texts[:200], 1, seed=SEED).cpu()                             # one sample per caption
    return {"n": n, "image_text_own_caption": float((img * txt).sum(-1).mean()),
            "image_image_same_class": float((img[order] * img[perm]).sum(-1).mean()),
            "prior_sample_image": float((z * img[:200]).sum(-1).mean()),
            "prior_sample_text": float((z * txt[:200]).sum(-1).mean())}


GUIDANCE_SWEEP = (1.0, 2.0, 3.0, 4.0)     # the decoder's w in the diversity study


@torch.no_grad()
def diversity_study(pipe, clf, n: int) -> dict:
    """Per-prompt spread and accuracy, prior against shortcut, at each decoder guidance w (module docstring)."""
    prompts = vocabulary.benchmark_prompts()
    want = torch.tensor([int(vocabulary.parse_prompt(q)[0]) for q in prompts])
    bare = torch.tensor([len(vocabulary.parse_prompt(q)[1]) == 0 for q in prompts])
    z_prior = pipe.prior_embeddings(prompts, n, seed=SEED).cpu()                      # (P * n, D), paired noise
    z_text = pipe.text_embeddings(prompts).cpu()                                       # (P, D)
    rows = {}
    for w in GUIDANCE_SWEEP:
        for source in ("prior", "text"):
            if source == "prior":
                x = torch.cat([pipe.decode_paired(z_prior[p * n:(p + 1) * n], guidance=w, seed=SEED)
                               for p in range(len(prompts))])
            else:
                x = pipe.decode(z_text, n, guidance=w, seed=SEED)                      # image i from noise i too
            spread = spread_per_group(x, n)                                            # (P,)
            acc = (classify(clf, x)[0].argmax(1) == want.repeat_interleave(n)).float().view(-1, n).mean(1)
            rows[f"{source} w={w:g}"] = {"source": source, "w": w, "spread": round(float(spread.mean()), 4),
                                         "spread_bare": round(float(spread[bare].mean()), 4),
                                         "spread_attribute": round(float(spread[~bare].mean()), 4),
                                         "accuracy": round(float(acc.mean()), 4),
                                         "accuracy_bare": round(float(acc[bare].mean()), 4),
                                         "accuracy_attribute": round(float(acc[~bare].mean()), 4)}
    x, y = load_mnist("test", n=2000, quiet=True)
    real = torch.cat([x[(y == d).nonzero()[:n * 6, 0]] for d in range(10)])               # 6 groups of n per class
    return {"prompts": len(prompts), "per_prompt": n, "prior_guidance": pipe.default_prior_guidance,
            "default_decoder_guidance": pipe.default_guidance, "rows": rows,
            "real_same_class_spread": round(float(spread_per_group(real, n).mean()), 4)}


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    if args.diversity:
        pipe = get_model("unclip", profile, rt)
        clf = get_model("classifier", profile, rt)
        t0 = time.perf_counter()
        study = diversity_study(pipe, clf, args.per_prompt)
        common.save("unclip_diversity", profile, rt, {
            "cpu_model": _cpu_model(), "load_average_at_start": load_at_start, "sample_steps": profile.sample_steps,
            **study, "seconds": round(time.perf_counter() - t0, 1)})
        return
    trained_now = find_matching("unclip", profile) is None
    pipe = get_model("unclip", profile, rt)
    tr = read_training(find_matching("unclip", profile))
    d, p = tr["decoder"], tr["prior"]
    train = {"checkpoint": str(find_matching("unclip", profile)), "trained_by_this_run": trained_now,
             "decoder_steps": d["step"], "decoder_batch": tr["config"]["decoder"]["batch_size"],
             "decoder_seconds": d["train_seconds"], "prior_steps": p["step"],
             "prior_batch": tr["config"]["prior"]["batch_size"], "prior_seconds": p["train_seconds"],
             "embed_seconds": tr.get("embed_seconds"), "caption_seconds": tr.get("caption_seconds"),
             "decoder_images_per_s": round(d["step"] * tr["config"]["decoder"]["batch_size"] / d["train_seconds"], 1)}
    train["total_seconds"] = round(train["decoder_seconds"] + train["prior_seconds"] + (train["embed_seconds"] or 0)
                                   + (train["caption_seconds"] or 0), 1)
    clf = get_model("classifier", profile, rt)
    n = args.n

    gap = _r(modality_gap(pipe))
    digits, images, labels, seconds = digit_accuracy(pipe, clf, profile, rt, n)
    ev = evaluate_samples(clf, images, labels, real=real_images(profile, len(images), rt.device))
    fid = {"n": ev["n"], "fid": round(ev["fid"], 3), "fid_floor": round(ev["fid_floor"], 3),
           "confident": round(ev["confident"], 4)}
    digits_text = digit_accuracy(pipe.using("text"), clf, profile, rt, n)[0]

    x_test, _ = load_mnist("test", n=2000, quiet=True)
    bank = embed_images(pipe.clip, x_test)
    prompts = digit_prompts()
    k = max(1, n // (3 * len(prompts)))
    near = nearest_embeddings(pipe.text_embeddings(prompts).cpu(), bank, k)                  # (P * k, D)
    x_near = pipe.decode(near, 1, steps=profile.sample_steps, seed=SEED)
    want = torch.tensor([int(vocabulary.parse_prompt(q)[0]) for q in prompts]).repeat_interleave(k)
    digits_nearest = {"n": len(x_near), "accuracy": round(float((classify(clf, x_near)[0].argmax(1) == want)
                                                                  .float().mean()), 4)}

    sweep = {}
    for w in (1.0, 2.0, 4.0):
        view = pipe.using("prior")
        view.default_prior_guidance = w
        sweep[str(w)] = round(prompt_accuracy(view, profile, rt, n=200, classifier=clf, seed=SEED), 4)

    attributes = {}
    for source in ("prior", "text"):
        for attribute in ("thickness", "slant"):
            r = attribute_control(pipe.using(source), profile, attribute, n_per_digit=args.pairs, seed=SEED)
            attributes[f"{attribute} ({source})"] = _r({k: v for k, v in r.items() if k in (
                "attribute", "words", "n_pairs", "mean_low", "mean_high", "difference_sd", "ordered")})

    x, y = load_mnist("test", n=2000, quiet=True)
    pick = torch.cat([(y == dgt).nonzero()[:10, 0] for dgt in range(10)])
    var = variation_measures(pipe, x[pick], y[pick], args.variations, clf, seed=SEED, steps=profile.sample_steps)
    variations = _r({k: v for k, v in var.items() if k != "images"})

    targets = {}
    t = TARGETS.get(profile.name)
    if t:
        targets[f"train_decoder_and_prior<={t['train_seconds']}s"] = train["total_seconds"] <= t["train_seconds"]
        targets[f"digit_accuracy_with_prior>={t['accuracy']}"] = digits["accuracy"] >= t["accuracy"]
        targets["prior_above_text_shortcut"] = digits["accuracy"] > digits_text["accuracy"]
        for a in ("thickness", "slant"):
            targets[f"{a} (prior) ordered>={t['ordered']}"] = attributes[f"{a} (prior)"]["ordered"] >= t["ordered"]
        targets[f"variations_class_kept>={t['class_kept']}"] = variations["class_kept"] >= t["class_kept"]
    common.save("unclip", profile, rt, {
        "cpu_model": _cpu_model(), "load_average_at_start": load_at_start,
        "note": ("times are wall-clock on the cores as the load averages show them (training's own load is in "
                 "its training.json); a load above the thread count means other jobs shared the cores"),
        "n": n, "sample_steps": profile.sample_steps, "decoder_guidance": pipe.default_guidance,
        "prior_guidance": pipe.default_prior_guidance, "train": train, "modality_gap": gap, "digits": digits,
        "digits_text_shortcut": digits_text, "digits_nearest_real_embedding": digits_nearest,
        "quick_accuracy_by_prior_guidance": sweep, "attributes": attributes, "variations": variations, "fid": fid,
        "seconds_per_image": round(seconds / len(images), 5), "targets_met": targets})


if __name__ == "__main__":
    main()
