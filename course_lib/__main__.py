"""The course's command line: ``python -m course_lib <command> --help``.

    train {classifier,denoiser,class,clip,text2image,text2image-lm,autoencoder,latent,flow,unclip}
               train (or resume) one model
    sample     --checkpoint DIR --n N --steps S --sampler {ddpm,ddim} --seed K --out FILE
               --checkpoint data/weights/flow --labels all --steps 10 --sampler {euler,heun} --guidance 2
               --checkpoint data/weights/latent --labels all --n 1000   (decoded to pixels)
    generate   "a thin two" "a 9" --checkpoint DIR -n 16 --guidance 3 --steps 50 --seed 0 --out grid.png
               "a fat seven" --model text2image-lm -n 16 -o grid.png   (the language model reads any words)
    weights    train every model for the active profile and refresh data/weights/
    course     train what is missing, execute every lesson into build/, render the course book
    info       the active profile, device and precision
    links      regenerate the README's lesson table (Colab links) and each lesson's COURSE_REPO; --check
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

MODEL_NAMES = ("classifier", "denoiser", "class", "clip", "text2image", "text2image-lm", "autoencoder", "latent",
               "flow", "unclip")
TEXT_TO_IMAGE = ("text2image", "text2image-lm", "unclip")          # the models `generate` can use
FLOW_SAMPLER_NAMES = ("euler", "heun")                   # the ODE solvers of a flow model (lesson 12)


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a count of images or steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _finite_float(text: str) -> float:
    """argparse type: a finite number (NaN or inf would turn every image into NaN)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _check_out_file(out: str) -> Path:
    """Refuse, before any compute, an --out that cannot be written: a wrong suffix, a folder, or a folder
    that cannot be created or written."""
    path = Path(out).expanduser()
    if path.suffix not in (".png", ".pt"):
        raise SystemExit(f"error: --out must end in .png (a grid) or .pt (tensors), got {out!r}")
    if path.is_dir():
        raise SystemExit(f"error: --out {out} is a folder; give a file name ending in .png or .pt")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SystemExit(f"error: cannot create the folder of --out {out} ({e.strerror or e})")
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SystemExit(f"error: cannot write --out {out}: {path.parent} is not writable")
    return path


def _describe_model(folder: Path) -> str:
    """``FOLDER (cpu profile, 4000 of 4000 steps)``: which model a command uses."""
    from .checkpoints import read_json
    tr_path = Path(folder) / "training.json"
    if not tr_path.is_file():
        return str(folder)
    tr = read_json(tr_path)
    return f"{folder} ({tr.get('profile', '?')} profile, {tr.get('step', '?')} of {tr.get('steps', '?')} steps)"


def _profile_and_runtime(args):
    from .config import setup
    return setup(getattr(args, "profile", None))


def cmd_info(args) -> int:
    from . import paths
    profile, rt = _profile_and_runtime(args)
    print(f"course root: {paths.root()}\ncheckpoints: {paths.checkpoints_dir()}\nshipped weights: {paths.weights_dir()}")
    return 0


def cmd_train(args) -> int:
    from . import paths
    from .checkpoints import check_training_target
    from .models import REGISTRY
    from .train import TrainResult
    profile, rt = _profile_and_runtime(args)
    if args.steps is not None:
        field = {"classifier": "classifier_steps", "denoiser": "train_steps", "class": "class_train_steps",
                 "clip": "clip_steps", "text2image": "t2i_train_steps",
                 "text2image-lm": "lm_train_steps", "autoencoder": "ae_steps",
                 "latent": "latent_train_steps", "flow": "flow_train_steps",
                 "unclip": "unclip_decoder_steps"}[args.model]
        profile = profile.replace(**{field: args.steps})
    _, train_fn, _ = REGISTRY[args.model]
    out = Path(args.out).expanduser() if args.out else paths.default_checkpoint(args.model)
    if args.model == "unclip":                          # decoder/ and prior/ sub-checkpoints
        from .unclip_training import check_unclip_target
        check_unclip_target(out)
    else:
        check_training_target(out)                      # before the data, the clusters or any step
    try:
        res: TrainResult = train_fn(profile, out, rt, None, not args.no_progress)
    except (ValueError, FloatingPointError) as e:       # another config or schedule in --out, a NaN loss
        raise SystemExit(f"error: {e}")
    last = sum(res.losses[-50:]) / max(1, len(res.losses[-50:]))
    print(f"{args.model}: step {res.step}, loss {last:.4f}, {res.seconds:.0f} s this run "
          f"({res.items_per_s:.0f} examples/s), checkpoint in {res.out}")
    return 0


