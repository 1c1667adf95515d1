"""The denoising *model*: a small UNet that looks at a noisy image x_t and the step t and predicts the noise.

    model(x, t, cond=None) -> eps_hat        x: (B, 1, 28, 28), t: (B,) long in [0, T), eps_hat like x

Built bottom-up (after DDPM's UNet, Ho et al. 2020, Appendix B, made small for 28x28):

    x (B,1,28,28) --pixel_unshuffle(2)--> (B,4,14,14)     space-to-depth stem: 4x fewer positions
      -> conv -> [ResBlock x n] @14x14, C0  --skip-----------------------------.
      -> down (stride-2 conv) -> [ResBlock x n] @7x7, C1 --skip--------------. |
      -> middle: ResBlock, self-attention (+ cross-attention to text), ResBlock | |
      -> [ResBlock x n] (concat skip) @7x7 -> up (nearest + conv) <-----------' |
      -> [ResBlock x n] (concat skip) @14x14 <----------------------------------'
      -> GroupNorm, SiLU, conv -> (B,4,14,14) --pixel_shuffle(2)--> (B,1,28,28)

A latent of 7x7 (lesson 11: ``in_channels=C, image_size=7, patch=1``) skips the space-to-depth stem: the
same network then works at 7x7 and 4x4 (the stride-2 conv rounds 7 up to 4, the upsampling returns to 7).

Every ResBlock receives the embedding ``emb`` = MLP(sinusoidal(t)) [+ class embedding] [+ pooled text
embedding], added after its first convolution. Conditioning goes through ``cond`` without changing the call:

- ``None``: unconditional (for a conditional model: the learned "no condition" entry).
- a ``LongTensor`` of labels (B,) for a class-conditional model (``num_classes > 0``); the label
  ``num_classes`` (or -1) means "no condition".
- a ``TextCond`` (token embeddings, mask, pooled) for a text-conditional model (``context_dim > 0``).
- a float tensor (B, embed_dim) of CLIP image embeddings for an embedding-conditional model (``embed_dim > 0``,
  unCLIP's decoder, lesson 10); an all-zero row (never a unit embedding) means "no condition".
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .. import store

__all__ = ["UNetConfig", "TextCond", "timestep_embedding", "UNet", "unet_from_config",
           "load_unet"]


@dataclass
class UNetConfig:
    channels: tuple[int, ...] = (32, 64)     # width at 14x14 and at 7x7
    blocks: int = 1                          # residual blocks per level (each way)
    time_dim: int = 128
    attention: bool = False                  # self-attention at 7x7
    groups: int = 8                          # GroupNorm groups
    dropout: float = 0.0
    num_classes: int = 0                     # > 0: class-conditional (one extra "no class" entry)
    context_dim: int = 0                     # > 0: text-conditional (cross-attention to token embeddings)
    heads: int = 4
    embed_dim: int = 0                       # > 0: conditioned on a (B, embed_dim) vector (unCLIP's decoder)
    in_channels: int = 1                     # channels of the input: 1 for digits, C for a latent (lesson 11)
    image_size: int = 28                     # 28 for pixels; 7 for a 7x7 latent (levels 7x7 and 4x4)
    patch: int = 2                           # the stem's space-to-depth factor; 1 (none) for a 7x7 latent
    kind: str = field(default="unet")

    # Fields added after models were shipped are left out of ``to_dict`` while they keep their default, so
    # the configs saved with the shipped weights (and ``find_matching`` on them) stay as they were.
    OPTIONAL = ("embed_dim", "in_channels", "image_size", "patch")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        for name in self.OPTIONAL:
            if d[name] == self.__dataclass_fields__[name].default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        d = dict(d)
        d.pop("kind", None)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


class TextCond(NamedTuple):
    """Text conditioning: ``tokens`` (B, L, D) per-token embeddings, ``mask`` (B, L) bool (True = real token),
    ``pooled`` (B, D) one vector per prompt."""
    tokens: torch.Tensor
    mask: torch.Tensor
    pooled: torch.Tensor


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of the step t (Vaswani et al. 2017, Sec. 3.5; used by DDPM, Appendix B).

    emb[:, i] = sin(t * w_i), emb[:, dim/2 + i] = cos(t * w_i), w_i = max_period^(-i / (dim/2)).
    Args: t: (B,) integer or float steps. Returns: (B, dim).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]                              # (B, half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv3x3 (+ embedding) -> GroupNorm -> SiLU -> dropout -> conv3x3, plus skip."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.emb = nn.Linear(emb_dim, c_out)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.drop = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))                            # (B, C_out, H, W)
        h = h + self.emb(F.silu(emb))[:, :, None, None]                  # add the step (and condition)
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return h + self.skip(x)


class Attention(nn.Module):
    """Multi-head attention over the H*W positions (self) or from positions to text tokens (cross).

    softmax(Q K^T / sqrt(d)) V  (Vaswani et al. 2017, Eq. 1); ``last_weights`` keeps the cross-attention
    weights (B, heads, H*W, L) of the last call when ``keep_weights`` is set, for the lessons' pictures.
    """

    def __init__(self, channels: int, groups: int, heads: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, channels)
        self.q = nn.Linear(channels, channels)
        self.kv = nn.Linear(context_dim or channels, 2 * channels)
        self.out = nn.Linear(channels, channels)
        self.keep_weights = False
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)                     # (B, HW, C)
        ctx = h if context is None else context                          # (B, L, C_ctx)
        q = self.q(h)
        k, v = self.kv(ctx).chunk(2, dim=-1)
        nh, hs = self.heads, C // self.heads
        q, k, v = (z.reshape(B, -1, nh, hs).transpose(1, 2) for z in (q, k, v))  # (B, nh, N, hs)
        attn_mask = None if mask is None else mask[:, None, None, :]     # (B, 1, 1, L) True = attend
        if self.keep_weights:
            scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            w = scores.softmax(-1)
            self.last_weights = w.detach()
            y = w @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        y = y.transpose(1, 2).reshape(B, H * W, C)
        return x + self.out(y).transpose(1, 2).reshape(B, C, H, W)


class UNet(nn.Module):
    def __init__(self, config: UNetConfig | None = None, **kwargs):
        super().__init__()
        cfg = config or UNetConfig(**kwargs)
        if len(cfg.channels) != 2:
            raise ValueError(f"this UNet has two resolutions (14x14 and 7x7): channels must have 2 entries, "
                             f"got {cfg.channels}")
        self.config = cfg
        c0, c1 = cfg.channels
        E, g = cfg.time_dim * 2, cfg.groups
        self.time_mlp = nn.Sequential(nn.Linear(cfg.time_dim, E), nn.SiLU(), nn.Linear(E, E))
        if cfg.num_classes:
            self.class_emb = nn.Embedding(cfg.num_classes + 1, E)       # last entry: "no class"
        if cfg.context_dim:
            self.pooled_proj = nn.Linear(cfg.context_dim, E)
            self.null_context = nn.Parameter(torch.zeros(1, 1, cfg.context_dim))
        if cfg.embed_dim:                                                # unCLIP (Ramesh et al. 2022, Sec. 2.1):
            self.embed_proj = nn.Linear(cfg.embed_dim, E)                # the image embedding projected and
            self.null_embed = nn.Parameter(torch.zeros(cfg.embed_dim))   # added to the time embedding
        if cfg.image_size % cfg.patch:
            raise ValueError(f"image_size {cfg.image_size} is not divisible by the stem's patch {cfg.patch}")
        stem_channels = cfg.in_channels * cfg.patch ** 2                 # after space-to-depth
        self.stem = nn.Conv2d(stem_channels, c0, 3, padding=1)
        self.down0 = nn.ModuleList([ResBlock(c0, c0, E, g, cfg.dropout) for _ in range(cfg.blocks)])
        self.downsample = nn.Conv2d(c0, c0, 3, stride=2, padding=1)      # 14 -> 7
        self.down1 = nn.ModuleList([ResBlock(c0 if i == 0 else c1, c1, E, g, cfg.dropout)
                                    for i in range(cfg.blocks)])
        self.mid1 = ResBlock(c1, c1, E, g, cfg.dropout)
        self.mid_attn = Attention(c1, g, cfg.heads) if cfg.attention else None
        self.mid_cross = Attention(c1, g, cfg.heads, cfg.context_dim) if cfg.context_dim else None
        self.mid2 = ResBlock(c1, c1, E, g, cfg.dropout)
        self.up1 = nn.ModuleList([ResBlock(2 * c1 if i == 0 else c1, c1, E, g, cfg.dropout)
                                  for i in range(cfg.blocks)])
        self.up1_cross = Attention(c1, g, cfg.heads, cfg.context_dim) if cfg.context_dim else None
        self.upsample = nn.Conv2d(c1, c0, 3, padding=1)                  # after nearest 7 -> 14
        self.up0 = nn.ModuleList([ResBlock(2 * c0 if i == 0 else c0, c0, E, g, cfg.dropout)
                                  for i in range(cfg.blocks)])
        self.out_norm = nn.GroupNorm(g, c0)
        self.out = nn.Conv2d(c0, stem_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)                                  # start by predicting zero noise
        nn.init.zeros_(self.out.bias)

    def _embed(self, t: torch.Tensor, cond, B: int, device) -> tuple[torch.Tensor, TextCond | None]:
        emb = self.time_mlp(timestep_embedding(t, self.config.time_dim))
        text = None
        if self.config.num_classes:
            labels = cond if cond is not None else torch.full((B,), -1, device=device, dtype=torch.long)
            if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long:
                raise ValueError("a class-conditional UNet takes cond = a LongTensor of labels (B,) or None")
            labels = torch.where(labels < 0, torch.full_like(labels, self.config.num_classes), labels)
            emb = emb + self.class_emb(labels)
        elif self.config.context_dim:
            if cond is None:
                ctx = self.null_context.expand(B, 1, -1)
                text = TextCond(ctx, torch.ones(B, 1, dtype=torch.bool, device=device), ctx[:, 0] * 0)
            elif isinstance(cond, TextCond):
                text = cond
            else:
                raise ValueError("a text-conditional UNet takes cond = a TextCond or None")
            emb = emb + self.pooled_proj(text.pooled.to(emb.dtype))
        elif self.config.embed_dim:
            if cond is None:
                cond = torch.zeros(B, self.config.embed_dim, device=device)
            if (not isinstance(cond, torch.Tensor) or not cond.dtype.is_floating_point
                    or cond.shape != (B, self.config.embed_dim)):
                raise ValueError(f"an embedding-conditional UNet takes cond = a float tensor (B, "
                                 f"{self.config.embed_dim}) or None, got "
                                 f"{tuple(cond.shape) if isinstance(cond, torch.Tensor) else type(cond).__name__}")
            null = (cond == 0).all(-1, keepdim=True)                     # (B, 1): "no condition" rows
            vec = torch.where(null, self.null_embed.to(cond.dtype).expand_as(cond), cond)
            emb = emb + self.embed_proj(vec.to(emb.dtype))
        elif cond is not None:
            raise ValueError("this UNet is unconditional: call it with cond=None")
        return emb, text

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond=None) -> torch.Tensor:
        c, s = self.config.in_channels, self.config.image_size
        if x.dim() != 4 or x.shape[1:] != (c, s, s):
            raise ValueError(f"expected x of shape (B, {c}, {s}, {s}), got {tuple(x.shape)}")
        B = x.shape[0]
        if t.dim() == 0:
            t = t.expand(B)
        emb, text = self._embed(t, cond, B, x.device)
        p = self.config.patch
        h = self.stem(F.pixel_unshuffle(x, p) if p > 1 else x)           # (B, C0, 14, 14) (a latent: 7x7)
        for blk in self.down0:
            h = blk(h, emb)
        skip0 = h
        h = self.downsample(h)                                           # (B, C0, 7, 7) (a latent: 4x4)
        for blk in self.down1:
            h = blk(h, emb)
        skip1 = h                                                        # (B, C1, 7, 7)
        h = self.mid1(h, emb)
        if self.mid_attn is not None:
            h = self.mid_attn(h)
        if self.mid_cross is not None:
            h = self.mid_cross(h, text.tokens.to(h.dtype), text.mask)
        h = self.mid2(h, emb)
        h = torch.cat([h, skip1], dim=1)
        for blk in self.up1:
            h = blk(h, emb)
        if self.up1_cross is not None:
            h = self.up1_cross(h, text.tokens.to(h.dtype), text.mask)
        h = self.upsample(F.interpolate(h, size=skip0.shape[-2:], mode="nearest"))  # (B, C0, 14, 14)
        h = torch.cat([h, skip0], dim=1)
        for blk in self.up0:
            h = blk(h, emb)
        h = self.out(F.silu(self.out_norm(h)))
        return F.pixel_shuffle(h, p) if p > 1 else h                     # (B, 1, 28, 28) (a latent: C, 7, 7)


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
    cfg = store.read_json(path / "config.json")
    kind = cfg.get("kind", "unet") if isinstance(cfg, dict) else None
    if kind != "unet" or "channels" not in cfg:
        raise store.CheckpointError(
            f"{path / 'config.json'} is not a course UNet's config (kind {kind!r}): {path} holds another kind of "
            f"model; pass a denoiser or class model folder (e.g. data/weights/class)")
    try:
        model = unet_from_config(cfg)
    except (TypeError, ValueError, KeyError) as e:
        raise store.CheckpointError(f"{path / 'config.json'} does not describe a UNet this course can build "
                                          f"({e}); delete the folder or restore it") from None
    store.load_weights(model, path, device=device, raw=raw, guide=guide)
    if "T" in cfg:                             # the chain it was trained on, checked by samplers.sample
        model.T = int(cfg["T"])
    model.objective = cfg.get("objective", "eps")     # "flow": a velocity model (flow.py), not a DDPM sampler's
    has_training = cfg.get("clusters") and (path / "training.json").is_file()
    sizes = store.read_training(path).get("cluster_sizes") if has_training else None
    if sizes is not None:                      # the denoiser: how often each cluster occurred in training
        model.cluster_sizes = torch.tensor(sizes)
    return model.eval(), cfg
