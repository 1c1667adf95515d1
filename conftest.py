"""pytest set-up for the whole suite, the unit tests (tests/) and the lessons nbval executes (lessons/).

A private COURSE_HOME, made before anything is collected, so neither the tests nor the notebook kernels
(which inherit this process's environment) ever read or write the user's checkpoints/: a user who trained
cpu-profile models can still run `make test`. Thread and profile settings live in tests/conftest.py.

`make test` runs the suite in parallel processes (pytest-xdist, one torch thread each). The workers share
the COURSE_HOME the main process made (they inherit its environment), so a test-profile model is trained
once for all of them: ``models.train_missing`` holds a lock while it trains. The longest module, the browser
test (it renders the whole course book), is collected first, so a worker starts it at once rather than
leaving it for last while the other workers idle (`--no-loadscope-reorder` keeps this order).
"""
import os
import shutil
import tempfile

_made: list[str] = []


def pytest_configure(config):
    os.environ.setdefault("COURSE_PROFILE", "test")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get("COURSE_TEST_HOME"):
        os.environ["COURSE_HOME"] = os.environ["COURSE_TEST_HOME"]      # a worker: the main process's home
        return
    home = tempfile.mkdtemp(prefix="course_home_")
    _made.append(home)
    os.environ["COURSE_HOME"] = os.environ["COURSE_TEST_HOME"] = home


def pytest_unconfigure(config):
    for home in _made:
        shutil.rmtree(home, ignore_errors=True)
        if os.environ.get("COURSE_TEST_HOME") == home:
            del os.environ["COURSE_TEST_HOME"]


FIRST = ("tests/test_browser.py",)        # the longest-running modules, started first


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: not item.nodeid.startswith(FIRST))       # stable: the rest keep their order
