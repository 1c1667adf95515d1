"""The course's trained models, in one registry: one ``ModelSpec`` per name, the only list of model names.

    name           what                                                 lesson  pipeline (load_pipeline)
    classifier     small MNIST classifier used to *measure* samples      04     -
    denoiser       unconditional UNet told k-means clusters (no labels)  03-04  DenoiserPipeline
    class          class-conditional UNet (classifier-free guidance)     05     ClassToImage
    clip           CLIP on captioned digits (transformers classes)       07     -
    text2image     text-conditional UNet + the frozen CLIP text side     08     TextToImage
    text2image-lm  the same with a frozen language model: any words      09     TextToImageLM
    unclip         CLIP image-embedding decoder + diffusion prior        10     UnCLIP
    autoencoder    KL autoencoder, 28x28x1 <-> 7x7xC latents             11     -
    latent         class-conditional UNet on the autoencoder's latents   11     LatentDiffusion
    flow           class-conditional UNet, flow matching (velocity)      12     FlowToImage
    mini-sd3       MMDiT on the latents, flow matching, frozen MiniLM    13     MiniSD3Pipeline
    speedrun       the fastest recipe to good digits on 2 CPU cores      12     FlowToImage

``MODELS`` is read by the command line (its choices), ``make weights``, the course book, the tests and the
benchmarks. Each ``ModelSpec`` names its recipe (config, train and sampling-defaults functions in
``training/``), the pipeline that samples it, what it builds on (``needs``) and how ``make weights``
measures it. Modules are imported only when a spec's function is first called, so reading the names needs
no torch.

``get_model(name, profile)`` is what lessons call: the user's checkpoint if it matches the profile's config
and finished training, else the shipped reference weights if they match, else (``find_usable``) the finished
model of the profile's ``fallback`` (the ``gpu`` profile's is ``cpu``: its shipped weights, with a one-line
note, so a fresh Colab runtime does not retrain in every lesson what the lesson only uses), else it trains
(resuming any partial checkpoint). It returns the pipeline for text2image, text2image-lm, unclip and latent,
and the network for the others (the denoiser, class and flow UNets, which lessons 03-05 and 12 sample step by
step). ``load_pipeline(name_or_folder)`` returns the pipeline of any of the generative models (eight with the speedrun).
"""
from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from . import paths

__all__ = ["ModelSpec", "MODELS", "GENERATIVE", "TEXT_TO_IMAGE", "SAMPLEABLE", "find_matching", "find_usable",
           "train_missing", "get_guide", "get_model", "finished_folder", "load_pipeline", "pipeline_class"]


# --------------------------------------------------------------------------- the registry
class _Lazy:
    """``course_lib.<module>.<attr>``, imported on first use; calling it calls the attribute."""

    def __init__(self, module: str, attr: str):
        self.module, self.attr = module, attr

    def get(self) -> Any:
        return getattr(importlib.import_module(f"course_lib.{self.module}"), self.attr)

    def __call__(self, *args, **kwargs):
        return self.get()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"course_lib.{self.module}.{self.attr}"


def _lazy(module: str, attr: str) -> _Lazy:
    return _Lazy(module, attr)


@dataclass(frozen=True)
class ModelSpec:
    """One trained model of the course.

    Attributes:
        name, lesson, what: the registry name, the lesson that trains it, the model in words.
        config: ``config(profile) -> dict``, the model config training writes (``find_matching`` compares it).
        train: ``train(profile, out, runtime, steps, progress) -> TrainResult``.
        recipe: (its recipe module in ``training/``, the field of that recipe's config holding its training
            steps): ``steps(profile)``, ``with_steps``, and ``sampling(profile)`` (the recipe's
            ``sampling_defaults(profile)[name]``: what training writes into the folder's ``config.json``).
        pipeline: the pipeline class (``from_pretrained``) of a generative model, else None.
        load: what ``get_model`` returns, ``load(folder, device)`` (default: the pipeline).
        needs: the models it builds on (``latent`` -> ``autoencoder``, ``text2image`` -> ``clip``).
        measure: how ``make weights`` measures it, ``measure(model, profile, runtime) -> dict``.
        takes: what its pipeline's call is conditioned on: "labels", "prompts" or "n" (None: no pipeline).
    """
    name: str
    lesson: str
    what: str
    config: _Lazy
    train: _Lazy
    recipe: tuple[str, str]
    measure: Callable
    takes: str | None = None
    pipeline: _Lazy | None = None
    network: Any = None
    needs: tuple[str, ...] = ()

    def _recipe(self):
        return importlib.import_module(f"course_lib.training.{self.recipe[0]}")

    def steps(self, profile) -> int:
        """The profile's training steps for this model (its recipe's field)."""
        return getattr(self._recipe().recipe_config(profile), self.recipe[1])

    def with_steps(self, profile, steps: int):
        """``profile`` with this model trained for ``steps`` steps (its recipe's field changed)."""
        return profile.with_recipe(self.recipe[0], **{self.recipe[1]: steps})

    def sampling(self, profile) -> dict:
        """How this generative model samples by default under ``profile`` (sampler, steps, guidance, ...)."""
        defaults = getattr(self._recipe(), "sampling_defaults", None)
        if self.pipeline is None or defaults is None or self.name not in defaults(profile):
            raise ValueError(f"{self.name!r} does not generate images: no sampling defaults")
        return defaults(profile)[self.name]

    def load(self, folder: str | Path, device="cpu"):
        """What ``get_model`` returns: the network (``network``) or else the pipeline, from ``folder``."""
        if self.network is not None:
            return self.network(folder, device)
        return self.pipeline.get().from_pretrained(folder, device)