def _parse_labels(text: str | None, n: int):
    import torch
    if text is None:
        return None
    if text == "all":
        return torch.arange(n) % 10
    try:
        labels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"--labels must be 'all' or comma-separated digits like 0,1,7; got {text!r}")
    bad = [v for v in labels if not 0 <= v <= 9]
    if bad or not labels:
        raise SystemExit(f"--labels: {bad or text!r} out of range: labels are digits 0 to 9")
    if n < len(labels):
        raise SystemExit(f"--n {n} is smaller than the {len(labels)} labels asked for")
    return torch.tensor(labels).repeat_interleave(math.ceil(n / len(labels)))[:n]


def _save_images(images, labels, out: str) -> None:
    """Write a grid (``.png``) or ``(images, labels)`` tensors (``.pt``) to ``out``, which
    ``_check_out_file`` accepted before any compute (suffix, folder, permissions)."""
    import torch
    from .plotting import save_grid
    out_path = Path(out)
    if out_path.suffix == ".png":
        save_grid(images, out_path)
    else:
        torch.save((images.float().cpu().clamp(-1, 1), None if labels is None else labels.long().cpu()), out_path)
    print(f"wrote {len(images)} images to {out_path}")


def cmd_sample(args) -> int:
    import torch
    from .clusters import draw_clusters
    from .guidance import autoguided, guided
    from .models import load_unet
    from .flow import sample as flow_sample
    from .samplers import sample
    from .schedules import make_schedule
    out = _check_out_file(args.out)                     # before loading or sampling anything
    if _is_latent(args.checkpoint):                     # lesson 11: sample latents, decode them
        return _sample_latent(args, out)
    profile, rt = _profile_and_runtime(args)
    try:
        model, cfg = load_unet(args.checkpoint, rt.device)
        sizes = getattr(model, "cluster_sizes", None)      # the denoiser's k-means clusters
        if args.autoguidance is not None:
            model = autoguided(model, load_unet(args.checkpoint, rt.device, guide=True)[0], args.autoguidance)
    except FileNotFoundError as e:
        raise SystemExit(str(e))
    flow = cfg.get("objective") == "flow"
    sampler = args.sampler or ("euler" if flow else "ddim")
    if flow and sampler not in FLOW_SAMPLER_NAMES:
        raise SystemExit(f"error: {args.checkpoint} is a flow-matching model (it predicts a velocity): use "
                         f"--sampler euler or heun, not {sampler} (ddim and ddpm sample DDPM models)")
    if not flow and sampler in FLOW_SAMPLER_NAMES:
        raise SystemExit(f"error: {args.checkpoint} is a DDPM model (it predicts the noise): use --sampler ddim "
                         f"or ddpm, not {sampler} (euler and heun sample flow models, lesson 12)")
    labels = _parse_labels(args.labels, args.n)
    g = torch.Generator().manual_seed(args.seed)
    cond = labels
    if labels is not None:
        if not cfg.get("num_classes") or cfg.get("clusters"):
            raise SystemExit(f"{args.checkpoint} is an unconditional model: --labels needs a class model "
                             f"(python -m course_lib train class)")
        args.n = len(labels)
        default_w = profile.flow_guidance if flow else profile.guidance
        model = guided(model, args.guidance if args.guidance is not None else default_w)
        labels = cond = labels.to(rt.device)
    elif cfg.get("clusters"):              # the denoiser: a k-means cluster per sample, then self-guidance
        cond = draw_clusters(sizes, args.n, g, rt.device)
        if args.autoguidance is None:
            model = guided(model, args.guidance if args.guidance is not None else profile.self_guidance)
    frames, captions = [], []

    def keep(step: dict) -> None:                       # the reverse process, for --strip
        frames.append(step["x_t"].detach().cpu())
        captions.append(f"t={step['t']:.2f}" if flow else f"t={step['t']}")
    t0 = time.perf_counter()
    if flow:                                            # lesson 12: integrate the velocity from t = 1 to 0
        if args.eta is not None:
            raise SystemExit("error: --eta is DDIM's noise; the flow samplers are deterministic ODE solvers")
        images = flow_sample(model, args.n, sampler=sampler, steps=args.steps or profile.flow_steps,
                             generator=g, cond=cond, device=rt.device, callback=keep if args.strip else None)
    else:
        schedule = make_schedule(cfg["schedule"], cfg["T"], rt.device)
        images = sample(model, args.n, schedule, sampler=sampler, steps=args.steps, eta=args.eta,
                        generator=g, cond=cond, device=rt.device, callback=keep if args.strip else None)
    print(f"sampled {args.n} images from {_describe_model(Path(args.checkpoint))} with {sampler} "
          f"in {time.perf_counter() - t0:.1f} s")
    _save_images(images, labels, str(out))
    if args.strip:
        from .plotting import show_strip
        fig = show_strip(frames + [images.cpu()], captions + ["x0"], n=min(args.n, 8), max_frames=11)
        fig.savefig(args.strip, dpi=100)
        print(f"saved the reverse process ({len(frames)} steps, 11 shown) to {args.strip}")
    return 0


