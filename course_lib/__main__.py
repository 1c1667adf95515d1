"""The course's command line: python -m course_lib COMMAND --help shows each command's options.

    train MODEL   train one model, or resume its interrupted training; MODEL is one of the registry's names
                  (course_lib/registry.py: classifier, denoiser, class, clip, text2image, ...)
    sample        draw digits from the denoiser or a class, flow or latent model, for example
                    sample --checkpoint data/weights/class --labels all -n 16 --sampler ddim -o grid.png
                    sample --checkpoint data/weights/flow --labels 3 --sampler heun --guidance 2 -o threes.png
                    sample --checkpoint data/weights/latent --labels all -n 1000 -o samples.pt
    generate      text to image: digits for prompts, for example
                    generate "a thin two" "a 9" -n 16 --guidance 3 -o grid.png
                    generate "a fat seven" --model text2image-lm -n 16 -o grid.png   (any English words)
                    generate "a thin two" --model unclip -n 8 -o grid.png
                    generate "a fat seven" --model mini-sd3 -n 16 -o grid.png   (lesson 13's MMDiT)
    weights       train every model for the active profile and refresh data/weights/
    course        train what is missing, execute every lesson into build/, render the course book
    info          the active profile, device, precision, each model's sampling defaults and the folders
    links         regenerate the README's lesson table (Colab links) and each lesson's set-up cell; --check

A refused input prints one line starting with "error:" and exits with status 2, as a wrong option does.
The sample and generate commands load the model's pipeline (course_lib.load_pipeline) and call it: the images are
those of load_pipeline(FOLDER)(labels=..., steps=..., seed=...) in Python, and the sampling defaults
(sampler, steps, guidance) are the model folder's, which the options override.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from .registry import MODELS, SAMPLEABLE, TEXT_TO_IMAGE     # the names, without torch

MODEL_NAMES = tuple(MODELS)                              # `train` and `weights`
FLOW_SAMPLER_NAMES = ("euler", "heun")                   # the ODE solvers of a flow model (lesson 12)
MAX_SEED = 2 ** 63 - 1                                   # what torch.Generator.manual_seed takes


class CommandError(Exception):
    """A refused input, raised by a command; ``main`` turns it (and any ValueError) into ``Refused``."""


class Refused(SystemExit):
    """What ``main`` raises for a refused input once it has printed ``error: <message>`` on stderr: exit
    status 2, as argparse gives for a wrong option, with the message in ``str()`` for callers in Python."""

    def __init__(self, message: str):
        super().__init__(message)
        self.code = 2                      # the status; the interpreter prints nothing more


def _positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a count of images or steps)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seed(text: str) -> int:
    """argparse type: a seed torch accepts, 0 to 2^63 - 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be a whole number from 0 to 2^63 - 1, got {text}")
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


def _scale(text: str) -> float:
    """argparse type: a guidance scale, as ``guidance.check_scale`` takes it (finite, and not so large that the
    sampler overflows); torch is imported only when the option is given."""
    value = _finite_float(text)
    from .diffusion.guidance import check_scale
    try:
        return check_scale(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("the guidance scale w ")) from None


def _non_negative_float(text: str) -> float:
    value = _finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def _a(word: str) -> str:
    """``an unclip``, ``a flow``: the article for a model's name."""
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def _model_folder(given: str) -> tuple[Path, str, dict]:
    """``--checkpoint``: the folder (``~`` expanded), what it holds (``store.model_kind``) and its config; a one-line
    error if it holds no ``config.json``, an unreadable one, or one of no kind this course knows."""
    from .store import read_model_config
    folder = Path(given).expanduser()
    try:
        cfg, kind = read_model_config(folder)
    except FileNotFoundError as e:
        raise CommandError(str(e)) from None
    return folder, kind, cfg


def _describe_model(folder: Path) -> str:
    """``FOLDER (cpu profile, 4000 of 4000 steps)``: which model a command uses."""
    from .store import read_json
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
    from .registry import GENERATIVE, finished_folder
    from .store import CheckpointError, read_json
    profile, rt = _profile_and_runtime(args)
    print("sampling defaults (each model folder's config.json; --sampler, --steps and --guidance override them):")
    for name in GENERATIVE:
        folder = finished_folder(name)
        try:
            sampling = read_json(folder / "config.json").get("sampling") if (folder / "config.json").is_file() else None
        except (CheckpointError, AttributeError):
            sampling = None
        told = ", ".join(f"{k} {v}" for k, v in sampling.items()) if isinstance(sampling, dict) else "none recorded"
        print(f"  {name:<14} {told}  ({folder})")
    print(f"course root: {paths.root()}\ncheckpoints: {paths.checkpoints_dir()}\n"
          f"shipped weights: {paths.weights_dir()}")
    return 0


