"""The course's trained models, in one registry: how each is trained, found and loaded.

    name         what                                             lesson
    classifier   small MNIST classifier used to *measure* samples   04
    denoiser     unconditional UNet, eps-prediction, told k-means   03-04
                 clusters of the digits (no labels)
    class        class-conditional UNet (classifier-free guidance)  05
    clip         CLIP on captioned digits (transformers classes)    07
    text2image   text-conditional UNet + the frozen CLIP text side  08
    flow         class-conditional UNet, flow matching (velocity)   12
    unclip       decoder from CLIP image embeddings + diffusion     10
                 prior from text embeddings (DALL-E 2's recipe)
    autoencoder  KL autoencoder, 28x28x1 <-> 7x7xC latents          11
    latent       class-conditional UNet on the autoencoder's latents  11
    mini-sd3     MMDiT, flow matching on the autoencoder's latents,  13
                 the frozen language model reading the prompt

``get_model(name, profile)`` is what lessons call: the user's checkpoint if it matches the profile's config
and finished training, else the shipped reference weights if they match, else (``find_usable``) the finished
model of the profile's ``fallback`` (the ``gpu`` profile's is ``cpu``: its shipped weights, with a one-line
note, so a fresh Colab runtime does not retrain in every lesson what the lesson only uses), else it trains
(resuming any partial checkpoint). The diffusion models train on ``forward.simple_loss`` through ``train.fit``.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
from pathlib import Path
from typing import Callable

import torch

from . import paths, store
from .config import PROFILES, Profile, Runtime, get_runtime
from .networks.unet import load_unet
from .pipelines.text_to_image import TextToImage, load_text2image_lm
from .training.denoiser import class_config, denoiser_config, train_class_model, train_denoiser

__all__ = ["load_text_to_image", "REGISTRY", "find_matching", "find_usable", "train_missing", "get_guide",
           "get_model"]


# --------------------------------------------------------------------------- the registry
def _lazy(module: str, attr: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"course_lib.{module}"), attr)(*args, **kwargs)
    return call


# name -> (config_fn(profile), train_fn(profile, out, runtime, steps, progress), load_fn(path, device))
REGISTRY: dict[str, tuple[Callable, Callable, Callable]] = {
    "classifier": (_lazy("training.classifier", "classifier_config"),
                   _lazy("training.classifier", "train_classifier"), _lazy("networks.classifier", "load_classifier")),
    "denoiser": (denoiser_config, train_denoiser, lambda path, device: load_unet(path, device)[0]),
    "class": (class_config, train_class_model, lambda path, device: load_unet(path, device)[0]),
    "clip": (_lazy("training.clip", "clip_config_from_profile"), _lazy("training.clip", "train_clip"),
             _lazy("networks.clip", "load_clip")),
    "text2image": (_lazy("training.text2image", "text2image_config"),
                   _lazy("training.text2image", "train_text2image"),
                   _lazy("pipelines.text_to_image", "load_text2image")),
    "text2image-lm": (_lazy("training.text2image", "text2image_lm_config"),
                      _lazy("training.text2image", "train_text2image_lm"),
                      _lazy("pipelines.text_to_image", "load_text2image_lm")),
    "flow": (_lazy("training.flow", "flow_config"), _lazy("training.flow", "train_flow"),
             _lazy("training.flow", "load_flow")),
    "unclip": (_lazy("training.unclip", "unclip_config"), _lazy("training.unclip", "train_unclip"),
               _lazy("pipelines.unclip", "load_unclip")),
    "autoencoder": (_lazy("training.latent", "autoencoder_config"), _lazy("training.latent", "train_autoencoder"),
                    _lazy("networks.autoencoder", "load_autoencoder")),
    "latent": (_lazy("training.latent", "latent_config"), _lazy("training.latent", "train_latent"),
               _lazy("pipelines.latent", "load_latent")),
    "mini-sd3": (_lazy("training.mini_sd3", "mini_sd3_config"), _lazy("training.mini_sd3", "train_mini_sd3"),
                 _lazy("pipelines.mini_sd3", "load_mini_sd3")),
}


def _steps_for(name: str, profile: Profile) -> int:
    if name == "mini-sd3":                              # its sizes live beside its recipe, not in the Profile
        from .training.mini_sd3 import preset_for
        return preset_for(profile).steps
    return {"classifier": profile.classifier_steps, "denoiser": profile.train_steps,
            "class": profile.class_train_steps, "clip": profile.clip_steps,
            "text2image": profile.t2i_train_steps, "text2image-lm": profile.lm_train_steps,
            "flow": profile.flow_train_steps, "unclip": profile.unclip_decoder_steps,
            "autoencoder": profile.ae_steps, "latent": profile.latent_train_steps}[name]


def find_matching(name: str, profile: Profile) -> Path | None:
    """A finished model for ``profile``: the user's checkpoint, then the shipped weights; None if neither
    matches the profile's config (and, for the user's, has trained all its steps)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(REGISTRY)}")
    cfg = REGISTRY[name][0](profile)
    for folder in (paths.default_checkpoint(name), paths.weights_dir() / name):
        try:
            tr = store.read_training(folder)
        except FileNotFoundError:
            continue
        if (store.config_difference(tr.get("config"), cfg) is None
                and tr.get("steps") == _steps_for(name, profile) and tr.get("step", 0) >= tr["steps"]):
            return folder
    return None


