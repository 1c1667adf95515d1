"""pytest set-up for the whole suite, the unit tests (tests/) and the lessons nbval executes (lessons/).

A private COURSE_HOME, made before anything is collected, so neither the tests nor the notebook kernels
(which inherit this process's environment) ever read or write the user's checkpoints/: a user who trained
cpu-profile models can still run `make test`. Thread and profile settings live in tests/conftest.py.
"""
import os
import shutil
import tempfile

_made: list[str] = []


def pytest_configure(config):
    home = tempfile.mkdtemp(prefix="course_home_")
    _made.append(home)
    os.environ["COURSE_HOME"] = home
    os.environ.setdefault("COURSE_PROFILE", "test")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_unconfigure(config):
    for home in _made:
        shutil.rmtree(home, ignore_errors=True)