def cmd_train(args) -> int:
    from . import paths
    from .training.checkpoints import check_training_target
    profile, rt = _profile_and_runtime(args)
    spec = MODELS[args.model]
    if args.steps is not None:
        profile = spec.with_steps(profile, args.steps)
    out = Path(args.out).expanduser().resolve() if args.out else paths.default_checkpoint(args.model)
    if args.model == "unclip":                          # decoder/ and prior/ sub-checkpoints
        from .training.unclip import check_unclip_target
        check_unclip_target(out)
    else:
        check_training_target(out)                      # before the data, the clusters or any step
    try:
        res = spec.train(profile, out, rt, None, not args.no_progress)
    except FloatingPointError as e:                     # a NaN loss: not a refused input (status 1)
        raise SystemExit(f"error: {e}")
    last = sum(res.losses[-50:]) / max(1, len(res.losses[-50:]))
    print(f"{args.model}: step {res.step}, loss {last:.4f}, {res.seconds:.0f} s this run "
          f"({res.items_per_s:.0f} examples/s), checkpoint in {res.out}")
    return 0


def _parse_labels(text: str | None, n: int) -> list[int] | None:
    """``--labels``: None, or n digits (``all``: 0-9 in turn; ``1,7``: each repeated in blocks)."""
    if text is None:
        return None
    if text.strip() == "all":
        return [i % 10 for i in range(n)]
    if not text.replace(",", "").strip():
        raise CommandError(f"--labels is empty ({text!r}): give 'all' or digits like 0,1,7")
    try:
        labels = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise CommandError(f"--labels must be 'all' or comma-separated digits like 0,1,7; got {text!r}") from None
    bad = [v for v in labels if not 0 <= v <= 9]
    if bad:
        raise CommandError(f"--labels: {bad} out of range: labels are digits 0 to 9")
    if n < len(labels):
        raise CommandError(f"-n {n} is smaller than the {len(labels)} labels asked for")
    return [v for v in labels for _ in range(math.ceil(n / len(labels)))][:n]


def _write(images, labels, out: Path, nrow: int | None = None, note: str = "") -> None:
    """Write a pipeline's images (checked finite, in [-1, 1]) to ``out`` (the path ``paths.check_output_file``
    returned): a grid (``.png``) or ``(images, labels)`` tensors (``.pt``)."""
    import torch

    from .plotting import save_grid
    if out.suffix == ".png":
        save_grid(images, out, **({} if nrow is None else {"nrow": nrow}))
    else:
        torch.save((images.float().cpu().clamp(-1, 1), None if labels is None else labels.long().cpu()), out)
    print(f"wrote {len(images)} images to {out}{note}")


