"""The autoencoder of latent diffusion (lesson 11): 28x28x1 digits <-> a 7x7xC latent, KL-regularised.

    encode:  x (B,1,28,28) -> conv @28 -> down @14 -> ResBlock -> down @7 -> ResBlock -> (mean, logvar) (B,C,7,7)
    sample:  z = mean + exp(logvar / 2) * eps                     the reparameterisation (Kingma & Welling 2014)
    decode:  z (B,C,7,7) -> ResBlock @7 -> up @14 -> ResBlock -> up @28 -> conv -> x_hat (B,1,28,28)

This is the recipe of Stable Diffusion's first stage (Rombach et al. 2022, "High-Resolution Image Synthesis with
Latent Diffusion Models", Sec. 3.1 and Appendix G), made small: an encoder to a latent 4x smaller on each
side, a decoder back, and a *slight* KL penalty towards N(0, I) (weight about 1e-6 there) that keeps the
latent space from drifting to arbitrary scales without making it blurry. Stable Diffusion also adds a
perceptual loss (LPIPS) and a patch-based adversarial loss, which keep the decoded textures sharp at 512x512;
for digits the pixel loss alone reconstructs well enough (``bench/latent.py`` measures it).

The diffusion model then works on ``scaling_factor * z``: one number, computed from the training data after
the autoencoder is trained, that gives the latents unit variance (the noise schedule assumes data of about
unit scale). Stable Diffusion's 0.18215 is the same idea, measured on its own data. Training lives in
``training/latent.py``; this module knows no data and no loop.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import store

__all__ = ["AutoencoderConfig", "Autoencoder", "Posterior", "kl_divergence", "load_autoencoder",
           "weights_sha256", "LATENT_SIZE"]

LATENT_SIZE = 7                 # 28 / 4: two stride-2 steps


@dataclass
class AutoencoderConfig:
    latent_channels: int = 4                 # C of the 7x7xC latent
    channels: tuple[int, ...] = (16, 32, 64)  # width at 28x28, 14x14 and 7x7
    groups: int = 8                          # GroupNorm groups
    kind: str = field(default="autoencoder")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AutoencoderConfig":
        names = {"latent_channels", "channels", "groups"}
        d = {k: v for k, v in d.items() if k in names}
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class Posterior(NamedTuple):
    """q(z | x) = N(mean, diag(exp(logvar))), each (B, C, 7, 7)."""
    mean: torch.Tensor
    logvar: torch.Tensor

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """z = mean + sigma * eps, eps ~ N(0, I) (Kingma & Welling 2014, Eq. 10: the reparameterisation)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + torch.exp(0.5 * self.logvar) * eps


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(mean^2 + exp(logvar) - 1 - logvar), summed over each
    example's latent (Kingma & Welling 2014, Appendix B).

    Args: mean, logvar: (B, C, H, W). Returns: (B,) one KL per example, in nats.
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


