"""Shared test set-up: one CPU thread (on 2 shared cores two threads can make small ops 30x slower) and the
test profile. The private COURSE_HOME that keeps tests and lessons away from the user's checkpoints is made
by the root conftest.py, for the whole run."""
import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("COURSE_PROFILE", "test")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def test_profile():
    from course_lib.config import get_profile
    return get_profile("test")
