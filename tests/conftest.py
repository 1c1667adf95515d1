"""Shared test set-up: one CPU thread (on 2 shared cores two threads can make small ops 30x slower), the
test profile, and a private COURSE_HOME so tests never touch the user's checkpoints."""
import os

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("COURSE_PROFILE", "test")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="session")
def _private_course_home(tmp_path_factory):
    old = os.environ.get("COURSE_HOME")
    os.environ["COURSE_HOME"] = str(tmp_path_factory.mktemp("course_home"))
    yield
    if old is None:
        os.environ.pop("COURSE_HOME", None)
    else:
        os.environ["COURSE_HOME"] = old


@pytest.fixture
def test_profile():
    from course_lib.config import get_profile
    return get_profile("test")
