"""Automatic checks for the lessons' exercises (after Kaggle's learntools).

The pattern, in every lesson:

1. a stub the student fills in, which starts as ``raise NotImplementedError``;
2. ``check_<name>(student_fn)``: runs small cases against the ``course_lib`` reference.
   - an untouched stub prints "not attempted yet" and does not raise, so the notebook runs top to bottom;
   - a wrong answer prints the failing input, expected vs got (shape, dtype, max error) and one hint,
     never the solution;
   - a right answer prints a short success line;
3. a collapsed solution cell that defines the reference answer and runs the same check, so nbval executes
   every check with a correct answer.

Each check returns a ``CheckResult`` (truthy only when correct), which is what the unit tests look at.
The checks themselves live in one module per lesson: ``course_lib.exercises.lesson00`` and so on, and
``course_lib.exercises.lessonA1`` for appendix A1 (debugging diffusion).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

__all__ = ["CheckResult", "Case", "check_function", "report", "compare"]


@dataclass
class CheckResult:
    name: str
    attempted: bool
    passed: bool
    message: str

    def __bool__(self) -> bool:
        return self.passed


@dataclass
class Case:
    """One input to try: ``describe`` says in words what it is (shown when the answer is wrong)."""
    describe: str
    args: tuple
    kwargs: dict | None = None


def report(result: CheckResult) -> CheckResult:
    print(result.message)
    return result


def _fmt(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        if v.numel() <= 6:
            return f"tensor {v.detach().cpu().tolist()} (shape {tuple(v.shape)}, dtype {v.dtype})"
        return f"tensor of shape {tuple(v.shape)}, dtype {v.dtype}"
    return repr(v)


def compare(expected: Any, got: Any, atol: float, rtol: float) -> str | None:
    """None if ``got`` matches ``expected``; otherwise what differs (type, shape, dtype, max error)."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a sequence of {len(expected)} values, got {_fmt(got)}"
        for i, (e, g) in enumerate(zip(expected, got)):
            diff = compare(e, g, atol, rtol)
            if diff:
                return f"item {i}: {diff}"
        return None
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"expected a torch.Tensor, got {type(got).__name__}"
        if got.shape != expected.shape:
            return f"shape: expected {tuple(expected.shape)}, got {tuple(got.shape)}"
        if got.dtype.is_floating_point != expected.dtype.is_floating_point:
            return f"dtype: expected {expected.dtype}, got {got.dtype}"
        if not torch.isfinite(got.float()).all():
            return "the result contains NaN or inf"
        err = (got.detach().float().cpu() - expected.detach().float().cpu()).abs()
        tol = atol + rtol * expected.detach().float().cpu().abs()
        if (err > tol).any():
            return f"values: max error {err.max().item():.3g} (tolerance {atol:g} + {rtol:g}*|expected|)"
        return None
    if isinstance(expected, (int, float)):
        try:
            g = float(got)
        except (TypeError, ValueError):
            return f"expected a number, got {type(got).__name__}"
        if abs(g - expected) > atol + rtol * abs(expected):
            return f"value: expected {expected:.6g}, got {g:.6g}"
        return None
    return None if got == expected else f"expected {expected!r}, got {got!r}"


def check_function(name: str, student_fn: Callable, reference: Callable, cases: Sequence[Case], hint: str,
                   atol: float = 1e-5, rtol: float = 1e-4, quiet: bool = False) -> CheckResult:
    """Run ``student_fn`` and ``reference`` on each case; report the first difference with one hint."""
    out = report if not quiet else (lambda r: r)
    for case in cases:
        kwargs = case.kwargs or {}
        try:
            got = student_fn(*case.args, **kwargs)
        except NotImplementedError:
            return out(CheckResult(name, False, False,
                                   f"[ ] {name}: not attempted yet - fill in the function above and re-run."))
        except Exception as e:  # a student's bug: show it as a failed check, not a crash
            return out(CheckResult(name, True, False,
                                   f"[x] {name}: raised {type(e).__name__}: {e}\n    input: {case.describe}\n"
                                   f"    hint: {hint}"))
        expected = reference(*case.args, **kwargs)
        diff = compare(expected, got, atol, rtol)
        if diff:
            return out(CheckResult(name, True, False,
                                   f"[x] {name}: not quite.\n    input: {case.describe}\n    {diff}\n"
                                   f"    hint: {hint}"))
    return out(CheckResult(name, True, True, f"[ok] {name}: correct on all {len(cases)} cases."))
