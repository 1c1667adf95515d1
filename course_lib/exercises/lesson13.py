"""Checks for lesson 13 (a miniature Stable Diffusion 3): the MMDiT's two new pieces, written by hand.

1. ``joint_attention(q_x, k_x, v_x, q_c, k_c, v_c, heads) -> (out_x, out_c)``: SD3's joint attention (Esser
   et al. 2024, Sec. 4, Fig. 2a). Concatenate text and image along the sequence (text first), run one
   multi-head attention over all tokens, split the result back into the image part and the text part.
   Reference: ``course_lib.networks.mmdit.joint_attention`` (without a text mask: every token is real here).
2. ``adaln_zero(x, branch, shift, scale, gate) -> x + gate * branch(modulate(LayerNorm(x), shift, scale))``:
   DiT's adaLN-Zero residual (Peebles & Xie 2023, Sec. 3.2), with LayerNorm without weights (eps 1e-6) and
   modulate(h) = h * (1 + scale) + shift, one shift, scale and gate per example. Reference:
   ``course_lib.networks.mmdit.adaln_zero``. A last case checks the point of the "Zero": with the modulation
   initialised to zero, the student's residual is exactly the identity.
"""
from __future__ import annotations

import torch
from torch import nn

from ..networks.mmdit import adaln_zero, joint_attention
from . import Case, CheckResult, check_function, report

__all__ = ["reference_joint_attention", "check_joint_attention", "reference_adaln_zero", "check_adaln_zero"]


# --------------------------------------------------------------------------- exercise 1: joint attention
def reference_joint_attention(q_x, k_x, v_x, q_c, k_c, v_c, heads: int):
    """``mmdit.joint_attention`` with every text token real: (out_x (B, N, D), out_c (B, L, D))."""
    return joint_attention(q_x, k_x, v_x, q_c, k_c, v_c, heads)


def _joint_cases() -> list[Case]:
    g = torch.Generator().manual_seed(13)

    def qkv(B, N, L, D):
        return (*(torch.randn(B, N, D, generator=g) for _ in range(3)),
                *(torch.randn(B, L, D, generator=g) for _ in range(3)))
    return [
        Case("one head, 1 example, 4 image tokens and 2 text tokens of width 8", (*qkv(1, 4, 2, 8), 1)),
        Case("two heads, 3 examples, 9 image tokens and 5 text tokens of width 16", (*qkv(3, 9, 5, 16), 2)),
        Case("four heads, 2 examples, 16 image tokens and 13 text tokens of width 32", (*qkv(2, 16, 13, 32), 4)),
    ]


def check_joint_attention(student_fn) -> CheckResult:
    return check_function("joint_attention", student_fn, reference_joint_attention, _joint_cases(),
                          hint="q = torch.cat([q_c, q_x], dim=1) (text first), the same for k and v; split D "
                               "into heads ((B, S, D) -> (B, heads, S, D // heads)), softmax(q k^T / "
                               "sqrt(D // heads)) v, merge the heads back, then out[:, :L] is the text and "
                               "out[:, L:] the image. Return (out_x, out_c), image first.",
                          atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- exercise 2: adaLN-Zero
def reference_adaln_zero(x, branch, shift, scale, gate):
    """``mmdit.adaln_zero``: x + gate * branch(LN(x) * (1 + scale) + shift), per-example vectors."""
    return adaln_zero(x, branch, shift, scale, gate)


def _adaln_cases() -> list[Case]:
    g = torch.Generator().manual_seed(130)
    torch.manual_seed(130)
    mlp = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)).requires_grad_(False)
    x = torch.randn(3, 5, 8, generator=g) * 2 + 1                       # not normalised: the LayerNorm matters
    shift, scale, gate = (torch.randn(3, 8, generator=g) for _ in range(3))
    zero = torch.zeros(3, 8)
    return [
        Case("3 examples of 5 tokens of width 8, branch = a small MLP, random shift, scale and gate",
             (x, mlp, shift, scale, gate)),
        Case("the same with branch = the identity (checks LayerNorm and modulate alone)",
             (x, lambda h: h, shift, scale, gate)),
        Case("the same with gate = 1 and shift = scale = 0 (the plain pre-LN residual)",
             (x, mlp, zero, zero, torch.ones(3, 8))),
    ]


def check_adaln_zero(student_fn) -> CheckResult:
    hint = ("LayerNorm over the last dimension without weights: torch.nn.functional.layer_norm(x, x.shape[-1:], "
            "eps=1e-6). shift, scale and gate are (B, D): give them a token axis with [:, None] before "
            "combining with (B, N, D) tokens; modulate is h * (1 + scale) + shift.")
    result = check_function("adaln_zero", student_fn, reference_adaln_zero, _adaln_cases(), hint=hint,
                            atol=1e-5, rtol=1e-4, quiet=True)
    if not result.passed:
        return report(result)
    # the "Zero": a modulation Linear initialised to zero gives shift = scale = gate = 0, so the residual is x
    torch.manual_seed(131)
    modulation = nn.Linear(8, 3 * 8)
    nn.init.zeros_(modulation.weight)
    nn.init.zeros_(modulation.bias)
    x = torch.randn(2, 6, 8)
    y = torch.randn(2, 8)                                               # timestep + pooled text vector
    shift, scale, gate = modulation(torch.nn.functional.silu(y)).chunk(3, dim=-1)
    mlp = nn.Sequential(nn.Linear(8, 8), nn.GELU(), nn.Linear(8, 8))
    out = student_fn(x, mlp, shift, scale, gate)
    if not torch.equal(out, x):
        return report(CheckResult("adaln_zero", True, False,
                                  f"[x] adaln_zero: matches on random inputs, but with a zero-initialised "
                                  f"modulation (shift = scale = gate = 0) it is not the identity (max change "
                                  f"{(out - x).abs().max().item():.3g}).\n    hint: the gate multiplies the whole "
                                  f"branch, and the residual adds it to x itself, not to LayerNorm(x)."))
    return report(CheckResult("adaln_zero", True, True,
                              f"[ok] adaln_zero: correct on all {len(_adaln_cases())} cases, and a zero-initialised "
                              f"modulation leaves x unchanged (the identity)."))