# --------------------------------------------------------------------------- how `make weights` measures each
def measure_labels(pipe, profile, rt) -> dict:
    """The class, flow and latent models: ``profile.n_eval`` images for labels 0-9 in turn, sampled by the
    pipeline with its folder's defaults (seed 0): how many are confident, and of the asked digit."""
    import torch

    from .measures.metrics import evaluate_samples
    clf = get_model("classifier", profile, rt, progress=False)
    labels = torch.arange(profile.n_eval) % 10
    ev = evaluate_samples(clf, pipe(labels=labels, seed=0), labels)
    s = pipe.sampling
    return {"confident": round(float(ev["confident"]), 4), "accuracy": round(float(ev["accuracy"]), 4),
            "n": profile.n_eval, "sampler": f"{s['sampler']}-{s['steps']}", "guidance": s["guidance"]}


def measure_clusters(pipe, profile, rt) -> dict:
    """The denoiser: ancestral sampling on a respaced chain (twice the folder's steps, as ``bench/``), without
    guidance (the plain mixture) and with the folder's self-guidance towards each drawn cluster."""
    from .measures.metrics import evaluate_samples
    clf = get_model("classifier", profile, rt, progress=False)
    steps, w = 2 * pipe.sampling["steps"], pipe.sampling["guidance"]
    out = {"n": profile.n_eval, "sampler": f"ddpm-{steps}"}
    for key, scale in (("confident_mixture", 1.0), ("confident", w)):
        x = pipe(profile.n_eval, sampler="ddpm", steps=steps, guidance=scale, seed=0)
        out[key] = round(float(evaluate_samples(clf, x)["confident"]), 4)
    out["self_guidance"] = w
    return out


def measure_prompts(pipe, profile, rt) -> dict:
    """The text-to-image models: how often the classifier reads the digit a prompt names."""
    from .training.text2image import prompt_accuracy
    return {"prompt_digit_accuracy": round(float(prompt_accuracy(pipe, profile, rt)), 4)}


def measure_prompts_at_folder_steps(pipe, profile, rt) -> dict:
    """A text-to-image model whose sampler differs from the profile's (mini-sd3: Euler, its folder's steps)."""
    from .training.text2image import prompt_accuracy
    s = pipe.sampling
    return {"prompt_digit_accuracy": round(float(prompt_accuracy(pipe, profile.replace(sample_steps=s["steps"]),
                                                                 rt)), 4),
            "sampler": f"{s['sampler']}-{s['steps']}", "guidance": s["guidance"]}


def measure_prompts_and_shortcut(pipe, profile, rt) -> dict:
    """unCLIP: prompt accuracy through the prior, and through the text-embedding shortcut."""
    from .training.text2image import prompt_accuracy
    return {**measure_prompts(pipe, profile, rt),
            "text_shortcut_accuracy": round(float(prompt_accuracy(pipe.using("text"), profile, rt)), 4)}


def measure_test_accuracy(model, profile, rt) -> dict:
    from .training.classifier import classifier_test_accuracy
    return {"test_accuracy": round(classifier_test_accuracy(model, profile), 4)}


def measure_zero_shot(model, profile, rt) -> dict:
    from .training.clip import zero_shot_accuracy
    return {"zero_shot_accuracy": round(float(zero_shot_accuracy(model, profile, rt)), 4)}


