"""Benchmark: a frozen pretrained language model as the text encoder (lesson 09, ``text2image-lm``).

Gets the pipeline with ``get_model("text2image-lm", ...)`` (training it when missing) and records, by the
course classifier:

    train           training time from its training.json: encoding every caption once (``caption_seconds``) plus
                    the loop (``train_seconds``); the encoder is frozen and not trained
    digits          digit accuracy on training-style prompts (``pipeline.benchmark_prompts()``, lesson 08's set)
    held_out        digit accuracy on the held-out phrasings (``language_encoder_training.held_out_prompts``:
                    six phrasings x ten digits, written before training), overall and per phrasing
    attributes      for the trained words (thin / thick, left / right) and each held-out synonym pair
                    (``HELD_OUT_ATTRIBUTES``: slim / fat, slender / heavy, tilted to the left / right,
                    leaning leftward / rightward): the fraction of paired-noise samples ordered the right way by
                    the measured attribute (``text2image_training.attribute_control``)
    fid             classifier-feature FID of the training-style samples, beside the real-vs-real floor at that N
    seconds_per_image   generation time (DDIM, the profile's steps and guidance scale)

The held-out prompts live in ``course_lib.training.text2image`` (``HELD_OUT_WORDS``, ``HELD_OUT_TEMPLATES``,
``HELD_OUT_ATTRIBUTES``), so the lesson and the test that no held-out word is in any training caption use the
same list. Held out means *as words*: "leftward", "rightward" and "boldly" share WordPieces ("left", "right",
"bold") with training words; the other synonyms share none.

Targets (cpu profile, 2 cores; the encoder frozen):
    training <= 10 min with the caching; digit accuracy >= 98 % on training-style prompts and >= 95 % on held-out
    phrasings; held-out attribute synonyms ordered correctly in >= 80 % of pairs

    python bench/language_encoder.py [--profile test|cpu|gpu] [--threads K] [--n N] [--pairs K]
    python bench/language_encoder.py --probe [--profile ...]

With ``--probe`` it runs only the encoder-only probe of lesson 09 (no image model sampled), into
``bench/results/language_encoder_probe-<profile>.json``: for each held-out synonym prompt (``probe_queries``,
"a fat seven") and each digit-free prompt (``digit_free_prompts``, "the number after six"), the training caption
nearest by cosine of pooled vectors among *all* the training captions (``nearest_caption_probe``); how often it
names the asked-for digit, and for the synonyms the training word they stand for too. Encoders: the course CLIP
of lesson 08 (given each prompt with its unknown words removed: what a closed vocabulary can do at best) and the
frozen language model. (A larger sentence encoder would be the next row; none ships as a hash-checked package.)

Writes ``bench/results/language_encoder-<profile>.json``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from text_to_image import SEED, digit_accuracy, training_record  # noqa: E402

from course_lib.store import read_training  # noqa: E402
from course_lib.networks.text_encoders import HUB_ID, SHA256  # noqa: E402
from course_lib.training.text2image import (HELD_OUT_ATTRIBUTES, HELD_OUT_TEMPLATES, NAME, held_out_pair,
    held_out_prompts)
from course_lib.measures.metrics import evaluate_samples, real_images  # noqa: E402
from course_lib.registry import find_matching, get_model  # noqa: E402
from course_lib.training.text2image import attribute_control  # noqa: E402
from course_lib.training.text2image import recipe_config as text2image_recipe  # noqa: E402
from course_lib.text import vocabulary  # noqa: E402
from course_lib.networks.text_encoders import load_language_encoder, sentence_vectors  # noqa: E402
from course_lib.training.text2image import (digit_free_prompts, nearest_caption_probe, probe_queries,  # noqa: E402
                                            training_templates)

TARGETS = {"cpu": {"train_seconds": 10 * 60, "accuracy": 0.98, "held_out_accuracy": 0.95, "ordered": 0.80}}
TRAINED_WORDS = {"thin / thick (trained)": "thickness", "left / right (trained)": "slant"}


def extra(p):
    p.add_argument("--n", type=int, default=None, help="samples per accuracy measure (default: profile.n_eval)")
    p.add_argument("--pairs", type=int, default=10, help="noise pairs per digit per attribute pair (default 10)")
    p.add_argument("--probe", action="store_true", help="only the encoder-only probe (lesson 09), into "
                   "results/language_encoder_probe-PROFILE.json")


def _phrasing(prompt: str) -> str:
    for template in HELD_OUT_TEMPLATES:
        head = template.split("{")[0] or template.split("}")[1]
        if head and head in prompt:
            return template
    return "other"


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except Exception:
        return "unknown"


def encoder_probe(profile, rt) -> dict:
    """The encoder-only probe over every training caption, for the course CLIP and the language model."""
    bank, _ = vocabulary.all_captions(training_templates(profile))
    synonyms = probe_queries()
    free, asked, _ = digit_free_prompts()
    pipe08 = get_model("text2image", profile, rt)
    encoder, tokenizer = load_language_encoder(rt.device)
    known = lambda p: " ".join(w for w in vocabulary.normalize_prompt(p) if w in vocabulary.VOCABULARY)
    encoders = {"course CLIP (lesson 08), unknown words removed":
                lambda ts: torch.cat([pipe08.encode([known(t) for t in ts[i:i + 1000]]).pooled.cpu()
                                      for i in range(0, len(ts), 1000)]),
                HUB_ID.split("/")[-1]: lambda ts: torch.cat([sentence_vectors(encoder, tokenizer, ts[i:i + 1000])
                                                             for i in range(0, len(ts), 1000)])}
    out = {"bank": len(bank), "synonym_prompts": len(synonyms[0]), "digit_free_prompts": len(free), "encoders": {}}
    for name, raw in encoders.items():
        memo = {}                                      # the bank is embedded once per encoder, not per probe
        embed = lambda ts, raw=raw, memo=memo: memo[tuple(ts)] if tuple(ts) in memo else \
            memo.setdefault(tuple(ts), raw(list(ts)))
        syn = nearest_caption_probe(embed, *synonyms, bank)
        dfree = nearest_caption_probe(embed, free, asked, [{}] * len(free), bank)
        out["encoders"][name] = {"synonyms_digit": round(syn["digit"], 4),
                                 "synonyms_digit_and_attribute": round(syn["digit_and_attribute"], 4),
                                 "digit_free_digit": round(dfree["digit"], 4),
                                 "example": {synonyms[0][10]: syn["nearest"][10], free[5]: dfree["nearest"][5]}}
    return out


def main() -> None:
    args = common.parse_args(__doc__, extra)
    profile, rt = common.start(args)
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    if args.probe:
        common.save("language_encoder_probe", profile, rt, {
            "encoder": {"name": HUB_ID, "sha256": SHA256, "frozen": True}, "cpu_model": _cpu_model(),
            **encoder_probe(profile, rt)})
        return
    n = args.n or profile.n_eval
    trained_now = find_matching(NAME, profile) is None
    pipe = get_model(NAME, profile, rt)                                 # trains (timed in training.json) if missing
    record = read_training(find_matching(NAME, profile))
    train = {**training_record(profile, NAME), "trained_by_this_run": trained_now,
             "caption_seconds": record.get("caption_seconds"), "captions": record.get("captions"),
             "caption_tokens": record.get("caption_tokens"), "encoder_source": record.get("text_encoder_source")}
    train["total_seconds_with_caching"] = round((train["wall_seconds"] or 0) + (train["caption_seconds"] or 0), 1)
    clf = get_model("classifier", profile, rt)

    digits, images, labels, seconds = digit_accuracy(pipe, clf, profile, rt, n)
    ev = evaluate_samples(clf, images, labels, real=real_images(profile, len(images), rt.device))
    fid = {"n": ev["n"], "fid": round(ev["fid"], 3), "fid_floor": round(ev["fid_floor"], 3),
           "confident": round(ev["confident"], 4)}
    held, _ = held_out_prompts()
    held_out = digit_accuracy(pipe, clf, profile, rt, n, prompts=held, kind=_phrasing)[0]

    attributes = {}
    pairs = {**{k: (a, None) for k, a in TRAINED_WORDS.items()},
             **{k: (a, held_out_pair(k)) for k, (a, _, _) in HELD_OUT_ATTRIBUTES.items()}}
    for name, (attribute, pair) in pairs.items():
        r = attribute_control(pipe, profile, attribute, n_per_digit=args.pairs, seed=SEED, prompt_pair=pair)
        attributes[name] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                            if k in ("attribute", "words", "n_pairs", "mean_low", "mean_high", "difference_sd",
                                     "ordered")}

    targets = {}
    t = TARGETS.get(profile.name)
    if t:
        total = train["total_seconds_with_caching"]
        targets[f"train_with_caching<={t['train_seconds']}s"] = total <= t["train_seconds"]
        targets[f"digit_accuracy>={t['accuracy']}"] = digits["accuracy"] >= t["accuracy"]
        targets[f"held_out_accuracy>={t['held_out_accuracy']}"] = held_out["accuracy"] >= t["held_out_accuracy"]
        for name, r in attributes.items():
            if name not in TRAINED_WORDS:
                targets[f"{name} ordered>={t['ordered']}"] = r["ordered"] >= t["ordered"]
    common.save("language_encoder", profile, rt, {
        "encoder": {"name": HUB_ID, "sha256": SHA256, "frozen": True}, "cpu_model": _cpu_model(),
        "load_average_at_start": load_at_start, "n": n, "sample_steps": profile.sample_steps,
        "guidance": text2image_recipe(profile).guidance, "train": train, "digits": digits, "held_out": held_out, "fid": fid,
        "attributes": attributes, "seconds_per_image": round(seconds / len(images), 5), "targets_met": targets})


if __name__ == "__main__":
    main()