def _is_latent(folder: str) -> bool:
    from .checkpoints import read_json
    cfg_path = Path(folder) / "config.json"
    return cfg_path.is_file() and isinstance(cfg := read_json(cfg_path), dict) and cfg.get("kind") == "latent"


def _sample_latent(args, out: Path) -> int:
    """``sample`` for a latent diffusion model: guided latents, decoded by its autoencoder (lesson 11)."""
    import torch
    from .checkpoints import CheckpointError
    from .latent_training import load_latent
    if args.autoguidance is not None or args.strip:
        raise SystemExit("error: --autoguidance and --strip are for pixel models; a latent model samples "
                         "with --labels and --guidance")
    profile, rt = _profile_and_runtime(args)
    try:
        model = load_latent(args.checkpoint, rt.device)
    except (FileNotFoundError, CheckpointError) as e:
        raise SystemExit(f"error: {e}")
    sampler = args.sampler or "ddim"
    if sampler in FLOW_SAMPLER_NAMES:
        raise SystemExit(f"error: {args.checkpoint} is a DDPM model in latent space (it predicts the noise): use "
                         f"--sampler ddim or ddpm, not {sampler} (euler and heun sample flow models, lesson 12)")
    labels = _parse_labels(args.labels, args.n)
    t0 = time.perf_counter()
    images = model.generate(n=args.n, labels=labels, guidance=args.guidance if args.guidance is not None
                            else profile.guidance, steps=args.steps, sampler=sampler, eta=args.eta,
                            generator=torch.Generator().manual_seed(args.seed))
    print(f"sampled {len(images)} images from {_describe_model(Path(args.checkpoint))} with {sampler} "
          f"in latent space, decoded, in {time.perf_counter() - t0:.1f} s")
    _save_images(images, labels, str(out))
    return 0


