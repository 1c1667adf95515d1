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

``get_model(name, profile)`` is what lessons call: the user's checkpoint if it matches the profile's config
and finished training, else the shipped reference weights if they match, else (``find_usable``) the finished
model of the profile's ``fallback`` (the ``gpu`` profile's is ``cpu``: its shipped weights, with a one-line
note, so a fresh Colab runtime does not retrain in every lesson what the lesson only uses), else it trains
(resuming any partial checkpoint). The diffusion models train on ``forward.simple_loss`` through ``train.fit``.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import time
from pathlib import Path
from typing import Callable

import torch

from . import checkpoints, paths
from .clusters import kmeans
from .config import PROFILES, Profile, Runtime, get_runtime
from .data import batch_indices, load_mnist
from .forward import simple_loss
from .schedules import Schedule, make_schedule
from .train import TrainResult, fit
from .unet import UNet, UNetConfig, unet_config_from_profile

__all__ = ["denoiser_config", "class_config", "train_denoiser", "train_class_model",
           "load_unet", "get_model", "get_guide", "find_matching", "find_usable",
           "train_missing", "REGISTRY", "drop_labels", "unet_from_config"]


# --------------------------------------------------------------------------- classifier-free guidance training
def drop_labels(labels: torch.Tensor, p_uncond: float, generator: torch.Generator) -> torch.Tensor:
    """Classifier-free guidance training (Ho & Salimans 2022, Algorithm 1): replace each label by "no
    condition" (-1) with probability ``p_uncond``, so one network learns p(x|y) and p(x)."""
    drop = torch.rand(labels.shape, generator=generator, device=generator.device).to(labels.device) < p_uncond
    return torch.where(drop, torch.full_like(labels, -1), labels)


# --------------------------------------------------------------------------- configs
def denoiser_config(profile: Profile) -> dict:
    """The unconditional denoiser: told the k-means cluster of each digit (``num_classes`` = clusters, found
    without labels, ``clusters.py``), or "no cluster" with probability ``p_uncond``."""
    return {**unet_config_from_profile(profile, num_classes=profile.denoiser_clusters).to_dict(),
            "T": profile.T, "schedule": profile.schedule, "n_train": profile.n_train,
            "min_snr_gamma": profile.min_snr_gamma, "batch_size": profile.denoiser_batch,
            "lr": profile.denoiser_lr, "clusters": "k-means on pixels, seed 0", "p_uncond": profile.p_uncond}


def class_config(profile: Profile) -> dict:
    return {**unet_config_from_profile(profile, num_classes=10).to_dict(), "T": profile.T,
            "schedule": profile.schedule, "n_train": profile.n_train, "p_uncond": profile.p_uncond}


def unet_from_config(cfg: dict) -> UNet:
    """A UNet with fresh weights for a model config (its keys that are not ``UNetConfig`` fields are ignored)."""
    fields = UNetConfig.__dataclass_fields__
    return UNet(UNetConfig.from_dict({k: v for k, v in cfg.items() if k in fields}))


