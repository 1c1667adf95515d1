"""Latent diffusion (lesson 11) as a pipeline: the autoencoder and the latent UNet from their folders.

    LatentDiffusion          the pipeline: latents sampled by the class UNet (guided), then decoded
    find_autoencoder, check_autoencoder_file   the autoencoder a latent model was trained on, checked by hash
    load_latent              a latent model folder in, a ``LatentDiffusion`` out

Training both parts is ``training/latent.py``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import paths, store
from ..config import inference_autocast
from ..diffusion.guidance import guided
from ..diffusion.samplers import SAMPLERS, sample
from ..diffusion.schedules import make_schedule
from ..networks.autoencoder import Autoencoder, load_autoencoder, weights_sha256
from ..networks.unet import UNet, unet_from_config
from .base import Pipeline, finish, generator

__all__ = ["LatentDiffusion", "check_autoencoder_file", "find_autoencoder", "load_latent"]


def _config_of(folder: Path) -> dict:
    """An autoencoder folder's config as ``autoencoder_config`` gives it (without the measured scale and bound)."""
    cfg = dict(store.read_json(Path(folder) / "config.json"))
    cfg.pop("scaling_factor", None)
    cfg.pop("latent_bound", None)
    return cfg


# --------------------------------------------------------------------------- 3. sampling and loading
class LatentDiffusion(Pipeline):
    """The latent UNet and its autoencoder: ``pipe(labels=[3, 7], steps=25, guidance=3.0, seed=0)`` samples
    guided latents (the UNet is ``pipe.unet``, so guidance and every sampler apply to it unchanged) and decodes
    them to digits; ``generate`` is the same with a generator and the latents on request."""

    kinds = ("latent",)
    example = "data/weights/latent"
    fallback_sampling = {"sampler": "ddim", "steps": 25, "guidance": 3.0}

    def __init__(self, unet: UNet, autoencoder: Autoencoder, schedule: str, config: dict | None = None,
                 folder: Path | None = None):
        device = next(unet.parameters()).device
        super().__init__(config if config is not None else {"schedule": schedule, "T": unet.T}, device)
        self.unet, self.autoencoder, self.schedule_name = unet.eval(), autoencoder.eval(), schedule
        self.T = unet.T
        self.folder = folder

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu",
                        autoencoder: str | Path | None = None) -> "LatentDiffusion":
        """``load_latent``: the latent model folder and the autoencoder it was trained on."""
        return load_latent(folder, device, autoencoder)

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` (with its sampling defaults) and the latent UNet's ``model.safetensors``; the
        autoencoder stays in its own folder, found again by the weights hash the config keeps."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.unet.state_dict().items()},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**self.config, "sampling": self.sampling}, indent=2))
        return folder

    @torch.no_grad()
    def __call__(self, labels=None, n: int | None = None, *, steps: int | None = None, guidance: float | None = None,
                 sampler: str | None = None, eta: float | None = None, seed: int = 0, callback=None
                 ) -> torch.Tensor:
        """One image per label (guided with scale ``guidance``), or ``n`` unconditional ones; the defaults are
        the folder's. Returns (n, 1, 28, 28) float32 on the CPU, in [-1, 1]."""
        if labels is None and guidance is not None:
            raise ValueError("guidance steers towards labels: without labels the model samples unconditionally "
                             "and would ignore it; give labels=[...] or drop guidance")
        steps, w, sampler = self.defaults(steps, guidance, sampler)
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r} for a latent model: choose one of {', '.join(SAMPLERS)}")
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.dim() != 1 or labels.numel() == 0 or labels.is_floating_point():
                raise ValueError(f"labels must be a non-empty list of whole numbers such as [3, 7], got {labels!r}")
            if n is not None and n != labels.numel():
                raise ValueError(f"n={n} but {labels.numel()} labels: give labels (one image each) or n, not both")
        return finish(self.generate(n=n, labels=labels, guidance=w, steps=steps, sampler=sampler, eta=eta,
                                    generator=generator(seed), callback=callback))

    @torch.no_grad()
    def generate(self, n: int | None = None, labels: torch.Tensor | None = None, guidance: float | None = None,
                 steps: int | None = None, sampler: str = "ddim", eta: float | None = None,
                 generator: torch.Generator | None = None, callback=None, return_latents: bool = False,
                 clip_x0: bool | float | None = None):
        """Sample ``n`` digits (or one per label in ``labels``, guided with scale ``guidance``, default the
        folder's). ``clip_x0`` (default: the autoencoder's ``latent_bound``) is the samplers' argument; False
        samples unclipped.

        Returns: images (n, 1, 28, 28) in [-1, 1]; with ``return_latents``, (images, z0 (n, C, 7, 7)).
        """
        device = next(self.unet.parameters()).device
        if labels is not None:
            labels = labels.to(device)
            n = len(labels)
        if n is None:
            raise ValueError("give n (unconditional samples) or labels")
        w = self.sampling["guidance"] if guidance is None else guidance
        net = guided(self.unet, w) if labels is not None else self.unet
        schedule = make_schedule(self.schedule_name, self.T, device)
        z0 = sample(net, n, schedule, sampler=sampler, steps=steps, eta=eta, generator=generator, cond=labels,
                    device=device, clip_x0=(self.autoencoder.latent_bound or False) if clip_x0 is None else clip_x0,
                    shape=self.autoencoder.latent_shape, callback=callback)
        with inference_autocast(device):
            images = torch.cat([self.autoencoder.from_latent(z0[i:i + 500]).float() for i in range(0, n, 500)])
        return (images, z0) if return_latents else images


def check_autoencoder_file(folder: str | Path, expected_sha: str | None = None) -> None:
    """Is ``folder/model.safetensors`` intact? Its hash not matching a latent model's record means either
    another autoencoder (retrain the latent model) or a damaged file (restore the file): this tells which.

    Raises:
        CheckpointError: one line naming the file and the remedy for a damaged file: a truncated or
            unreadable file; the shipped autoencoder whose hash is not the one the shipped latent model
            records (`git checkout -- data/weights/autoencoder`); a user's autoencoder whose weights differ
            from its own training checkpoint's (``trainer/ema.safetensors``; delete it, or train it again).
    """
    folder = Path(folder)
    path = folder / "model.safetensors"
    tensors = store.read_tensors(path)                  # truncated or not safetensors: names the file
    got = weights_sha256(folder)
    if expected_sha is not None and got == expected_sha:
        return
    shipped_latent = paths.weights_dir() / "latent" / "config.json"
    try:
        shipped = folder.resolve() == (paths.weights_dir() / "autoencoder").resolve()
    except OSError:
        shipped = False
    if shipped and shipped_latent.is_file():
        record = json.loads(shipped_latent.read_text()).get("autoencoder_sha256")
        if record and got != record:
            raise store.CheckpointError(
                f"{path} has been altered (sha256 {got[:12]}..., the shipped one is {record[:12]}...); "
                f"{store.fix_for(folder)}")
    ema_path = folder / "trainer" / "ema.safetensors"
    if not shipped and ema_path.is_file():
        ema = {k[len("module."):]: v for k, v in store.read_tensors(ema_path).items()
               if k.startswith("module.")}                # the averaged model that was exported
        if ema.keys() != tensors.keys() or not all(torch.equal(ema[k], tensors[k]) for k in tensors):
            raise store.CheckpointError(
                f"{path} has been altered: it differs from its own training checkpoint ({ema_path}); delete "
                f"{folder} (the shipped autoencoder is then used) or train it again with "
                f"`python -m course_lib train autoencoder`")


def find_autoencoder(sha: str, folders=None) -> Path:
    """The autoencoder folder whose weights hash to ``sha``: the user's checkpoint, then the shipped one.

    Raises:
        CheckpointError: a candidate's weights are damaged (``check_autoencoder_file``): the file and how
            to restore it, never "retrain the latent model".
        FileNotFoundError: the autoencoders there are intact but other ones than the latent model's.
    """
    folders = [Path(f) for f in (folders or (paths.default_checkpoint("autoencoder"),
                                             paths.weights_dir() / "autoencoder"))]
    present = [f for f in folders if (f / "model.safetensors").is_file()]
    for folder in present:
        if weights_sha256(folder) == sha:
            return folder
    for folder in present:                    # a damaged file must not pass for "another autoencoder"
        check_autoencoder_file(folder)
    raise FileNotFoundError(f"no autoencoder with weights sha256 {sha[:12]}... (the one this latent model was "
                            f"trained on) in {' or '.join(map(str, folders))}; retrain the latent model with "
                            f"`python -m course_lib train latent` on the autoencoder you have")


def load_latent(path: str | Path, device: torch.device | str = "cpu", autoencoder: str | Path | None = None
                ) -> LatentDiffusion:
    """Load a latent model folder and the autoencoder it was trained on (in eval mode).

    Args:
        autoencoder: its folder (default: found by the weights hash saved in the latent model's config).
    Raises:
        CheckpointError: ``autoencoder`` is another autoencoder than the one the model was trained on.
    """
    path = Path(path)
    cfg = store.read_config(path, "latent", "a latent model", "data/weights/latent",
                                  needs=("autoencoder_sha256",))
    sha = cfg["autoencoder_sha256"]
    ae_folder = find_autoencoder(sha) if autoencoder is None else Path(autoencoder)
    ae = load_autoencoder(ae_folder, device)
    diff = store.config_difference(cfg["autoencoder"], _config_of(ae_folder))
    got = weights_sha256(ae_folder)
    if not diff and got != sha:
        check_autoencoder_file(ae_folder)          # damaged, not another autoencoder: says how to restore it
    if diff or got != sha:
        why = f"its config differs ({diff})" if diff else f"its weights hash {got[:12]}..., not {sha[:12]}..."
        raise store.CheckpointError(f"{path} was trained on another autoencoder than {ae_folder}: {why}; "
                                          f"its latents would decode to noise. Pass the autoencoder it was "
                                          f"trained on, or retrain with `python -m course_lib train latent`")
    unet = unet_from_config(cfg)
    store.load_weights(unet, path, device=device)
    unet.T = int(cfg["T"])
    return LatentDiffusion(unet.to(device).eval(), ae, cfg["schedule"], cfg, path)