def _text2image_folder(checkpoint: str | None, name: str = "text2image") -> Path:
    """``--checkpoint`` if given; else the user's text-to-image checkpoint (model ``name``) if it finished
    training, else the shipped weights (an interrupted run in checkpoints/ is not silently preferred: resume
    it first)."""
    from . import paths
    from .checkpoints import read_json
    if checkpoint is not None:
        return paths.find_model(name, checkpoint)
    mine = paths.default_checkpoint(name)
    if (mine / "training.json").is_file():
        tr = read_json(mine / "training.json")
        if tr.get("step", 0) >= tr.get("steps", float("inf")):
            return mine
        print(f"note: {mine} has not finished training (step {tr.get('step')} of {tr.get('steps')}); using the "
              f"shipped weights (resume it with python -m course_lib train {name})")
    return paths.find_model(name, paths.weights_dir() / name)


def cmd_generate(args) -> int:
    from .language_encoder import load_text_to_image
    from .plotting import save_grid
    _check_out_file(args.out)                           # before loading or sampling anything
    profile, rt = _profile_and_runtime(args)
    try:
        folder = _text2image_folder(args.checkpoint, args.model)
        pipe = load_text_to_image(folder, device=rt.device)       # lesson 08's or 09's, by its config.json
        print(f"model: {_describe_model(folder)}")
        t0 = time.perf_counter()
        images, labels = pipe.generate_with_labels(args.prompts, n_per_prompt=args.n, steps=args.steps,
                                                   guidance=args.guidance, seed=args.seed, sampler=args.sampler)
    except (ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    print(f"generated {len(images)} images for {len(args.prompts)} prompt(s) in {time.perf_counter() - t0:.1f} s")
    if args.out.endswith(".png"):                       # one row per prompt
        save_grid(images, args.out, nrow=args.n)
        print(f"wrote {len(images)} images to {args.out} (one row per prompt)")
    else:
        _save_images(images, labels, args.out)
    return 0


def cmd_weights(args) -> int:
    from .weights import make_weights
    unknown = [m for m in args.models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODEL_NAMES)}")
    profile, rt = _profile_and_runtime(args)
    make_weights(profile, rt, models=args.models or MODEL_NAMES)
    return 0


def cmd_course(args) -> int:
    from .book import run_course
    profile, rt = _profile_and_runtime(args)
    return run_course(profile, rt, lessons=args.lessons, force=args.force, out_dir=args.out, jobs=args.jobs)