def measure_reconstruction(model, profile, rt) -> dict:
    from .training.latent import reconstruction_accuracy
    return {"reconstruction_accuracy": round(reconstruction_accuracy(model, profile, rt), 4)}


def _unet(folder: str | Path, device="cpu"):
    """The UNet of a denoiser or class model folder (EMA weights, eval mode), as lessons 03-05 sample it."""
    from .networks.unet import load_unet
    return load_unet(folder, device)[0]


_SPECS = (
    ModelSpec("classifier", "04", "small MNIST classifier used to measure samples",
              _lazy("training.classifier", "classifier_config"), _lazy("training.classifier", "train_classifier"),
              ("classifier", "steps"), measure_test_accuracy, network=_lazy("networks.classifier", "load_classifier")),
    ModelSpec("denoiser", "03", "unconditional UNet told k-means clusters of the digits (no labels)",
              _lazy("training.denoiser", "denoiser_config"), _lazy("training.denoiser", "train_denoiser"),
              ("denoiser", "steps"), measure_clusters, pipeline=_lazy("pipelines.class_to_image", "DenoiserPipeline"), takes="n",
              network=_unet),
    ModelSpec("class", "05", "class-conditional UNet (classifier-free guidance)",
              _lazy("training.denoiser", "class_config"), _lazy("training.denoiser", "train_class_model"),
              ("denoiser", "class_steps"), measure_labels, pipeline=_lazy("pipelines.class_to_image", "ClassToImage"), takes="labels",
              network=_unet),
    ModelSpec("clip", "07", "CLIP on captioned digits (transformers classes)",
              _lazy("training.clip", "clip_config_from_profile"), _lazy("training.clip", "train_clip"),
              ("clip", "steps"), measure_zero_shot, network=_lazy("networks.clip", "load_clip")),
    ModelSpec("text2image", "08", "text-conditional UNet and the frozen CLIP text side",
              _lazy("training.text2image", "text2image_config"), _lazy("training.text2image", "train_text2image"),
              ("text2image", "steps"), measure_prompts, pipeline=_lazy("pipelines.text_to_image", "TextToImage"), takes="prompts", needs=("clip",)),
    ModelSpec("text2image-lm", "09", "text-conditional UNet and a frozen language model: any English words",
              _lazy("training.text2image", "text2image_lm_config"),
              _lazy("training.text2image", "train_text2image_lm"), ("text2image", "lm_steps"), measure_prompts,
              pipeline=_lazy("pipelines.text_to_image", "TextToImageLM"), takes="prompts"),
    ModelSpec("autoencoder", "11", "KL autoencoder, 28x28x1 <-> 7x7xC latents",
              _lazy("training.latent", "autoencoder_config"), _lazy("training.latent", "train_autoencoder"),
              ("latent", "ae_steps"), measure_reconstruction, network=_lazy("networks.autoencoder", "load_autoencoder")),
    ModelSpec("latent", "11", "class-conditional UNet on the autoencoder's latents",
              _lazy("training.latent", "latent_config"), _lazy("training.latent", "train_latent"),
              ("latent", "steps"), measure_labels, pipeline=_lazy("pipelines.latent", "LatentDiffusion"), takes="labels",
              needs=("autoencoder",)),
    ModelSpec("flow", "12", "class-conditional UNet trained by flow matching (it predicts a velocity)",
              _lazy("training.flow", "flow_config"), _lazy("training.flow", "train_flow"),
              ("flow", "steps"), measure_labels, pipeline=_lazy("pipelines.class_to_image", "FlowToImage"), takes="labels",
              network=_lazy("training.flow", "load_flow")),
    ModelSpec("unclip", "10", "decoder from CLIP image embeddings and a diffusion prior (DALL-E 2's recipe)",
              _lazy("training.unclip", "unclip_config"), _lazy("training.unclip", "train_unclip"),
              ("unclip", "decoder_steps"), measure_prompts_and_shortcut,
              pipeline=_lazy("pipelines.unclip", "UnCLIP"),
              takes="prompts", needs=("clip",)),
    ModelSpec("mini-sd3", "13", "a miniature Stable Diffusion 3: an MMDiT on the autoencoder's latents, flow "
              "matching, a frozen language model reading the prompt",
              _lazy("training.mini_sd3", "mini_sd3_config"), _lazy("training.mini_sd3", "train_mini_sd3"),
              ("mini_sd3", "steps"), measure_prompts_at_folder_steps,
              pipeline=_lazy("pipelines.mini_sd3", "MiniSD3Pipeline"), takes="prompts", needs=("autoencoder",)),
    ModelSpec("speedrun", "12", "the fastest recipe to good digits on a laptop CPU: a small pixel flow model",
              _lazy("training.speedrun", "speedrun_config_from_profile"), _lazy("training.speedrun", "train_speedrun"),
              ("speedrun", "steps"), measure_labels, pipeline=_lazy("pipelines.class_to_image", "FlowToImage"),
              takes="labels", network=_lazy("training.flow", "load_flow")),
)
MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}
GENERATIVE = tuple(name for name, spec in MODELS.items() if spec.pipeline is not None)
TEXT_TO_IMAGE = tuple(name for name, spec in MODELS.items() if spec.takes == "prompts")      # `generate`
SAMPLEABLE = tuple(name for name in GENERATIVE if name not in TEXT_TO_IMAGE)               # `sample`