def _check_sample_options(args, folder: Path, kind: str | None, cfg: dict, labels) -> str:
    """Every ``sample`` option against the model, from its config alone, before loading anything: the sampler
    (returned), and no option that this model would silently ignore."""
    name = args.checkpoint
    if kind in TEXT_TO_IMAGE:
        raise CommandError(f"{name} holds {_a(kind)} model, which draws digits for prompts: use python -m "
                           f"course_lib generate \"a thin two\" --checkpoint {name} -o grid.png")
    if kind in MODELS and MODELS[kind].pipeline is None:          # the classifier, CLIP, the autoencoder
        raise CommandError(f"{name} holds {_a(kind)} model, which does not sample digits: pass the denoiser or a "
                           f"class, flow or latent model (e.g. data/weights/class)")
    flow = kind == "flow"
    saved = cfg.get("sampling") if isinstance(cfg.get("sampling"), dict) else {}
    sampler = args.sampler or saved.get("sampler") or ("euler" if flow else "ddim")     # the folder's default
    if flow and sampler not in FLOW_SAMPLER_NAMES:
        raise CommandError(f"{name} is a flow-matching model (it predicts a velocity): use --sampler euler or "
                           f"heun, not {sampler} (ddim and ddpm sample DDPM models)")
    if not flow and sampler in FLOW_SAMPLER_NAMES:
        what = "a DDPM model in latent space" if kind == "latent" else "a DDPM model"
        raise CommandError(f"{name} is {what} (it predicts the noise): use --sampler ddim or ddpm, not {sampler} "
                           f"(euler and heun sample flow models, lesson 12)")
    if flow and args.eta is not None:
        raise CommandError("--eta is DDIM's noise; the flow samplers are deterministic ODE solvers")
    if kind == "latent" and (args.autoguidance is not None or args.strip):
        raise CommandError("--autoguidance and --strip are for pixel models; a latent model samples with "
                           "--labels and --guidance")
    if labels is not None and (kind in ("denoiser", "unet") or not cfg.get("num_classes")):
        raise CommandError(f"{name} is an unconditional model: --labels needs a class model "
                           f"(python -m course_lib train class)")
    if args.autoguidance is not None and not (folder / "guide.safetensors").is_file():
        if kind in ("denoiser", "unet"):
            raise CommandError(f"{name} has no guide.safetensors: its training stopped before the profile's "
                               f"guide_step, so no guide was kept; train the denoiser longer "
                               f"(python -m course_lib train denoiser) to get one")
        raise CommandError(f"--autoguidance steers the denoiser away from its own early weights "
                           f"(guide.safetensors); {name} is {_a(kind)} model, trained without them: "
                           f"guide it with --labels and --guidance")
    if args.autoguidance is not None and args.guidance is not None and labels is None:
        raise CommandError("--guidance and --autoguidance both set how the denoiser is guided (towards a drawn "
                           "cluster, or away from its early weights): give one of them")
    if args.guidance is not None and labels is None and kind != "denoiser":
        raise CommandError(f"--guidance steers towards the digits of --labels; without --labels {name} samples "
                           f"unconditionally and would ignore it: add --labels (e.g. --labels all) or drop "
                           f"--guidance")
    return sampler


def cmd_sample(args) -> int:
    from . import paths
    out = paths.check_output_file(args.out)             # before loading or sampling anything
    strip = paths.check_output_file(args.strip, "--strip", (".png",)) if args.strip else None
    folder, kind, cfg = _model_folder(args.checkpoint)
    labels = _parse_labels(args.labels, args.n)
    sampler = _check_sample_options(args, folder, kind, cfg, labels)
    pipe, rt = _load_pipeline(args, folder)
    frames, captions = [], []

    def keep(step: dict) -> None:                       # the reverse process, for --strip
        frames.append(step["x_t"].detach().cpu())
        captions.append(f"t={step['t']:.2f}" if kind == "flow" else f"t={step['t']}")
    options = dict(steps=args.steps, guidance=args.guidance, sampler=sampler, eta=args.eta, seed=args.seed,
                   callback=keep if strip else None)
    t0 = time.perf_counter()
    if kind in ("denoiser", "unet"):                    # n images, guided towards drawn clusters (or autoguided)
        images = pipe(args.n, autoguidance=args.autoguidance, **options)
    else:                                               # one image per label, or n unconditional ones
        images = pipe(labels=labels, n=None if labels is not None else args.n, **options)
    where = " in latent space, decoded," if kind == "latent" else ""
    print(f"sampled {len(images)} images from {_describe_model(folder)} with {sampler}{where} in "
          f"{time.perf_counter() - t0:.1f} s")
    _write(images, None if labels is None else _tensor(labels), out)
    if strip:
        import matplotlib.pyplot as plt

        from .plotting import show_strip
        fig = show_strip(frames + [images], captions + ["x0"], n=min(len(images), 8), max_frames=11)
        fig.savefig(strip, dpi=100)
        plt.close(fig)
        print(f"saved the reverse process ({len(frames)} steps, 11 shown) to {strip}")
    return 0


def _tensor(values):
    import torch
    return torch.tensor(values)


def _load_pipeline(args, folder: Path):
    """``load_pipeline(folder)`` on the runtime's device; a missing or damaged file is a one-line error."""
    from .registry import load_pipeline
    from .store import CheckpointError
    _, rt = _profile_and_runtime(args)
    try:
        return load_pipeline(folder, rt.device), rt
    except (FileNotFoundError, CheckpointError) as e:
        raise CommandError(str(e)) from None