def load_unet(path: str | Path, device: torch.device | str = "cpu", raw: bool = False, guide: bool = False
              ) -> tuple[UNet, dict]:
    """Load a UNet checkpoint folder: (model in eval mode, its config dict with T and schedule).

    ``raw=True`` loads the raw (not averaged) weights, ``guide=True`` the early EMA weights kept for
    autoguidance (``guidance.autoguided``). A denoiser trained by ``train_denoiser`` gets
    ``model.cluster_sizes`` (k,), for ``clusters.draw_clusters`` (a run of ``fit`` alone records none)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no model at {path} (looked for {path / 'config.json'})")
    cfg = checkpoints.read_json(path / "config.json")
    kind = cfg.get("kind", "unet") if isinstance(cfg, dict) else None
    if kind != "unet" or "channels" not in cfg:
        raise checkpoints.CheckpointError(
            f"{path / 'config.json'} is not a course UNet's config (kind {kind!r}): {path} holds another kind of "
            f"model; pass a denoiser or class model folder (e.g. data/weights/class)")
    try:
        model = unet_from_config(cfg)
    except (TypeError, ValueError, KeyError) as e:
        raise checkpoints.CheckpointError(f"{path / 'config.json'} does not describe a UNet this course can build "
                                          f"({e}); delete the folder or restore it") from None
    checkpoints.load_weights(model, path, device=device, raw=raw, guide=guide)
    if "T" in cfg:                             # the chain it was trained on, checked by samplers.sample
        model.T = int(cfg["T"])
    model.objective = cfg.get("objective", "eps")     # "flow": a velocity model (flow.py), not a DDPM sampler's
    has_training = cfg.get("clusters") and (path / "training.json").is_file()
    sizes = checkpoints.read_training(path).get("cluster_sizes") if has_training else None
    if sizes is not None:                      # the denoiser: how often each cluster occurred in training
        model.cluster_sizes = torch.tensor(sizes)
    return model.eval(), cfg


# --------------------------------------------------------------------------- training
def _train_unet(name: str, cfg: dict, profile: Profile, steps: int, out, runtime, progress, stop_after,
                seed: int = 0, guide_step: int | None = None) -> TrainResult:
    """Train a UNet on (image, condition) pairs, the condition dropped to "none" with probability
    ``cfg["p_uncond"]``: the label for the class model, the k-means cluster for the denoiser."""
    rt = runtime or get_runtime()
    out = Path(out) if out is not None else paths.default_checkpoint(name)
    x, y = load_mnist("train", profile=profile, device=rt.device)
    meta = {"kind": name, "profile": profile.name, "data": f"MNIST train, {len(x)} images"}
    if cfg.get("clusters"):                    # the denoiser: k-means clusters replace the labels
        start = time.perf_counter()
        found = kmeans(x.cpu(), cfg["num_classes"], seed=0)
        y = found.assign.to(rt.device)
        meta.update(cluster_sizes=found.sizes.tolist(),                 # p(c), for sampling (draw_clusters)
                    cluster_seconds=round(time.perf_counter() - start, 1))   # (fit resumes only the same ones)
    schedule = make_schedule(profile.schedule, profile.T, rt.device)
    torch.manual_seed(seed)                    # the initial weights do not depend on what ran before
    model = unet_from_config(cfg)
    batch_size = cfg.get("batch_size", profile.batch_size)     # the denoiser's config names its own
    lr = cfg.get("lr", profile.lr)                              # (batch size and learning rate)

    def get_batch(g):
        idx = batch_indices(len(x), batch_size, g, rt.device)
        return x[idx], y[idx]

    def loss_fn(m, batch, g):
        x0, labels = batch
        cond = drop_labels(labels, cfg["p_uncond"], g)
        return simple_loss(m, x0, schedule, generator=g, cond=cond, min_snr_gamma=cfg.get("min_snr_gamma"),
                           return_parts=True)                                      # DDPM Eq. (14)

    result = fit(model, loss_fn, get_batch, steps=steps, lr=lr, warmup_steps=profile.warmup_steps,
                 batch_size=batch_size, ema_decay=profile.ema_decay, config=cfg, meta=meta, out=out,
                 checkpoint_every=profile.checkpoint_every, runtime=rt, desc=f"train {name}",
                 progress=progress, T=profile.T, stop_after=stop_after, seed=seed, guide_step=guide_step,
                 rng_device=rt.device)
    if "cluster_sizes" in meta:                # as load_unet gives them, so the result samples the same way
        result.model.cluster_sizes = result.ema_model.cluster_sizes = torch.tensor(meta["cluster_sizes"])
    return result


def train_denoiser(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                   progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the unconditional denoiser for ``profile`` (resumes from ``out`` when it holds one).

    It is told the k-means cluster of each training digit (``profile.denoiser_clusters`` clusters, found
    without labels), or "no cluster" with probability ``profile.p_uncond``; the cluster sizes are saved in
    ``training.json`` (``cluster_sizes``), and ``load_unet`` sets them as ``model.cluster_sizes`` for
    ``clusters.draw_clusters``. Batches hold ``profile.denoiser_batch`` images, at learning rate
    ``profile.denoiser_lr``. The EMA weights after ``profile.guide_step`` steps are kept too
    (``guide.safetensors``), for autoguidance; a run shorter than that keeps none.
    """
    steps = steps or profile.train_steps
    guide_step = profile.guide_step if profile.guide_step < steps else None
    return _train_unet("denoiser", denoiser_config(profile), profile, steps, out,
                       runtime, progress, stop_after, guide_step=guide_step)


def train_class_model(profile: Profile, out=None, runtime: Runtime | None = None, steps: int | None = None,
                      progress: bool = True, stop_after: int | None = None) -> TrainResult:
    """Train the class-conditional denoiser, dropping labels with probability ``profile.p_uncond``."""
    return _train_unet("class", class_config(profile), profile, steps or profile.class_train_steps, out,
                       runtime, progress, stop_after)


# --------------------------------------------------------------------------- the registry
def _lazy(module: str, attr: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(importlib.import_module(f"course_lib.{module}"), attr)(*args, **kwargs)
    return call


# name -> (config_fn(profile), train_fn(profile, out, runtime, steps, progress), load_fn(path, device))
REGISTRY: dict[str, tuple[Callable, Callable, Callable]] = {
    "classifier": (_lazy("metrics", "classifier_config"), _lazy("metrics", "train_classifier"),
                   _lazy("metrics", "load_classifier")),
    "denoiser": (denoiser_config, train_denoiser, lambda path, device: load_unet(path, device)[0]),
    "class": (class_config, train_class_model, lambda path, device: load_unet(path, device)[0]),
    "clip": (_lazy("clip", "clip_config_from_profile"), _lazy("clip_training", "train_clip"),
             _lazy("clip", "load_clip")),
    "text2image": (_lazy("text2image_training", "text2image_config"),
                   _lazy("text2image_training", "train_text2image"), _lazy("pipeline", "load_text2image")),
    "text2image-lm": (_lazy("language_encoder_training", "text2image_lm_config"),
                      _lazy("language_encoder_training", "train_text2image_lm"),
                      _lazy("language_encoder", "load_text2image_lm")),
    "flow": (_lazy("flow_training", "flow_config"), _lazy("flow_training", "train_flow"),
             _lazy("flow_training", "load_flow")),
    "unclip": (_lazy("unclip_training", "unclip_config"), _lazy("unclip_training", "train_unclip"),
               _lazy("unclip", "load_unclip")),
    "autoencoder": (_lazy("latent_training", "autoencoder_config"), _lazy("latent_training", "train_autoencoder"),
                    _lazy("autoencoder", "load_autoencoder")),
    "latent": (_lazy("latent_training", "latent_config"), _lazy("latent_training", "train_latent"),
               _lazy("latent_training", "load_latent")),
}


def _steps_for(name: str, profile: Profile) -> int:
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
            tr = checkpoints.read_training(folder)
        except FileNotFoundError:
            continue
        if (checkpoints.config_difference(tr.get("config"), cfg) is None
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