def _spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")
    return MODELS[name]


def find_matching(name: str, profile) -> Path | None:
    """A finished model for ``profile``: the user's checkpoint, then the shipped weights; None if neither
    matches the profile's config (and, for the user's, has trained all its steps)."""
    from . import store
    spec = _spec(name)
    cfg = spec.config(profile)
    for folder in (paths.default_checkpoint(name), paths.weights_dir() / name):
        try:
            tr = store.read_training(folder)
        except FileNotFoundError:
            continue
        if (store.config_difference(tr.get("config"), cfg) is None
                and tr.get("steps") == spec.steps(profile) and tr.get("step", 0) >= tr["steps"]):
            return folder
    return None


def find_usable(name: str, profile) -> tuple[Path, Any] | None:
    """A finished model to *use* under ``profile``: ``find_matching`` for the profile itself, else for its
    ``fallback`` profile (same T and schedule, so samples come out of the same chain). None if neither.

    Returns:
        (folder, the profile it was trained for), or None.
    """
    from .config import PROFILES
    folder = find_matching(name, profile)
    if folder is not None:
        return folder, profile
    if profile.fallback is not None:
        other = PROFILES[profile.fallback]
        if (other.T, other.schedule) == (profile.T, profile.schedule):
            folder = find_matching(name, other)
            if folder is not None:
                return folder, other
    return None


def fallback_note(name: str, profile, used, folder: Path) -> str:
    """The one line a lesson prints when it uses another profile's model."""
    return (f"no finished {profile.name}-profile {name!r} model: using the {used.name}-profile one in {folder} "
            f"(train the {profile.name} one with `python -m course_lib train {name} --profile {profile.name}`)")


@contextlib.contextmanager
def _training_lock(name: str):
    """Hold an exclusive lock on training model ``name`` into its default checkpoint folder, so two processes
    that both find it missing (two notebooks, parallel test workers) train it once: the second waits, then
    finds it finished. POSIX ``flock``; where that does not exist (Windows), no lock."""
    try:
        import fcntl
    except ImportError:                               # Windows: no lock (one notebook at a time there)
        yield
        return
    folder = paths.default_checkpoint(name)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{name}.lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)                # released when the file closes, even on an exception
        yield


def train_missing(name: str, profile, runtime=None, progress: bool = True) -> tuple[Path, bool]:
    """The finished model ``name`` for ``profile``: found, or trained now (resuming a partial checkpoint)
    into ``paths.default_checkpoint(name)`` while holding that model's training lock.

    Returns:
        (folder, trained): where the model is, and whether this call trained it.
    """
    with _training_lock(name):
        folder = find_matching(name, profile)        # looked for again: another process may have trained it
        if folder is not None:
            return folder, False
        print(f"no finished {name!r} model for the {profile.name!r} profile yet: training one "
              f"({MODELS[name].steps(profile)} steps) into {paths.default_checkpoint(name)}")
        from .config import get_runtime
        MODELS[name].train(profile, None, runtime or get_runtime(), None, progress)
        return paths.default_checkpoint(name), True


def get_guide(profile, runtime=None):
    """The denoiser's guide for autoguidance: the same network's EMA weights early in its training
    (the denoiser recipe's ``guide_step``), from the same checkpoint ``get_model("denoiser", ...)`` finds.

    Raises:
        FileNotFoundError: no finished denoiser for ``profile``, or one trained without a guide.
    """
    from .config import get_runtime
    from .networks.unet import load_unet
    rt = runtime or get_runtime()
    found = find_usable("denoiser", profile)
    folder = found[0] if found is not None else None
    if folder is None:
        raise FileNotFoundError(f"no finished denoiser for the {profile.name!r} profile: call "
                                f"get_model('denoiser', profile) first (it trains one, keeping its guide)")
    return load_unet(folder, rt.device, guide=True)[0]