def _check_generate_options(args) -> str:
    """``generate``'s prompts and model before loading anything: which model (returned)."""
    for p in args.prompts:
        if not p.strip():
            raise CommandError(f"empty prompt {p!r}: describe a digit, e.g. 'a thin two'")
    if args.checkpoint is None or not (Path(args.checkpoint).expanduser() / "config.json").is_file():
        return _check_generate_sampler(args, args.model or "text2image")   # paths.find_model says where it looked
    name = args.checkpoint
    _, kind, _ = _model_folder(name)
    if kind in (*SAMPLEABLE, "unet"):
        raise CommandError(f"{name} holds {_a(kind if kind != 'unet' else 'UNet')} model, which takes no prompt: "
                           f"use python -m course_lib sample --checkpoint {name} -o grid.png")
    if kind not in TEXT_TO_IMAGE:
        raise CommandError(f"{name} holds {_a(kind)} model, not a text-to-image one "
                           f"({', '.join(TEXT_TO_IMAGE)})")
    if args.model is not None and args.model != kind:
        raise CommandError(f"--model {args.model} and --checkpoint {name} disagree: that folder holds {_a(kind)} "
                           f"model; give one of them")
    return _check_generate_sampler(args, kind)


def _check_generate_sampler(args, kind: str) -> str:
    """``--sampler`` against the model: euler / heun for the flow model mini-sd3, ddim / ddpm for the others."""
    flow = kind == "mini-sd3"
    if args.sampler is not None and (args.sampler in FLOW_SAMPLER_NAMES) != flow:
        what = "a flow-matching model: use --sampler euler or heun" if flow else "a DDPM model: use ddim or ddpm"
        raise CommandError(f"{kind} is {what}, not --sampler {args.sampler}")
    return kind


def cmd_generate(args) -> int:
    from . import paths
    from .registry import finished_folder
    out = paths.check_output_file(args.out)             # before loading or sampling anything
    model_name = _check_generate_options(args)
    try:                                                # --checkpoint, else a finished checkpoint, else shipped
        folder = paths.find_model(model_name, Path(args.checkpoint).expanduser() if args.checkpoint is not None
                                  else finished_folder(model_name))
    except FileNotFoundError as e:
        raise CommandError(str(e)) from None
    pipe, rt = _load_pipeline(args, folder)             # lesson 08's, 09's or 10's, by its config.json
    print(f"model: {_describe_model(folder)}")
    t0 = time.perf_counter()
    images, labels = pipe.generate_with_labels(args.prompts, n_per_prompt=args.n, steps=args.steps,
                                               guidance=args.guidance, seed=args.seed, sampler=args.sampler)
    print(f"generated {len(images)} images for {len(args.prompts)} prompt(s) in {time.perf_counter() - t0:.1f} s")
    if out.suffix == ".png":
        _write(images, labels, out, nrow=args.n, note=" (one row per prompt)")
    else:
        _write(images, labels, out)
    return 0


def cmd_weights(args) -> int:
    from .course.weights import make_weights
    unknown = [m for m in args.models if m not in MODEL_NAMES]
    if unknown:
        raise ValueError(f"unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODEL_NAMES)}")
    profile, rt = _profile_and_runtime(args)
    make_weights(profile, rt, models=args.models or MODEL_NAMES)
    return 0


def cmd_course(args) -> int:
    from . import paths
    out = paths.check_output_folder(args.out) if args.out else None     # before any model or lesson
    from .course.book import run_course
    profile, rt = _profile_and_runtime(args)
    return run_course(profile, rt, lessons=args.lessons, force=args.force, out_dir=out, jobs=args.jobs)


