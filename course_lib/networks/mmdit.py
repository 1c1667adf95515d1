"""The MMDiT: Stable Diffusion 3's backbone (Esser et al. 2024, "Scaling Rectified Flow Transformers for
High-Resolution Image Synthesis", Sec. 4 and Fig. 2), made small for 7x7x4 latents of digits.

    latents z (B, 4, 7, 7) --patchify p x p, Linear--> image tokens x (B, N, D)  + 2-D sin-cos positions
    text tokens (B, L, 384) ----------- Linear ------> text tokens  c (B, L, D)
    t (B,), pooled text (B, 384) --MLPs, summed--> y (B, D)          the vector every adaLN reads

    depth x JointBlock:                                  two streams, each with its own weights
        c_h = modulate(LN(c), shift, scale)   x_h = modulate(LN(x), shift, scale)    (from y: adaLN)
        q, k, v per stream; attention over the concatenated sequence [c; x]; split back    (joint attention)
        c = c + gate * proj_c(out_c)          x = x + gate * proj_x(out_x)
        c = c + gate * mlp_c(modulate(LN(c)))  x = x + gate * mlp_x(modulate(LN(x)))
    final: modulate(LN(x)) -> Linear -> p x p x 4 per token -> unpatchify -> v (B, 4, 7, 7)

adaLN-Zero (Peebles & Xie 2023, DiT, Sec. 3.2): every shift, scale and gate comes from a Linear on SiLU(y)
initialised to zero, so a fresh block is the identity on both streams, and the final layer is zero too: the
untrained network predicts v = 0. The last block's text stream is "pre-only" (SD3 / diffusers'
``context_pre_only``): its keys and values feed the image tokens, but nothing is computed after the
attention for text that no later layer reads.

Differences from SD3, chosen for a CPU: one text encoder (lesson 09's MiniLM, 384 wide, for both the tokens
and the pooled vector, where SD3 concatenates CLIP-L, CLIP-G and T5-XXL); padded text tokens are masked out
of the attention (SD3 attends to T5's padding); the positions are fixed 2-D sin-cos (DiT) rather than
SD3's cropped learned table; no QK-normalisation (SD3's Sec. 5.3.2, added for stability at 8B parameters).
A latent side not divisible by ``patch`` is zero-padded (7 -> 8 for patch 2) and cropped back.

The network interface is the course's: ``model(z, t, cond)`` with ``t`` the flow time times 1000 (``flow.velocity``)
and ``cond`` a ``TextCond`` (tokens, mask, pooled). This module knows no data and no training loop
(``training/mini_sd3.py``, ``pipelines/mini_sd3.py``).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .unet import TextCond, timestep_embedding

__all__ = ["MMDiTConfig", "MMDiT", "JointBlock", "modulate", "adaln_zero", "joint_attention", "patchify",
           "unpatchify", "sincos_2d"]


@dataclass
class MMDiTConfig:
    in_channels: int = 4          # C of the latent (lesson 11's autoencoder: 4)
    image_size: int = 7           # its side (28 / 4)
    patch: int = 1                # p: each token is a p x p x C patch (SD3: 2, on 128x128 latents)
    width: int = 128              # D: the token width of both streams (SD3: 64 x depth)
    depth: int = 4                # joint blocks (SD3: 24 for 2B, 38 for 8B)
    heads: int = 4                # attention heads (SD3: one per 64 numbers)
    mlp_ratio: float = 4.0        # hidden width of each MLP, in units of D
    context_dim: int = 384        # width of the text tokens (MiniLM: 384)
    pooled_dim: int = 384         # width of the pooled text vector
    time_dim: int = 256           # sinusoidal frequencies of t (SD3 and DiT: 256)
    kind: str = field(default="mmdit")

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} must be divisible by heads {self.heads}")
        if self.patch < 1 or self.depth < 1:
            raise ValueError(f"patch and depth must be >= 1, got patch={self.patch}, depth={self.depth}")

    @property
    def grid(self) -> int:
        """Tokens per side: ceil(image_size / patch) (the latent is zero-padded up to a multiple of p)."""
        return math.ceil(self.image_size / self.patch)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "MMDiTConfig":
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


# ---------------------------------------------------------------------------------------------- tokens
def patchify(z: torch.Tensor, p: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, N, p*p*C) tokens, row by row (ViT, Dosovitskiy et al. 2021, Sec. 3.1); H and W are
    zero-padded up to a multiple of p first, N = ceil(H/p) * ceil(W/p)."""
    B, C, H, W = z.shape
    z = F.pad(z, (0, (-W) % p, 0, (-H) % p))
    h, w = z.shape[2] // p, z.shape[3] // p
    return z.view(B, C, h, p, w, p).permute(0, 2, 4, 3, 5, 1).reshape(B, h * w, p * p * C)