def get_model(name: str, profile, runtime=None, train_if_missing: bool = True, progress: bool = True,
              path: str | Path | None = None):
    """The model ``name`` for ``profile``, ready to use (EMA weights, eval mode, on the runtime's device).

    Lookup: ``path`` if given; else the user's finished checkpoint or the shipped weights for this
    profile's config; else those of ``profile.fallback`` (``find_usable``, with a one-line note); else, when
    ``train_if_missing``, train it now for ``profile`` (resuming a partial checkpoint).
    """
    from .config import get_runtime
    spec = _spec(name)
    rt = runtime or get_runtime()
    found = None if path is not None else find_usable(name, profile)
    folder = Path(path) if path is not None else (found[0] if found is not None else None)
    if folder is None:
        if not train_if_missing:
            looked = f"{paths.default_checkpoint(name)} and {paths.weights_dir() / name}"
            raise FileNotFoundError(f"no finished {name!r} model matches the {profile.name!r} profile's config "
                                    f"(looked in {looked}); train one with "
                                    f"`python -m course_lib train {name} --profile {profile.name}`")
        folder, trained = train_missing(name, profile, rt, progress)
        if not trained:
            print(f"using the {name!r} model in {folder}")
    elif found is not None and found[1] is not profile:
        print(fallback_note(name, profile, found[1], folder))              # one line: whose model it is
    else:
        print(f"using the {name!r} model in {folder}")
    return spec.load(folder, rt.device)


def pipeline_class(folder: str | Path) -> type:
    """The pipeline class of a model folder, by what its ``config.json`` says (``store.read_model_config``).

    Raises:
        FileNotFoundError: no ``config.json``. CheckpointError: an unreadable one, or a model that draws no
            digits (the classifier, CLIP, the autoencoder), in one line.
    """
    from . import store
    _, kind = store.read_model_config(folder)
    spec = MODELS.get("denoiser" if kind == "unet" else kind)       # "unet": a plain unconditional UNet
    if spec is None or spec.pipeline is None:
        raise store.CheckpointError(f"{folder} holds {'an' if kind[:1] in 'aeiou' else 'a'} {kind} model, which "
                                    f"draws no digits: pass one of the generative models "
                                    f"({', '.join(GENERATIVE)}), e.g. data/weights/class")
    return spec.pipeline.get()


def finished_folder(name: str) -> Path:
    """The folder ``load_pipeline(name)`` uses: the user's checkpoint if it finished training, else the
    shipped weights (an interrupted run is not silently preferred: resume it first)."""
    from . import store
    mine = paths.default_checkpoint(name)
    if (mine / "training.json").is_file():
        tr = store.read_training(mine)
        if tr.get("step", 0) >= tr.get("steps", float("inf")):
            return mine
        print(f"note: {mine} has not finished training (step {tr.get('step')} of {tr.get('steps')}); using the "
              f"shipped weights (resume it with python -m course_lib train {name})")
    return paths.weights_dir() / name


def load_pipeline(name_or_folder: str | Path, device=None):
    """The pipeline of a generative model, ready to call: ``load_pipeline("class")(labels=[3, 7])``.

    Args:
        name_or_folder: a registry name (the user's finished checkpoint, else the shipped weights; nothing is
            trained) or a model folder (its ``config.json`` says which pipeline).
        device: default: the runtime's (``config.get_runtime``).
    Returns: the pipeline (``DenoiserPipeline``, ``ClassToImage``, ``FlowToImage``, ``LatentDiffusion``,
        ``TextToImage``, ``TextToImageLM`` or ``UnCLIP``).
    """
    from .config import get_runtime
    device = get_runtime().device if device is None else device
    if isinstance(name_or_folder, str) and name_or_folder in MODELS:
        spec = MODELS[name_or_folder]
        if spec.pipeline is None:
            raise ValueError(f"{spec.name!r} draws no digits: load_pipeline takes one of {', '.join(GENERATIVE)}; "
                             f"get_model({spec.name!r}, profile) loads the {spec.name} itself")
        folder = finished_folder(spec.name)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"no finished {spec.name!r} model in {paths.default_checkpoint(spec.name)} or "
                                    f"{folder}: train one with `python -m course_lib train {spec.name}`")
        return spec.pipeline.get().from_pretrained(folder, device)
    folder = Path(name_or_folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{name_or_folder} is neither a model name ({', '.join(GENERATIVE)}) nor a model "
                                f"folder")
    return pipeline_class(folder).from_pretrained(folder, device)