def cmd_links(args) -> int:
    from .links import repository_url, sync
    out_of_date, problems = sync(check=args.check)
    setting = f"[project.urls] Repository = {repository_url()} (pyproject.toml)"
    if args.check and out_of_date:
        print(f"out of date with {setting}:\n  " + "\n  ".join(out_of_date)
              + "\nrun `python -m course_lib links` to regenerate them")
    elif out_of_date:
        print(f"regenerated from {setting}:\n  " + "\n  ".join(out_of_date))
    else:
        print(f"the README's lesson table and every lesson's COURSE_REPO match {setting}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems or (args.check and out_of_date) else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--profile", choices=("test", "cpu", "gpu"), help="default: COURSE_PROFILE, else auto")
        return sp

    sp = add("info", "print the active profile, device, precision and folders")
    sp.set_defaults(func=cmd_info)

    sp = add("train", "train one model (resuming if --out holds a checkpoint of the same config)")
    sp.add_argument("model", choices=MODEL_NAMES)
    sp.add_argument("--steps", type=_positive_int, help="total optimizer steps (default: the profile's)")
    sp.add_argument("--out", help="checkpoint folder (default: checkpoints/<model>/, or $COURSE_HOME/<model>/)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_train)

    sp = add("sample", "sample images from a denoiser or class model checkpoint")
    sp.add_argument("--checkpoint", required=True, help="a model folder (e.g. checkpoints/denoiser)")
    sp.add_argument("--n", type=_positive_int, default=16, help="number of images (default 16)")
    sp.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default: sampler's default)")
    sp.add_argument("--sampler", choices=("ddpm", "ddim") + FLOW_SAMPLER_NAMES, default=None,
                    help="ddim (default) or ddpm for DDPM models; euler (default) or heun for flow models")
    sp.add_argument("--eta", type=_non_negative_float, default=None, help="DDIM eta (0: deterministic)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--labels", help="class model only: 'all' (balanced over 0-9) or digits like 0,1,7")
    sp.add_argument("--guidance", type=_finite_float, default=None,
                    help="guidance scale w: class models towards the label (default: the profile's, 3); "
                         "the denoiser towards a drawn k-means cluster (default 2; 1: no guidance)")
    sp.add_argument("--out", required=True, help="FILE.png (a grid) or FILE.pt (images, labels)")
    sp.add_argument("--autoguidance", type=_finite_float, default=None,
                    help="autoguidance scale w (a denoiser trained with a guide, e.g. 2): steer away from the "
                         "model's early weights")
    sp.add_argument("--strip", default=None,
                    help="also save FILE.png: the reverse process of the first 8 images, static to digit")
    sp.set_defaults(func=cmd_sample)

    sp = add("generate", "text to image: generate digits for prompts (a .pt holds (images, labels))")
    sp.add_argument("prompts", nargs="+", help='prompts such as "a thin two" "a 9"')
    sp.add_argument("--checkpoint", default=None,
                    help="a text2image or text2image-lm folder (default: checkpoints/MODEL, else the shipped "
                         "weights)")
    sp.add_argument("--model", choices=TEXT_TO_IMAGE, default="text2image",
                    help="without --checkpoint: which model (text2image-lm: the language model as text encoder, "
                         "any words; default text2image, the course CLIP's closed vocabulary)")
    sp.add_argument("-n", type=_positive_int, default=16, help="images per prompt (default 16)")
    sp.add_argument("--guidance", type=_finite_float, default=None, help="guidance scale w (default: the model's, 3)")
    sp.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default: the model's profile's)")
    sp.add_argument("--sampler", choices=("ddim", "ddpm"), default="ddim")
    sp.add_argument("--seed", type=int, default=0, help="the same seed gives every prompt the same start noises")
    sp.add_argument("-o", "--out", required=True, help="FILE.png (one row per prompt) or FILE.pt (images, labels)")
    sp.set_defaults(func=cmd_generate)

    sp = add("weights", "train every model for the profile (resuming) and refresh data/weights/")
    sp.add_argument("models", nargs="*", help=f"some of {', '.join(MODEL_NAMES)} (default: all)")
    sp.set_defaults(func=cmd_weights)

    sp = add("course", "train what is missing, execute every lesson into build/, render build/index.html")
    sp.add_argument("--lessons", nargs="*", help="only these lessons (file names or numbers)")
    sp.add_argument("--force", action="store_true", help="re-execute lessons even if unchanged")
    sp.add_argument("--out", default=None, help="output folder (default: build/ in the course folder)")
    sp.add_argument("--jobs", type=_positive_int, default=None,
                    help="lessons executed at once (default: 2 on a CPU with 2 or more cores, 1 on a GPU; "
                         "or COURSE_JOBS)")
    sp.set_defaults(func=cmd_course)

    help_ = ("regenerate the README's lesson table (an Open-in-Colab link per lesson) and every lesson's "
             "COURSE_REPO line from [project.urls] Repository in pyproject.toml")
    sp = sub.add_parser("links", help=help_, description=help_)
    sp.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 listing what is out of date with the setting")
    sp.set_defaults(func=cmd_links)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        if args.command in ("train", "weights", "course"):
            print("\ninterrupted: checkpoints written so far are kept; run the same command again to resume.")
        else:
            print("\ninterrupted: nothing was written.")
        return 130
    except ValueError as e:            # bad input: a clear one-line error, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