class _Block(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 -> GroupNorm -> SiLU -> conv3x3, plus the input (the UNet's ResBlock
    without the time embedding)."""

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, channels)
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Autoencoder(nn.Module):
    """``encode(x) -> Posterior``, ``decode(z) -> x_hat``; ``to_latent`` / ``from_latent`` apply the scaling
    factor (what the diffusion model sees). ``scaling_factor`` (a float, 1.0 until training measures it) is
    saved in ``config.json`` beside the weights."""

    def __init__(self, config: AutoencoderConfig | None = None, scaling_factor: float = 1.0,
                 latent_bound: float | None = None, **kwargs):
        super().__init__()
        cfg = config or AutoencoderConfig(**kwargs)
        if len(cfg.channels) != 3:
            raise ValueError(f"the autoencoder has three resolutions (28, 14, 7): channels must have 3 entries, "
                             f"got {cfg.channels}")
        self.config, self.scaling_factor = cfg, float(scaling_factor)
        # the range [-b, b] that holds the training latents (scaled), measured with the scaling factor: a
        # sampler clips its predicted x0 to it, as a pixel sampler clips to [-1, 1] (None: not measured)
        self.latent_bound = None if latent_bound is None else float(latent_bound)
        c28, c14, c7 = cfg.channels
        C, g = cfg.latent_channels, cfg.groups
        self.encoder = nn.Sequential(
            nn.Conv2d(1, c28, 3, padding=1), nn.SiLU(),
            nn.Conv2d(c28, c14, 3, stride=2, padding=1), _Block(c14, g),               # 28 -> 14
            nn.Conv2d(c14, c7, 3, stride=2, padding=1), _Block(c7, g),                 # 14 -> 7
            nn.GroupNorm(g, c7), nn.SiLU(), nn.Conv2d(c7, 2 * C, 3, padding=1))        # mean and logvar
        self.decoder = nn.Sequential(
            nn.Conv2d(C, c7, 3, padding=1), _Block(c7, g),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c7, c14, 3, padding=1), _Block(c14, g),
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c14, c28, 3, padding=1),
            nn.GroupNorm(g, c28), nn.SiLU(), nn.Conv2d(c28, 1, 3, padding=1))

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return (self.config.latent_channels, LATENT_SIZE, LATENT_SIZE)

    def encode(self, x: torch.Tensor) -> Posterior:
        """x: (B, 1, 28, 28) in [-1, 1] -> q(z | x), mean and logvar (B, C, 7, 7)."""
        if x.dim() != 4 or x.shape[1:] != (1, 28, 28):
            raise ValueError(f"the autoencoder encodes images of shape (B, 1, 28, 28), got {tuple(x.shape)}")
        if x.numel() and (x.min() < -1.01 or x.max() > 1.01):
            raise ValueError(f"images must be in [-1, 1] (as load_mnist gives them), got values in "
                             f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return Posterior(mean, logvar.clamp(-30.0, 20.0))        # as Stable Diffusion's VAE bounds it

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, C, 7, 7) (unscaled) -> x_hat (B, 1, 28, 28), about [-1, 1]."""
        if z.dim() != 4 or z.shape[1:] != self.latent_shape:
            C, s, _ = self.latent_shape
            raise ValueError(f"this autoencoder decodes latents of shape (B, {C}, {s}, {s}), got {tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, Posterior]:
        """Reconstruct x through a sampled latent: (x_hat, posterior)."""
        post = self.encode(x)
        return self.decode(post.sample(generator)), post

    def to_latent(self, x: torch.Tensor, generator: torch.Generator | None = None,
                  sample: bool = True) -> torch.Tensor:
        """What the diffusion model sees: scaling_factor * z, z ~ q(z | x) (or its mean, ``sample=False``)."""
        post = self.encode(x)
        return self.scaling_factor * (post.sample(generator) if sample else post.mean)

    def from_latent(self, z_scaled: torch.Tensor) -> torch.Tensor:
        """Decode a diffusion model's latent: decode(z_scaled / scaling_factor), clamped to [-1, 1]."""
        return self.decode(z_scaled / self.scaling_factor).clamp(-1.0, 1.0)


def weights_sha256(folder: str | os.PathLike) -> str:
    """The SHA-256 of ``folder/model.safetensors``: which autoencoder a latent model was trained on."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_autoencoder(path: str | os.PathLike, device: torch.device | str = "cpu") -> Autoencoder:
    """Load an autoencoder folder (``config.json`` with its ``scaling_factor`` and ``latent_bound``,
    ``model.safetensors``), in eval mode."""
    path = Path(path)
    cfg = store.read_config(path, "autoencoder", "an autoencoder", "data/weights/autoencoder")
    model = Autoencoder(AutoencoderConfig.from_dict(cfg), scaling_factor=cfg.get("scaling_factor", 1.0),
                        latent_bound=cfg.get("latent_bound"))
    store.load_weights(model, path, device=device)
    return model.eval()
