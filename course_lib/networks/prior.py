"""DALL-E 2's diffusion prior (Ramesh et al. 2022, Sec. 2.2) on the digits' CLIP vectors: the network.

    embed_scale                  sqrt(D): the prior diffuses sqrt(D) * z, unit variance per coordinate
    PriorConfig, DiffusionPrior  a residual MLP that predicts the clean image embedding from the noisy one,
                                 the time and the text embedding

Its loss and training run are ``training/unclip.py``; sampling it is ``pipelines/unclip.py``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .unet import timestep_embedding

__all__ = ["embed_scale", "PriorConfig", "DiffusionPrior", "rerank"]


def embed_scale(dim: int) -> float:
    """sqrt(D): a unit vector's coordinates have mean square 1/D; the prior diffuses sqrt(D) * z (mean square 1)."""
    return math.sqrt(dim)


# ---------------------------------------------------------------------------------------------- the prior
@dataclass
class PriorConfig:
    embed_dim: int = 64                     # the CLIP embedding size (both the vector and the text condition)
    width: int = 256                        # hidden width of the MLP
    blocks: int = 3                         # residual MLP blocks
    time_dim: int = 64                      # sinusoidal embedding of t
    kind: str = field(default="prior")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "PriorConfig":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.pop("kind", "prior") != "prior":
            raise ValueError("not a prior config")
        return cls(**d)


class PriorBlock(nn.Module):
    """LayerNorm -> Linear -> SiLU (+ time and text) -> Linear, plus the skip: a residual MLP block."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.emb = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(F.silu(self.fc1(self.norm(h)) + self.emb(emb)))       # (B, W)


class DiffusionPrior(nn.Module):
    """``prior(z_t, t, cond=None) -> z0_hat``: the clean (scaled) image embedding from a noisy one.

    An MLP denoiser over the vector (unCLIP used a decoder-only transformer over a few tokens, Sec. 2.2; one
    64-d vector needs no attention). Inputs: z_t (B, D), t (B,) long, and ``cond`` the unit text embedding
    (B, D), an all-zero row meaning "no text" (replaced by the learned ``null_text``); None: no text at all.
    """
    prediction = "x0"             # what it predicts, for the samplers (``samplers.prediction_of``)

    def __init__(self, config: PriorConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or PriorConfig(**kwargs)
        self.config = cfg
        D, W = cfg.embed_dim, cfg.width
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, W), nn.SiLU(), nn.Linear(W, W))
        self.text_proj = nn.Linear(D, W)
        self.null_text = nn.Parameter(torch.zeros(D))
        self.inp = nn.Linear(2 * D, W)                       # the noisy vector beside the text itself
        self.blocks = nn.ModuleList([PriorBlock(W) for _ in range(cfg.blocks)])
        self.out_norm = nn.LayerNorm(W)
        self.out = nn.Linear(W, D)

    def forward(self, z_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        D = self.config.embed_dim
        if z_t.dim() != 2 or z_t.shape[1] != D:
            raise ValueError(f"expected z_t of shape (B, {D}), got {tuple(z_t.shape)}")
        B = z_t.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        text = torch.zeros(B, D, device=z_t.device) if cond is None else cond
        if not isinstance(text, torch.Tensor) or text.shape != (B, D):
            raise ValueError(f"the prior takes cond = text embeddings (B, {D}) or None, got "
                             f"{tuple(text.shape) if isinstance(text, torch.Tensor) else type(text).__name__}")
        null = (text == 0).all(-1, keepdim=True)                                 # (B, 1): "no text" rows
        text = torch.where(null, self.null_text.expand(B, D), text.float())
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim)) + self.text_proj(text)   # (B, W)
        h = self.inp(torch.cat([z_t.float(), text], -1))                         # (B, W)
        for blk in self.blocks:
            h = blk(h, F.silu(emb))
        return self.out(self.out_norm(h))                                         # (B, D) z0_hat

def rerank(candidates: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """unCLIP's two-candidate rerank (Ramesh et al. 2022, Sec. 2.2): of the prior's samples for one caption,
    keep the one with the highest dot product with the caption's text embedding.

    Args: candidates: (B, K, D) K image embeddings per caption; text: (B, D). Returns: (B, D) the kept ones.
    """
    if candidates.dim() != 3 or text.dim() != 2 or candidates.shape[0] != text.shape[0] \
            or candidates.shape[2] != text.shape[1]:
        raise ValueError(f"rerank takes candidates (B, K, D) and text (B, D), got {tuple(candidates.shape)} "
                         f"and {tuple(text.shape)}")
    best = (candidates * text[:, None]).sum(-1).argmax(1)                      # (B,) index of the best of K
    return candidates[torch.arange(len(best), device=best.device), best]