def cmd_links(args) -> int:
    from .course.links import repository_url, sync
    out_of_date, problems = sync(check=args.check)
    setting = f"[project.urls] Repository = {repository_url()} (pyproject.toml)"
    if args.check and out_of_date:
        print(f"out of date with {setting}:\n  " + "\n  ".join(out_of_date)
              + "\nrun `python -m course_lib links` to regenerate them")
    elif out_of_date:
        print(f"regenerated from {setting}:\n  " + "\n  ".join(out_of_date))
    else:
        print(f"the README's lesson table and every lesson's Colab set-up cell match {setting}")
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    return 1 if problems or (args.check and out_of_date) else 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    p = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, help_):
        sp = sub.add_parser(name, help=help_, description=help_)
        sp.add_argument("--profile", choices=("test", "cpu", "gpu"), help="default: COURSE_PROFILE, else auto")
        return sp

    sp = add("info", "print the active profile, device, precision, sampling defaults and folders")
    sp.set_defaults(func=cmd_info)

    sp = add("train", "train one model (resuming if --out holds a checkpoint of the same config)")
    sp.add_argument("model", choices=MODEL_NAMES)
    sp.add_argument("--steps", type=_positive_int, help="total optimizer steps (default: the profile's)")
    sp.add_argument("--out", help="checkpoint folder (default: checkpoints/MODEL, or COURSE_HOME/MODEL)")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar")
    sp.set_defaults(func=cmd_train)

    sp = add("sample", "sample digits from the denoiser or a class, flow or latent model")
    sp.add_argument("--checkpoint", required=True, metavar="DIR",
                    help="a model folder: the denoiser, or a class, flow or latent model (e.g. data/weights/class)")
    sp.add_argument("-n", "--n", type=_positive_int, default=16, help="number of images (default 16)")
    sp.add_argument("--steps", type=_positive_int, default=None,
                    help="sampling steps (default: the model's, from its folder's config.json)")
    sp.add_argument("--sampler", choices=("ddpm", "ddim") + FLOW_SAMPLER_NAMES, default=None,
                    help="ddim or ddpm for the denoiser, class and latent models; euler or heun for flow "
                         "models (default: the model's, ddim or euler)")
    sp.add_argument("--eta", type=_non_negative_float, default=None,
                    help="the noise of each step: DDIM's eta (default 0, deterministic) or DDPM's variance scale "
                         "(default 1); not for flow models")
    sp.add_argument("--seed", type=_seed, default=0, help="the seed of the start noise (default 0)")
    sp.add_argument("--labels", help="class, flow or latent models: 'all' (0 to 9 in turn) or digits like 0,1,7")
    sp.add_argument("--guidance", type=_scale, default=None, metavar="W",
                    help="guidance scale w (0: unconditional, 1: conditional, larger: stronger). With --labels: "
                         "towards the label; for the denoiser: towards a drawn k-means cluster (1: none). "
                         "Default: the model's, which python -m course_lib info shows")
    sp.add_argument("-o", "--out", required=True, metavar="FILE", help="FILE.png (a grid) or FILE.pt (images, labels)")
    sp.add_argument("--autoguidance", type=_scale, default=None, metavar="W",
                    help="the denoiser only: autoguidance scale w (e.g. 2), which steers away from the model's "
                         "early weights kept in guide.safetensors; instead of --guidance")
    sp.add_argument("--strip", default=None, metavar="FILE",
                    help="also save FILE.png: the reverse process of the first 8 images, from static to digit "
                         "(not for latent models)")
    sp.set_defaults(func=cmd_sample)

    sp = add("generate", "text to image: generate digits for prompts (a .pt file holds images and labels)")
    sp.add_argument("prompts", nargs="+", help='prompts such as "a thin two" "a 9"')
    sp.add_argument("--checkpoint", default=None, metavar="DIR",
                    help="a text2image, text2image-lm, unclip or mini-sd3 folder (default: checkpoints/MODEL if it finished "
                         "training, else the shipped weights of --model)")
    sp.add_argument("--model", choices=TEXT_TO_IMAGE, default=None,
                    help="without --checkpoint: which model. text2image (default): the course CLIP, a closed "
                         "vocabulary; text2image-lm: a language model reads the prompt, any English words; "
                         "unclip: a prior turns the prompt into a CLIP image embedding first; mini-sd3: lesson 13's "
                         "MMDiT on latents, flow matching, any English words")
    sp.add_argument("-n", "--n", type=_positive_int, default=16, help="images per prompt (default 16)")
    sp.add_argument("--guidance", type=_scale, default=None, metavar="W",
                    help="guidance scale w (default: the model's)")
    sp.add_argument("--steps", type=_positive_int, default=None, help="sampling steps (default: the model's)")
    sp.add_argument("--sampler", choices=("ddim", "ddpm") + FLOW_SAMPLER_NAMES, default=None,
                    help="ddim (default) or ddpm; euler (default: the model folder's) or heun for mini-sd3")
    sp.add_argument("--seed", type=_seed, default=0,
                    help="the same seed gives every prompt the same start noises (default 0)")
    sp.add_argument("-o", "--out", required=True, metavar="FILE",
                    help="FILE.png (one row per prompt) or FILE.pt (images, labels)")
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
             "Colab set-up cell (its repository: [project.urls] Repository in pyproject.toml)")
    sp = sub.add_parser("links", help=help_, description=help_)
    sp.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 listing what is out of date with the setting")
    sp.set_defaults(func=cmd_links)
    return p


def _refuse(message: str) -> Refused:
    """Print a refused input's one line on stderr, starting with ``error:``, and return ``Refused`` to raise."""
    message = message if message.startswith("error:") else f"error: {message}"
    print(message, file=sys.stderr)
    return Refused(message)


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
    except (CommandError, ValueError) as e:     # bad input: a clear one-line error, no traceback, status 2
        raise _refuse(str(e)) from None


if __name__ == "__main__":
    sys.exit(main())
