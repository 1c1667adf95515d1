"""Benchmark: latent diffusion on digits (lesson 11) against the pixel class model (lesson 05).

For the active profile it gets the ``autoencoder`` and ``latent`` models (``get_model``, training them when
missing) and the pixel ``class`` model, then measures

    autoencoder   training seconds (its training.json), the course classifier's accuracy on the reconstructions
                  of the test set (and on the originals), the reconstruction L1, the scaling factor; and, when
                  the study checkpoints exist (``--study``: C = 2 and C = 4 trained alike for STUDY_STEPS), the
                  same for each, the short study that chose C
    step costs    ``latent_training.step_costs`` (what lesson 11 shows, with more steps): a training step
                  (L_simple under the runtime's autocast, backward, AdamW) and a guided sampling step of the
                  pixel class UNet on (B, 1, 28, 28) and the latent UNet on (B, C, 7, 7), fresh networks, in
                  alternating rounds; by wall clock and by this process's CPU time
    quality       at the same guidance w = ``latent_recipe(profile).guidance`` and sampler (DDIM ``profile.sample_steps``):
                  class accuracy, confident fraction, FID with the real-vs-real floor at the same N

Targets (cpu profile): the autoencoder trains in <= 180 s and its reconstructions keep >= 99 % classifier
accuracy; the latent training step processes >= 3x the images per second of the pixel class model; the latent
model's class accuracy is within 1 point of the pixel model's at the same w, trained for no more wall time.

Usage:
    python bench/latent.py [--profile test|cpu|gpu] [--threads K] [--study]

Writes ``bench/results/latent-<profile>.json``.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from course_lib import paths  # noqa: E402
from course_lib import store  # noqa: E402
from course_lib.training import latent as LT  # noqa: E402
from course_lib.networks.autoencoder import load_autoencoder  # noqa: E402
from course_lib.data.mnist import load_mnist  # noqa: E402
from course_lib.diffusion.guidance import guided  # noqa: E402
from course_lib.measures.metrics import evaluate_samples, real_images  # noqa: E402
from course_lib.networks.classifier import classify, label_accuracy  # noqa: E402
from course_lib.registry import find_usable, get_model  # noqa: E402
from course_lib.diffusion.samplers import sample  # noqa: E402
from course_lib.diffusion.schedules import make_schedule  # noqa: E402
from course_lib.training.latent import recipe_config as latent_recipe  # noqa: E402

STUDY = (2, 4)            # latent channels compared
KL_WEIGHTS = (1e-4, 1e-6)   # the course's KL weight and Stable Diffusion's (--kl-study)
STUDY_STEPS = 150         # autoencoder steps of each study run (the same data, batch and learning rate)
ROUNDS, STEPS = 3, 10     # LT.step_costs: rounds of STEPS timed steps per model, alternating


def study_folder(c: int) -> Path:
    return paths.checkpoints_dir() / f"autoencoder-study-c{c}"


def train_study(profile, rt) -> None:
    for c in STUDY:
        LT.train_autoencoder(profile.with_recipe("latent", latent_channels=c), out=study_folder(c), runtime=rt,
                             steps=STUDY_STEPS, progress=True)


@torch.no_grad()
def autoencoder_figures(ae, profile, rt, clf) -> dict:
    x, y = load_mnist("test", profile=profile, device=rt.device, quiet=True)
    rec = LT.reconstruct(ae.to(rt.device), x)
    return {"latent_channels": ae.config.latent_channels, "reconstruction_accuracy":
            round(label_accuracy(classify(clf, rec)[0], y), 4), "original_accuracy":
            round(label_accuracy(classify(clf, x)[0], y), 4), "reconstruction_l1": round(float((rec - x).abs().mean()), 4),
            "scaling_factor": round(ae.scaling_factor, 4), "n_test": len(x)}


def quality(profile, rt, pixel_model, latent_model, clf) -> dict:
    n, w = profile.n_eval, latent_recipe(profile).guidance
    labels = (torch.arange(n) % 10).to(rt.device)
    real = real_images(profile, n, rt.device)
    schedule = make_schedule(profile.schedule, profile.T, rt.device)
    rows = {}
    t0 = time.perf_counter()
    x = sample(guided(pixel_model, w), n, schedule, steps=profile.sample_steps,
               generator=torch.Generator().manual_seed(0), cond=labels, device=rt.device)
    rows["pixel"] = {**evaluate_samples(clf, x, labels.cpu(), real), "sample_seconds": round(time.perf_counter() - t0, 1)}
    t0 = time.perf_counter()
    x = latent_model.generate(labels=labels, guidance=w, steps=profile.sample_steps,
                              generator=torch.Generator().manual_seed(0))
    rows["latent"] = {**evaluate_samples(clf, x, labels.cpu(), real), "sample_seconds": round(time.perf_counter() - t0, 1)}
    for r in rows.values():
        r.pop("histogram", None)
        for k in ("confident", "accuracy", "mean_confidence", "fid", "fid_floor"):
            r[k] = round(float(r[k]), 4)
    return {"n": n, "guidance": w, "sampler": f"ddim-{profile.sample_steps}", **rows}


def train_record(name: str, profile) -> dict:
    found = find_usable(name, profile)
    if found is None:
        return {}
    tr = store.read_training(found[0])
    folder = found[0].resolve()
    try:
        folder = folder.relative_to(Path.cwd().resolve())          # no machine's absolute paths in the JSON
    except ValueError:
        folder = Path(folder.parent.name) / folder.name
    return {"folder": str(folder), "steps": tr.get("step"), "batch": tr.get("batch_size"),
            "train_seconds": tr.get("train_seconds")}


def main() -> None:
    def extra(p):
        p.add_argument("--study", action="store_true", help=f"train the C = {STUDY} study autoencoders first (if missing)")
        p.add_argument("--kl-study", action="store_true", help="only the KL-weight study: s for KL weights "
                       f"{KL_WEIGHTS} after the profile's autoencoder steps, into results/latent_kl-PROFILE.json")

    args = common.parse_args(__doc__.split("\n")[0], extra)
    profile, rt = common.start(args)
    if args.kl_study:
        t0 = time.perf_counter()
        found = LT.scaling_factor_by_kl_weight(profile, KL_WEIGHTS, steps=latent_recipe(profile).ae_steps, runtime=rt)
        common.save("latent_kl", profile, rt, {
            "steps": latent_recipe(profile).ae_steps, "batch": latent_recipe(profile).ae_batch, "seconds": round(time.perf_counter() - t0, 1),
            "by_kl_weight": {f"{w:g}": {k: round(v, 4) for k, v in r.items()} for w, r in found.items()},
            "note": "latent_training.scaling_factor_by_kl_weight: fresh autoencoders of the profile's size, plain "
                    "AdamW (no EMA), s = 1 / std(z) on 2,000 training digits; Stable Diffusion's KL weight is 1e-6"})
        return
    if args.study:
        train_study(profile, rt)
    clf = get_model("classifier", profile, rt)
    ae = get_model("autoencoder", profile, rt)
    latent_model = get_model("latent", profile, rt)
    pixel_model = get_model("class", profile, rt)
    result = {"autoencoder": {**autoencoder_figures(ae, profile, rt, clf), **train_record("autoencoder", profile)}}
    study = {}
    for c in STUDY:
        if (study_folder(c) / "config.json").is_file():
            study[f"C={c}"] = {**autoencoder_figures(load_autoencoder(study_folder(c), rt.device), profile, rt, clf),
                               "steps": store.read_training(study_folder(c)).get("step")}
    result["channel_study"] = study
    result["step_costs"] = LT.step_costs(profile, rt, steps=STEPS, rounds=ROUNDS)
    result["quality"] = quality(profile, rt, pixel_model, latent_model, clf)
    result["training"] = {"latent": train_record("latent", profile), "pixel_class": train_record("class", profile)}
    q, ts, tr = result["quality"], result["step_costs"], result["training"]
    ae_s = result["autoencoder"].get("train_seconds") or 0.0
    lat_s, pix_s = tr["latent"].get("train_seconds"), tr["pixel_class"].get("train_seconds")
    result["targets"] = {
        "autoencoder_train_seconds_le_180": {"value": ae_s, "met": ae_s <= 180},
        "reconstruction_accuracy_ge_0.99": {"value": result["autoencoder"]["reconstruction_accuracy"],
                                            "met": result["autoencoder"]["reconstruction_accuracy"] >= 0.99},
        "training_images_per_s_ratio_ge_3": {"value_wall": round(ts["train_ratio_wall"], 2),
                                             "value_cpu_time": round(ts["train_ratio_cpu_time"], 2),
                                             "met": ts["train_ratio_cpu_time"] >= 3},
        "accuracy_within_1_point_at_no_more_wall_time": {
            "latent": q["latent"]["accuracy"], "pixel": q["pixel"]["accuracy"],
            "latent_train_seconds": lat_s, "pixel_train_seconds": pix_s,
            "met": bool(q["latent"]["accuracy"] >= q["pixel"]["accuracy"] - 0.01
                        and lat_s is not None and pix_s is not None and lat_s <= pix_s)},
    }
    result["note"] = ("wall-clock figures are upper bounds where load_average exceeds the thread count (other "
                      "jobs on the cores); the step-rate ratio is also given in this process's CPU time, which "
                      "contention changes far less")
    common.save("latent", profile, rt, result)


if __name__ == "__main__":
    main()
