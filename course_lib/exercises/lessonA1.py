"""Checks for appendix A1 (debugging diffusion): the data-range check, the effective guidance scale, and
finding the sample set that came from a model left in training mode."""
from __future__ import annotations

import string
from typing import Callable

import torch

from ..diffusion.guidance import cfg_combine
from ..measures.diagnostics import check_data_range, effective_guidance_scale
from . import Case, CheckResult, check_function, report

__all__ = ["reference_range_ok", "check_range_ok", "check_effective_guidance", "shuffle_sets",
           "reference_find_train_mode", "check_find_train_mode"]


# --------------------------------------------------------------------------- exercise 1: the range check
def reference_range_ok(x: torch.Tensor) -> bool:
    """True when every value is in [-1, 1] (up to 1e-3) and the extremes come within 0.2 of -1 and of 1:
    ``diagnostics.check_data_range`` with its defaults."""
    return check_data_range(x).ok


def _digits(n: int, g: torch.Generator) -> torch.Tensor:
    """n fake 8x8 "digits" in [-1, 1]: a black background, white strokes and some grey edges."""
    strokes = (torch.rand(n, 1, 8, 8, generator=g) > 0.75).float()
    grey = torch.rand(n, 1, 8, 8, generator=g) * (torch.rand(n, 1, 8, 8, generator=g) > 0.9)
    return (torch.maximum(strokes, grey) * 2 - 1).clamp(-1, 1)


def check_range_ok(student_fn: Callable[[torch.Tensor], bool]) -> CheckResult:
    """``student_fn(x) -> bool``: is a batch of training images in the range the diffusion model expects?"""
    g = torch.Generator().manual_seed(11)
    x = _digits(16, g)                                                  # in [-1, 1], reaching both ends
    cases = [
        Case("16 digits in [-1, 1] (black -1, white +1)", (x,)),
        Case("the same digits in [0, 1] (what ToTensor() gives)", ((x + 1) / 2,)),
        Case("the same digits as raw bytes 0..255 (float)", ((x + 1) * 127.5,)),
        Case("the same digits normalised by MNIST's mean 0.1307 and std 0.3081",
             ((((x + 1) / 2) - 0.1307) / 0.3081,)),
        Case("the same digits in [-1, 1] with float rounding: one pixel at 1.0004", (x.clone().index_put_(
            (torch.tensor([0]), torch.tensor([0]), torch.tensor([0]), torch.tensor([0])), torch.tensor(1.0004)),)),
        Case("the same digits squeezed into [-0.6, 0.6]", (0.6 * x,)),
        Case("the same digits in [-0.9, 0.9] (within 0.2 of both ends: fine)", (0.9 * x,)),
    ]
    return check_function("range_ok", student_fn, reference_range_ok, cases, atol=0, rtol=0,
                          hint="two conditions: nothing outside [-1, 1] (allow 1e-3), and the range really "
                               "used: the minimum within 0.2 of -1 and the maximum within 0.2 of +1.")


# --------------------------------------------------------------------------- exercise 2: the effective w
def check_effective_guidance(student_fn: Callable[..., float]) -> CheckResult:
    """``student_fn(eps_guided, eps_uncond, eps_cond) -> float``: the w the guided prediction applies."""
    g = torch.Generator().manual_seed(12)
    eps_u, eps_c = torch.randn(3, 1, 6, 6, generator=g), torch.randn(3, 1, 6, 6, generator=g)
    wobble = 0.3 * torch.randn(3, 1, 6, 6, generator=g)                # not exactly a guided prediction
    cases = [
        Case(f"eps_guided = cfg_combine(eps_uncond, eps_cond, w={w}) on random (3, 1, 6, 6) predictions",
             (cfg_combine(eps_u, eps_c, w), eps_u, eps_c)) for w in (3.0, 0.0, 1.0, -2.0)
    ] + [
        Case("eps_guided = cfg_combine(eps_uncond, eps_cond, w=2.5) plus some unrelated noise",
             (cfg_combine(eps_u, eps_c, 2.5) + wobble, eps_u, eps_c)),
    ]
    return check_function("effective_guidance", student_fn, effective_guidance_scale, cases, atol=1e-4,
                          rtol=1e-4,
                          hint="w scales the direction d = eps_cond - eps_uncond. Project eps_guided - "
                               "eps_uncond onto d, using every value at once (a dot product divided by "
                               "d's squared length): one pixel alone is thrown off by noise.")


# --------------------------------------------------------------------------- exercise 3: which set?
def shuffle_sets(named: dict, k: int = 0) -> dict[str, object]:
    """The values of ``named`` under the letters A, B, C, ..., in an order set by ``k`` (rotated by k)."""
    values = list(named.values())
    k = k % len(values)
    values = values[k:] + values[:k]
    return dict(zip(string.ascii_uppercase, values))


def reference_find_train_mode(sets: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> str:
    """The letter of the pair whose two DDIM (eta = 0) runs from the same x_T differ most: a deterministic
    sampler gives identical runs unless something random runs inside the model (dropout in train mode)."""
    return max(sets, key=lambda k: (sets[k][0].float() - sets[k][1].float()).abs().max().item())


def check_find_train_mode(student_fn: Callable[[dict], str], named_pairs: dict[str, tuple[torch.Tensor, torch.Tensor]],
                          train_mode_key: str = "train mode") -> CheckResult:
    """``student_fn(sets) -> letter``: ``sets`` maps letters to pairs of sample batches, each pair drawn twice
    from the same start noise with DDIM (eta = 0). Tried on every ordering of the pairs, so the letter must
    be found, not guessed."""
    name = "find_train_mode"
    if train_mode_key not in named_pairs:
        raise ValueError(f"named_pairs must hold a {train_mode_key!r} entry, got {list(named_pairs)}")
    hint = ("DDIM with eta = 0 is deterministic (lesson 04): the same x_T gives the same image, bit for bit. "
            "Which pair breaks that rule?")
    for k in range(len(named_pairs)):
        sets = shuffle_sets(named_pairs, k)
        truth = next(letter for letter, pair in sets.items() if pair is named_pairs[train_mode_key])
        try:
            got = student_fn(dict(sets))
        except NotImplementedError:
            return report(CheckResult(name, False, False,
                                      f"[ ] {name}: not attempted yet - fill in the function above and re-run."))
        except Exception as e:  # a student's bug: shown as a failed check, not a crash
            return report(CheckResult(name, True, False, f"[x] {name}: raised {type(e).__name__}: {e}\n"
                                                         f"    hint: {hint}"))
        if got != truth:
            return report(CheckResult(name, True, False,
                                      f"[x] {name}: not quite. With the sets in order "
                                      f"{'/'.join(sets)} (ordering {k + 1} of {len(named_pairs)}) you answered "
                                      f"{got!r}, which is not the train-mode set.\n    hint: {hint}"))
    return report(CheckResult(name, True, True, f"[ok] {name}: found the train-mode set in all "
                                                f"{len(named_pairs)} orderings."))
