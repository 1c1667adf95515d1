"""The pixel-space UNet models as pipelines: the unconditional denoiser (lessons 03-04), the class model (05)
and the flow model (12).

    DenoiserPipeline   ``pipe(n=16)``: a k-means cluster drawn per image, then self-guidance towards it
                       (``guidance=``), or autoguidance (``autoguidance=``: away from the early weights kept
                       in ``guide.safetensors``, Karras et al. 2024)
    ClassToImage       ``pipe(labels=[3, 7])``: classifier-free guidance towards each label (Ho & Salimans 2022);
                       ``pipe(n=4)`` samples unconditionally
    FlowToImage        the same for a flow-matching model: guided velocity, Euler or Heun from t = 1 to 0

Each is ``from_pretrained(folder, device)`` / ``save_pretrained(folder)`` / ``__call__``; the folder's
``config.json`` holds the sampling defaults (``pipelines/base.py``). The start noise comes from
``torch.Generator().manual_seed(seed)``; the denoiser draws its clusters from the same generator first.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable, Sequence

import torch
from safetensors.torch import save_file

from .. import store
from ..data.clusters import draw_clusters
from ..diffusion import flow
from ..diffusion.guidance import Prediction, autoguided, from_settings, guided
from ..diffusion.samplers import SAMPLERS, sample
from ..diffusion.schedules import make_schedule
from ..networks.unet import UNet, load_unet
from .base import Pipeline, check_kind, finish, generator

__all__ = ["DenoiserPipeline", "ClassToImage", "FlowToImage"]


class _UNetPipeline(Pipeline):
    """A UNet folder in (``networks.unet.load_unet``), a sampler and guidance around it."""

    samplers: tuple[str, ...] = tuple(SAMPLERS)

    def __init__(self, unet: UNet, config: dict, device: torch.device | str = "cpu", folder: Path | None = None):
        super().__init__(config, device)
        self.unet = unet.to(self.device).eval()
        self.folder = folder
        self.schedule = make_schedule(config["schedule"], config["T"], self.device) if "T" in config else None

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu"):
        """Load a model folder (``data/weights/NAME`` or a finished checkpoint) of a kind this pipeline samples."""
        folder = Path(folder).expanduser()
        check_kind(folder, cls.kinds, cls.example)
        unet, cfg = load_unet(folder, device)
        return cls(unet, cfg, device, folder)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` (with its sampling defaults) and ``model.safetensors`` into ``folder``."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.unet.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**self.config, "sampling": self.sampling}, indent=2))
        return folder

    def _check_sampler(self, sampler: str) -> None:
        if sampler not in self.samplers:
            raise ValueError(f"unknown sampler {sampler!r} for this model: choose one of {', '.join(self.samplers)}")

    def _run(self, model, n: int, g: torch.Generator, cond, steps, sampler: str, eta, callback) -> torch.Tensor:
        return sample(model, n, self.schedule, sampler=sampler, steps=steps, eta=eta, generator=g, cond=cond,
                      device=self.device, callback=callback)


def _labels(labels, n) -> tuple[torch.Tensor | None, int]:
    """``labels`` as a long tensor and the number of images (``len(labels)``, or ``n`` without labels)."""
    if labels is None:
        if n is None:
            raise ValueError("give labels=[...] (one image per label) or n= (unconditional images)")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a whole number >= 1, got {n!r}")
        return None, n
    t = torch.as_tensor(labels)
    if t.dim() != 1 or t.numel() == 0 or t.is_floating_point():
        raise ValueError(f"labels must be a non-empty list of whole numbers such as [3, 7], got {labels!r}")
    if n is not None and n != t.numel():
        raise ValueError(f"n={n} but {t.numel()} labels: give labels (one image each) or n, not both")
    return t.long(), t.numel()


class ClassToImage(_UNetPipeline):
    """Digits of the asked classes: ``pipe(labels=[3, 7], steps=25, guidance=3.0, seed=0)`` -> (2, 1, 28, 28)."""

    kinds = ("class",)
    fallback_sampling = {"sampler": "ddim", "steps": 25, "guidance": 3.0}

    @torch.no_grad()
    def __call__(self, labels: Sequence[int] | torch.Tensor | None = None, n: int | None = None, *,
                 steps: int | None = None, guidance: float | None = None, sampler: str | None = None,
                 eta: float | None = None, seed: int = 0, callback: Callable[[dict], None] | None = None
                 ) -> torch.Tensor:
        """One image per label, guided towards it with scale ``guidance`` (0: unconditional, 1: conditional);
        without labels, ``n`` unconditional images (``guidance`` is then refused: it has nothing to steer to).

        Returns: (n, 1, 28, 28) float32 on the CPU, in [-1, 1].
        """
        if labels is None and guidance is not None:
            raise ValueError("guidance steers towards labels: without labels the model samples unconditionally "
                             "and would ignore it; give labels=[...] or drop guidance")
        steps, w, sampler = self.defaults(steps, guidance, sampler)
        self._check_sampler(sampler)
        cond, n = _labels(labels, n)
        g = generator(seed)
        model = self.unet
        if cond is not None:
            model = from_settings(self.unet, self.guidance_settings(w), prediction=self.prediction())
            cond = cond.to(self.device)
        return finish(self._run(model, n, g, cond, steps, sampler, eta, callback))

    def prediction(self) -> Prediction:
        """What the UNet predicts, for the guidance methods that work on x0 (``guidance.Prediction``)."""
        return Prediction("eps", self.schedule)


class FlowToImage(ClassToImage):
    """Lesson 12's flow-matching model: ``pipe(labels=[3, 7], steps=10, guidance=1.5, sampler="heun")``."""

    kinds = ("flow",)
    samplers = tuple(flow.FLOW_SAMPLERS)
    fallback_sampling = {"sampler": "euler", "steps": 10, "guidance": 1.5}

    def prediction(self) -> Prediction:
        return Prediction("flow", time_scale=float(self.config.get("time_scale", 1000.0)))

    def _run(self, model, n, g, cond, steps, sampler, eta, callback):
        if eta is not None:
            raise ValueError("eta is DDIM's noise; the flow samplers are deterministic ODE solvers")
        return flow.sample(model, n, sampler=sampler, steps=steps, generator=g, cond=cond, device=self.device,
                           callback=callback)


