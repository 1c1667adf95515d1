"""What every pipeline shares: the folder's kind checked, its sampling defaults, the seed, the output contract.

A pipeline is diffusers' shape: ``Pipe.from_pretrained(folder, device)``, ``pipe.save_pretrained(folder)`` and
``pipe(...)``. A call takes what the model is conditioned on (``labels=[3, 7]``, ``prompts=["a thin two"]``,
or ``n=16`` for the unconditional denoiser) plus ``steps=``, ``guidance=``, ``seed=`` (and ``sampler=``,
``eta=`` where they apply), and returns images ``(B, 1, 28, 28)`` float32 on the CPU in [-1, 1].

Sampling defaults live in the model folder's ``config.json``:

    "sampling": {"sampler": "ddim", "steps": 25, "guidance": 3.0}

written by training (each recipe's export, from ``ModelSpec.sampling(profile)``) and read here by every door:
``load_pipeline``, the command line, ``make weights``, the lessons and the benchmarks. A call's ``steps=``,
``guidance=`` and ``sampler=`` override them for that call only.
"""
from __future__ import annotations

import numbers
from pathlib import Path

import torch

from .. import store
from ..diffusion.guidance import KNOBS
from ..diffusion.samplers import check_finite

__all__ = ["Pipeline", "check_kind", "sampling_defaults", "generator", "generate_keeping_weights", "finish", "MAX_SEED"]

MAX_SEED = 2 ** 63 - 1                       # what torch.Generator.manual_seed takes


def _a(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def check_kind(folder: str | Path, kinds: tuple[str, ...], example: str) -> tuple[dict, str]:
    """``folder``'s config and kind (``store.read_model_config``), refused in one line unless it is one of
    ``kinds`` (the models this pipeline samples)."""
    cfg, kind = store.read_model_config(folder, example)
    if kind not in kinds:
        raise store.CheckpointError(f"{folder} holds {_a(kind)} model, not {' or '.join(_a(k) for k in kinds)} "
                                    f"one: load it with course_lib.load_pipeline({str(folder)!r})")
    return cfg, kind


def sampling_defaults(config: dict, fallback: dict) -> dict:
    """The folder's ``"sampling"`` key over ``fallback`` (the values of a folder written before the key)."""
    saved = config.get("sampling") if isinstance(config, dict) else None
    return {**fallback, **(saved if isinstance(saved, dict) else {})}


def generator(seed) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (a whole number from 0 to 2^63 - 1): all start noise comes from it."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed must be a whole number from 0 to 2^63 - 1, got {seed!r}")
    return torch.Generator().manual_seed(int(seed))


def generate_keeping_weights(pipe, modules, prompt: str, read, **call) -> torch.Tensor:
    """One image for ``prompt`` (``pipe(prompt, 1, **call)``) with each attention module's ``keep_weights``
    on, calling ``read()`` after every sampler step (when ``last_weights`` holds that step's weights): how
    lessons 08 and 13 see where the image looks in the prompt. The modules are reset afterwards, even on error.
    """
    for m in modules:
        m.keep_weights = True
    try:
        return pipe(prompt, 1, callback=lambda _: read(), **call)
    finally:
        for m in modules:
            m.keep_weights, m.last_weights = False, None


def finish(images: torch.Tensor) -> torch.Tensor:
    """The output contract: float32 on the CPU, clamped to [-1, 1]; NaN or infinities are an error, never images."""
    return check_finite(images.detach().float().cpu()).clamp(-1.0, 1.0)


class Pipeline:
    """The base of the pipelines: ``config`` (the folder's ``config.json``), ``device`` and ``sampling``."""

    #: the registry names of the models this pipeline samples, and a folder to suggest
    kinds: tuple[str, ...] = ()
    example = "data/weights/class"
    #: the sampling defaults of a folder written before ``config.json`` had a ``"sampling"`` key
    fallback_sampling: dict = {"sampler": "ddim", "steps": 25, "guidance": 3.0}

    def __init__(self, config: dict, device: torch.device | str = "cpu"):
        self.config = config
        self.device = torch.device(device)
        self.sampling = sampling_defaults(config, self.fallback_sampling)

    def guidance_settings(self, guidance: float) -> dict:
        """The folder's guidance method and its knobs (``guidance.from_settings``), at scale ``guidance``:
        e.g. ``{"guidance": 3.0, "method": "interval", "interval": [500, 999]}``; plain CFG where the folder
        names no method."""
        keep = ("method",) + tuple(k for knobs in KNOBS.values() for k in knobs)
        return {**{k: v for k, v in self.sampling.items() if k in keep}, "guidance": guidance}

    def defaults(self, steps=None, guidance=None, sampler=None) -> tuple:
        """(steps, guidance, sampler): each argument, or the folder's default where it is None."""
        s = self.sampling
        return (s["steps"] if steps is None else steps, s["guidance"] if guidance is None else guidance,
                s.get("sampler", "ddim") if sampler is None else sampler)