def find_usable(name: str, profile: Profile) -> tuple[Path, Profile] | None:
    """A finished model to *use* under ``profile``: ``find_matching`` for the profile itself, else for its
    ``fallback`` profile (same T and schedule, so samples come out of the same chain). None if neither.

    Returns:
        (folder, the profile it was trained for), or None.
    """
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


def fallback_note(name: str, profile: Profile, used: Profile, folder: Path) -> str:
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


def train_missing(name: str, profile: Profile, runtime: Runtime | None = None, progress: bool = True
                  ) -> tuple[Path, bool]:
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
              f"({_steps_for(name, profile)} steps) into {paths.default_checkpoint(name)}")
        REGISTRY[name][1](profile, None, runtime or get_runtime(), None, progress)
        return paths.default_checkpoint(name), True


def get_guide(profile: Profile, runtime: Runtime | None = None):
    """The denoiser's guide for autoguidance: the same network's EMA weights early in its training
    (``profile.guide_step``), from the same checkpoint ``get_model("denoiser", ...)`` finds.

    Raises:
        FileNotFoundError: no finished denoiser for ``profile``, or one trained without a guide.
    """
    rt = runtime or get_runtime()
    found = find_usable("denoiser", profile)
    folder = found[0] if found is not None else None
    if folder is None:
        raise FileNotFoundError(f"no finished denoiser for the {profile.name!r} profile: call "
                                f"get_model('denoiser', profile) first (it trains one, keeping its guide)")
    return load_unet(folder, rt.device, guide=True)[0]


def get_model(name: str, profile: Profile, runtime: Runtime | None = None, train_if_missing: bool = True,
              progress: bool = True, path: str | Path | None = None):
    """The model ``name`` for ``profile``, ready to use (EMA weights, eval mode, on the runtime's device).

    Lookup: ``path`` if given; else the user's finished checkpoint or the shipped weights for this
    profile's config; else those of ``profile.fallback`` (``find_usable``, with a one-line note); else, when
    ``train_if_missing``, train it now for ``profile`` (resuming a partial checkpoint).
    """
    rt = runtime or get_runtime()
    found = None if path is not None else find_usable(name, profile)            # checks the name too
    folder = Path(path) if path is not None else (found[0] if found is not None else None)
    load_fn = REGISTRY[name][2]
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
    return load_fn(folder, rt.device)


def load_text_to_image(path: str | Path, device: torch.device | str = "cpu") -> TextToImage:
    """Any text-to-image pipeline, by what its ``config.json`` says (``"model"``): lesson 08's, this one,
    lesson 10's unCLIP or lesson 13's mini SD3."""
    path = Path(path)
    cfg_path = path / "config.json"
    model = json.loads(cfg_path.read_text()).get("model") if cfg_path.is_file() else None
    if model == "unclip":
        from .pipelines.unclip import load_unclip
        return load_unclip(path, device)
    if model == "mini-sd3":
        from .pipelines.mini_sd3 import load_mini_sd3
        return load_mini_sd3(path, device)
    return load_text2image_lm(path, device) if model == "text2image-lm" else TextToImage.from_pretrained(path, device)