class DenoiserPipeline(_UNetPipeline):
    """The unconditional denoiser: ``pipe(n=16, guidance=2.0)`` (self-guidance towards a drawn k-means cluster)
    or ``pipe(n=16, autoguidance=2.0)``. A UNet trained without clusters samples plainly."""

    kinds = ("denoiser", "unet")
    example = "data/weights/denoiser"
    fallback_sampling = {"sampler": "ddim", "steps": 25, "guidance": 2.0}

    @property
    def cluster_sizes(self) -> torch.Tensor | None:
        return getattr(self.unet, "cluster_sizes", None)

    def guide(self) -> UNet:
        """The early EMA weights kept for autoguidance (``guide.safetensors``), loaded on first use."""
        if self.folder is None:
            raise FileNotFoundError("this pipeline was not loaded from a folder: it has no guide weights")
        return load_unet(self.folder, self.device, guide=True)[0]

    def save_pretrained(self, folder: str | Path) -> Path:
        """As the other pipelines, plus the guide weights and ``training.json`` (its cluster sizes) if loaded
        from a folder that has them."""
        folder = super().save_pretrained(folder)
        if self.folder is not None and Path(self.folder).resolve() != folder.resolve():
            for name in (store.GUIDE_FILE, "training.json"):
                if (Path(self.folder) / name).is_file():
                    shutil.copy2(Path(self.folder) / name, folder / name)
        return folder

    @torch.no_grad()
    def __call__(self, n: int = 16, *, steps: int | None = None, guidance: float | None = None,
                 autoguidance: float | None = None, sampler: str | None = None, eta: float | None = None,
                 seed: int = 0, callback: Callable[[dict], None] | None = None) -> torch.Tensor:
        """``n`` digits. With clusters: each image's cluster drawn as often as it occurred in training (from the
        seed's generator, before the start noise), then ``guidance`` towards it (default: the folder's; 1: the
        plain mixture), or ``autoguidance`` instead.

        Returns: (n, 1, 28, 28) float32 on the CPU, in [-1, 1].
        """
        if autoguidance is not None and guidance is not None:
            raise ValueError("guidance and autoguidance both set how the denoiser is guided (towards a drawn "
                             "cluster, or away from its early weights): give one of them")
        if guidance is not None and self.cluster_sizes is None:
            raise ValueError("this UNet was trained without clusters: guidance has nothing to steer towards")
        steps, w, sampler = self.defaults(steps, guidance, sampler)
        self._check_sampler(sampler)
        _, n = _labels(None, n)
        model = self.unet if autoguidance is None else autoguided(self.unet, self.guide(), autoguidance)
        g = generator(seed)
        cond = None
        if self.cluster_sizes is not None:
            cond = draw_clusters(self.cluster_sizes, n, g, self.device)
            if autoguidance is None:
                model = guided(model, w)
        return finish(self._run(model, n, g, cond, steps, sampler, eta, callback))