def unpatchify(tokens: torch.Tensor, p: int, C: int, H: int, W: int) -> torch.Tensor:
    """The inverse of ``patchify``: (B, N, p*p*C) -> (B, C, H, W), the padding cropped off."""
    B = tokens.shape[0]
    h, w = math.ceil(H / p), math.ceil(W / p)
    z = tokens.view(B, h, w, p, p, C).permute(0, 5, 1, 3, 2, 4).reshape(B, C, h * p, w * p)
    return z[:, :, :H, :W]


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sin-cos positions (DiT's ``get_2d_sincos_pos_embed``; MAE, He et al. 2022): half the numbers
    encode the row, half the column, each as in Vaswani et al. 2017, Sec. 3.5. Returns (grid*grid, dim)."""
    if dim % 4:
        raise ValueError(f"the width must be divisible by 4 for 2-D sin-cos positions, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32),
                                indexing="ij")
    freqs = 1.0 / 10_000 ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))    # (D/4,)

    def one(pos):                                                       # (grid*grid,) -> (grid*grid, D/2)
        a = pos.reshape(-1, 1) * freqs
        return torch.cat([a.sin(), a.cos()], dim=1)
    return torch.cat([one(rows), one(cols)], dim=1)


# ---------------------------------------------------------------------------------------------- the two ideas
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, one shift and scale per example (DiT, Sec. 3.2; SD3, Fig. 2b).
    Args: x: (B, N, D) tokens (already LayerNorm-ed); shift, scale: (B, D). Returns (B, N, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


def adaln_zero(x: torch.Tensor, branch, shift: torch.Tensor, scale: torch.Tensor, gate: torch.Tensor,
               norm=None) -> torch.Tensor:
    """One adaLN-Zero residual: x + gate * branch(modulate(LN(x), shift, scale)) (DiT, Sec. 3.2). With the
    modulation initialised to zero the gate is 0 and this is x itself: every block starts as the identity.
    Args: x: (B, N, D); branch: (B, N, D) -> (B, N, D); shift, scale, gate: (B, D);
    norm: the LayerNorm without affine weights (default ``F.layer_norm`` over D, eps 1e-6). Returns (B, N, D)."""
    h = norm(x) if norm is not None else F.layer_norm(x, x.shape[-1:], eps=1e-6)
    return x + gate[:, None] * branch(modulate(h, shift, scale))


def joint_attention(q_x: torch.Tensor, k_x: torch.Tensor, v_x: torch.Tensor, q_c: torch.Tensor,
                    k_c: torch.Tensor, v_c: torch.Tensor, heads: int, c_mask: torch.Tensor | None = None,
                    return_weights: bool = False):
    """SD3's joint attention (Sec. 4, Fig. 2a): each stream brings its own queries, keys and values; they are
    concatenated along the sequence, text first ([c; x], as Stability's ``mmditx.py``), one attention runs over
    all N + L tokens, and the result is split back into the two streams.

        q = [q_c; q_x], k = [k_c; k_x], v = [v_c; v_x]      (B, L + N, D)
        out = softmax(q k^T / sqrt(D / heads)) v            per head; padded text keys masked out
        out_c, out_x = out[:, :L], out[:, L:]

    Args: q_x, k_x, v_x: (B, N, D) image; q_c, k_c, v_c: (B, L, D) text; c_mask: (B, L) True on real text
        tokens (None: all). return_weights: also return the attention weights (B, heads, L + N, L + N).
    Returns: (out_x (B, N, D), out_c (B, L, D)), and the weights when asked.
    """
    B, N, D = q_x.shape
    L = q_c.shape[1]

    def split_heads(t: torch.Tensor) -> torch.Tensor:                  # (B, S, D) -> (B, heads, S, D / heads)
        return t.view(B, -1, heads, D // heads).transpose(1, 2)
    q, k, v = (split_heads(torch.cat([c, x], dim=1)) for c, x in ((q_c, q_x), (k_c, k_x), (v_c, v_x)))
    mask = None
    if c_mask is not None:                                              # (B, 1, 1, L + N): which keys count
        keys = torch.cat([c_mask.bool(), torch.ones(B, N, dtype=torch.bool, device=q_x.device)], dim=1)
        mask = keys[:, None, None, :]
    if return_weights:
        scores = q @ k.transpose(-2, -1) / math.sqrt(D // heads)          # (B, heads, L + N, L + N)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.float().softmax(-1).to(q.dtype)
        out = weights @ v
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out = out.transpose(1, 2).reshape(B, L + N, D)
    out_c, out_x = out[:, :L], out[:, L:]
    return (out_x, out_c, weights) if return_weights else (out_x, out_c)


# ---------------------------------------------------------------------------------------------- modules
class _Stream(nn.Module):
    """One stream's weights in a joint block: adaLN modulation, q/k/v, output projection and MLP."""

    def __init__(self, width: int, mlp_ratio: float, pre_only: bool = False):
        super().__init__()
        self.pre_only = pre_only
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.modulation = nn.Linear(width, (2 if pre_only else 6) * width)  # shift, scale (, gate, and the MLP's)
        self.qkv = nn.Linear(width, 3 * width)
        if not pre_only:
            hidden = int(width * mlp_ratio)
            self.proj = nn.Linear(width, width)
            self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        nn.init.zeros_(self.modulation.weight)                          # adaLN-Zero (DiT, Sec. 3.2)
        nn.init.zeros_(self.modulation.bias)

    def pre(self, h: torch.Tensor, y: torch.Tensor):
        """q, k, v (B, S, D) each, and the modulation for after the attention (or None)."""
        mod = self.modulation(F.silu(y)).chunk(2 if self.pre_only else 6, dim=-1)
        q, k, v = self.qkv(modulate(self.norm(h), mod[0], mod[1])).chunk(3, dim=-1)
        return (q, k, v), mod[2:]

    def post(self, h: torch.Tensor, attn: torch.Tensor, mod) -> torch.Tensor:
        gate_a, shift_m, scale_m, gate_m = mod
        h = h + gate_a[:, None] * self.proj(attn)                       # the attention's gated residual
        return adaln_zero(h, self.mlp, shift_m, scale_m, gate_m, self.norm)


class JointBlock(nn.Module):
    """One MMDiT block (SD3, Fig. 2b): two streams with their own weights, one joint attention.
    ``forward(x, c, y, c_mask) -> (x, c)``; ``c`` is None after a ``pre_only`` block (the last one)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, pre_only: bool = False):
        super().__init__()
        self.heads = heads
        self.x_stream = _Stream(width, mlp_ratio)
        self.c_stream = _Stream(width, mlp_ratio, pre_only=pre_only)
        self.keep_weights = False          # set to keep the last attention weights (for attention maps)
        self.last_weights: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, c: torch.Tensor, y: torch.Tensor, c_mask: torch.Tensor | None = None):
        (q_x, k_x, v_x), mod_x = self.x_stream.pre(x, y)
        (q_c, k_c, v_c), mod_c = self.c_stream.pre(c, y)
        out = joint_attention(q_x, k_x, v_x, q_c, k_c, v_c, self.heads, c_mask, return_weights=self.keep_weights)
        if self.keep_weights:
            self.last_weights = out[2].detach()
        x = self.x_stream.post(x, out[0], mod_x)
        c = None if self.c_stream.pre_only else self.c_stream.post(c, out[1], mod_c)
        return x, c


class MMDiT(nn.Module):
    """``MMDiT(config)(z, t, cond) -> v``: z (B, C, H, W) latents, t (B,) the flow time x 1000, cond a
    ``TextCond`` (tokens (B, L, context_dim), mask (B, L), pooled (B, pooled_dim)); v like z (float32 under
    autocast too)."""

    def __init__(self, config: MMDiTConfig | None = None):
        super().__init__()
        self.config = cfg = config or MMDiTConfig()
        D = cfg.width
        self.patch_embed = nn.Linear(cfg.patch * cfg.patch * cfg.in_channels, D)   # a stride-p conv, as a Linear
        self.register_buffer("pos", sincos_2d(cfg.grid, D), persistent=False)      # (N, D), fixed
        self.context_embed = nn.Linear(cfg.context_dim, D)                          # SD3's context_embedder
        self.time_embed = nn.Sequential(nn.Linear(cfg.time_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.pooled_embed = nn.Sequential(nn.Linear(cfg.pooled_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList(JointBlock(D, cfg.heads, cfg.mlp_ratio, pre_only=(i == cfg.depth - 1))
                                    for i in range(cfg.depth))
        self.final_norm = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Linear(D, 2 * D)
        self.final = nn.Linear(D, cfg.patch * cfg.patch * cfg.in_channels)
        for m in (self.final_modulation, self.final):                   # adaLN-Zero: v = 0 at the start
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor, t: torch.Tensor, cond: TextCond | None = None) -> torch.Tensor:
        cfg = self.config
        if not isinstance(cond, TextCond):
            raise ValueError(f"the MMDiT reads a prompt: cond must be a TextCond (tokens, mask, pooled), got "
                             f"{type(cond).__name__}")
        B, C, H, W = z.shape
        if (C, H, W) != (cfg.in_channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"expected latents (B, {cfg.in_channels}, {cfg.image_size}, {cfg.image_size}), "
                             f"got {tuple(z.shape)}")
        x = self.patch_embed(patchify(z, cfg.patch)) + self.pos                     # (B, N, D)
        c = self.context_embed(cond.tokens)                                          # (B, L, D)
        y = (self.time_embed(timestep_embedding(t, cfg.time_dim).to(c.dtype))       # (B, D): SD3, Fig. 2a
             + self.pooled_embed(cond.pooled))
        for block in self.blocks:
            x, c = block(x, c, y, cond.mask)
        shift, scale = self.final_modulation(F.silu(y)).chunk(2, dim=-1)
        out = self.final(modulate(self.final_norm(x), shift, scale))                 # (B, N, p*p*C)
        return unpatchify(out.float(), cfg.patch, C, H, W)
