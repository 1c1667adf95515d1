"""Shared test set-up: one CPU thread (on 2 shared cores two threads can make small ops 30x slower) and the
test profile. The private COURSE_HOME that keeps tests and lessons away from the user's checkpoints is made
by the root conftest.py, for the whole run."""
import os
import sys

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("COURSE_PROFILE", "test")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def cli(capsys):
    """``python -m course_lib ...`` in-process: (exit status, stdout, stderr)."""
    from course_lib.__main__ import main

    def run(*args):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
            if not isinstance(e.code, int) and e.code:
                print(e.code, file=sys.stderr)
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


@pytest.fixture
def test_profile():
    from course_lib.config import get_profile
    return get_profile("test")


@pytest.fixture
def digit_accuracy_z():
    """``measure(pipe) -> (accuracy, z)``: a text-to-image pipeline's digit accuracy at w = 6 on 200 images of
    the prompts "zero".."9" (the test profile's classifier), and its z against chance (1 in 10)."""
    import math

    from course_lib.config import get_profile, get_runtime
    from course_lib.registry import get_model
    from course_lib.training.text2image import prompt_accuracy

    def measure(pipe, n: int = 200):
        profile = get_profile("test")
        clf = get_model("classifier", profile, get_runtime("cpu"), progress=False)
        acc = prompt_accuracy(pipe, profile, guidance=6.0, n=n, classifier=clf)
        z = (acc - 0.1) / math.sqrt(0.1 * 0.9 / n)
        print(f"digit accuracy at w = 6: {acc:.1%} (z = {z:.1f} against chance)")
        return acc, z
    return measure
