"""Checks for lesson 09 (a language model as text encoder): the sentence vector by mean pooling, and freezing
the encoder.

The student writes ``mean_pool(tokens, mask) -> (B, D)``: the mean of the *real* tokens' states (padding must
not count), scaled to unit length, which is how all-MiniLM-L6-v2 turns its token states into one sentence
vector (``course_lib.networks.text_encoders.mean_pool`` is the reference). The cases are random tensors, so the check
means the same under every profile.

The second exercise is Imagen's own line (Saharia et al. 2022, Sec. 2.1: "we freeze the weights of the text
encoder"). The student writes ``freeze(encoder) -> encoder``: no gradient may reach its weights, and it must run
in evaluation mode (no dropout), so a prompt gives the same vectors every time, which is what lets its
outputs be computed once (``CaptionTable``). ``course_lib.networks.text_encoders.LanguageEncoder`` is frozen the same
way (``requires_grad_(False)`` and a ``train`` that always stays in eval mode). The check builds a tiny
encoder with dropout, so it means the same under every profile.
"""
from __future__ import annotations

import torch

from ..networks.text_encoders import mean_pool
from . import Case, CheckResult, check_function, report

__all__ = ["reference_mean_pool", "check_mean_pool", "reference_freeze", "check_freeze", "TinyEncoder"]


def reference_mean_pool(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``language_encoder.mean_pool``: (B, L, D) states and (B, L) mask -> (B, D) unit vectors."""
    return mean_pool(tokens, mask)


def _cases() -> list[Case]:
    g = torch.Generator().manual_seed(9)
    tokens = torch.randn(3, 6, 8, generator=g)
    full = torch.ones(3, 6, dtype=torch.long)
    padded = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]])
    big = 50 * torch.randn(2, 5, 384, generator=g)
    return [
        Case("3 prompts of 6 real tokens each, D = 8 (no padding)", (tokens, full)),
        Case("3 prompts of 6, 3 and 2 real tokens, the rest padding (mask of 0s)", (tokens, padded)),
        Case("the same mask as booleans (True = real token)", (tokens, padded.bool())),
        Case("D = 384 with large values: the result must still have length 1", (big, torch.tensor(
            [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]))),
    ]


def check_mean_pool(student_fn) -> CheckResult:
    return check_function("mean_pool", student_fn, reference_mean_pool, _cases(),
                          hint="multiply the states by the mask (as floats, shape (B, L, 1)) so padding adds "
                               "nothing, sum over L, divide by the number of real tokens, then divide each row "
                               "by its length (torch.nn.functional.normalize).", atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------- exercise 2: freeze the encoder
class TinyEncoder(torch.nn.Module):
    """A stand-in text encoder: token ids (B, L) -> states (B, L, 8), with dropout (as BERT-style encoders have)."""

    def __init__(self, vocab: int = 20, width: int = 8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.drop = torch.nn.Dropout(0.5)
        self.proj = torch.nn.Linear(width, width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop(self.embed(ids)))


def reference_freeze(encoder: torch.nn.Module) -> torch.nn.Module:
    """No gradients for the weights, evaluation mode (dropout off); returns the encoder."""
    encoder.requires_grad_(False)
    return encoder.eval()


def _fail(name: str, what: str, hint: str) -> CheckResult:
    return report(CheckResult(name, True, False, f"[x] {name}: not quite.\n    {what}\n    hint: {hint}"))


def check_freeze(student_fn) -> CheckResult:
    """Freeze a fresh ``TinyEncoder`` with ``student_fn``, then train a head on its output for one step."""
    name, hint = "freeze", ("two things: encoder.requires_grad_(False) (no gradient for any weight) and "
                            "encoder.eval() (dropout off, so a prompt always gives the same vectors); return it.")
    torch.manual_seed(9)
    encoder = TinyEncoder()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    try:
        out = student_fn(encoder)
    except NotImplementedError:
        return report(CheckResult(name, False, False, f"[ ] {name}: not attempted yet - fill in the function above "
                                                      "and re-run."))
    except Exception as e:  # a student's bug: show it as a failed check, not a crash
        return _fail(name, f"raised {type(e).__name__}: {e}", hint)
    if out is not encoder:
        return _fail(name, "return the same encoder you were given (frozen in place), not a copy or None", hint)
    trainable = [k for k, p in encoder.named_parameters() if p.requires_grad]
    if trainable:
        return _fail(name, f"these weights would still get gradients: {', '.join(trainable)}", hint)
    if encoder.training or any(m.training for m in encoder.modules()):
        return _fail(name, "the encoder is still in training mode: its dropout changes the vectors on every call",
                     hint)
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    head = torch.nn.Linear(8, 1)
    opt = torch.optim.SGD(list(head.parameters()) + list(encoder.parameters()), lr=0.1)
    first = encoder(ids)
    head(first).pow(2).mean().backward()
    opt.step()
    if any(p.grad is not None for p in encoder.parameters()):
        return _fail(name, "a gradient reached the encoder's weights", hint)
    if any(not torch.equal(v, encoder.state_dict()[k]) for k, v in before.items()):
        return _fail(name, "one optimiser step changed the encoder's weights", hint)
    if not torch.equal(first, encoder(ids)):
        return _fail(name, "the same prompt gave different vectors on two calls", hint)
    return report(CheckResult(name, True, True, f"[ok] {name}: no gradient reaches the encoder, one training "
                                                "step leaves it unchanged, and it gives the same vectors twice."))
