"""Links to the course's repository, from one setting: ``Repository`` under ``[project.urls]`` in
``pyproject.toml``. Everything that names the repository is generated from it by
``python -m course_lib links`` (and checked by ``--check`` and ``tests/test_links.py``):

- the README's lesson table, between ``<!-- lessons:start -->`` and ``<!-- lessons:end -->``, gets an
  "Open in Colab" badge per lesson;
- each lesson's Colab set-up cell (its first code cell, tagged ``colab-setup``) is written whole from one
  template, ``SETUP_CELL``: the repository it clones (``COURSE_REPO``) and the packages it installs, which
  are the lines of ``requirements-colab.txt``, installed with ``--no-deps`` (what Colab lacks; nothing Colab
  pins is upgraded: ``tests/test_colab_setup.py`` resolves that install against Colab's published pins).

Lessons are found generically (``lessons/[0-9A-Z]*.ipynb``, as the course book finds them): a lesson
without a README row yet gets one, titled from its first markdown heading, with "—" where the README
holds hand-written text or measured times.
"""
from __future__ import annotations

import re
import string
from pathlib import Path

from .. import paths

__all__ = ["repository_url", "colab_url", "lesson_paths", "lesson_title", "lesson_table", "readme_lesson_rows",
           "colab_packages", "setup_cell_source", "SETUP_CELL", "SETUP_TAG", "sync"]

BRANCH = "main"                          # the branch Colab opens lessons from
START, END = "<!-- lessons:start -->", "<!-- lessons:end -->"
LINK_HEADER = "Colab"                    # the table's generated column
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
BADGE_REF = "colab"                      # the badge is a Markdown reference, defined once under the table
HEADER = ("#", "lesson", "what you build", "`cpu` profile, 2 cores*", "`test` profile (CI)")   # a new table's
REPO_LINE = re.compile(r'^COURSE_REPO = "[^"\n]*"$', re.MULTILINE)
COLAB_REQUIREMENTS = "requirements-colab.txt"   # what Colab lacks; installed with --no-deps (here and by make setup)
SETUP_TAG = "colab-setup"                # the set-up cell's tag (the course book leaves that cell out)
# The Colab set-up cell, the same in every lesson ($repo and $packages filled in by `setup_cell_source`).
# Colab already has torch and every other package the lessons import; `pip install --no-deps` of the few
# it lacks leaves its kernel stack (ipykernel, ipywidgets, jupyter_client), torch and all it pins as they are.
# The install runs on every start (a no-op once done), so a failed install is retried by running the cell again.
SETUP_CELL = string.Template("""\
#@title Set-up: does something only on Colab { display-mode: "form" }
# Written by `python -m course_lib links` from course_lib/course/links.py (SETUP_CELL); the same in every lesson.
import os, subprocess, sys
COURSE_REPO = "$repo"
KEEP_CHECKPOINTS_ON_DRIVE = False  #@param {type:"boolean"}
if "google.colab" in sys.modules:
    if not os.path.isdir("/content/course"):  # the course's code and shipped weights
        subprocess.run(["git", "clone", "-q", "--depth=1", COURSE_REPO, "/content/course"], check=True)
    # Colab has torch and every package the lessons import except these: install only them, without their
    # dependencies, so nothing Colab pins (its kernel, widgets, torch) is upgraded.
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", $packages], check=True)
    sys.path.insert(0, "/content/course")  # a path insertion: an editable install needs a runtime restart
    if KEEP_CHECKPOINTS_ON_DRIVE:
        from google.colab import drive
        drive.mount("/content/drive")
        os.environ["COURSE_HOME"] = "/content/drive/MyDrive/noise-to-digits/checkpoints"\
""")
REQUIREMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[\w,.-]+\])?\s*(===?|~=|>=|<=|!=|<|>)\s*[\w.*+!-]+$")
GITHUB = re.compile(r"^https://github\.com/(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+?)(?:\.git)?/?$")


def _root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else paths.root()


def repository_url(root: str | Path | None = None) -> str:
    """The course's GitHub repository, ``https://github.com/<owner>/<repo>``, read from ``pyproject.toml``
    (``[project.urls] Repository``).

    Raises:
        ValueError: the setting is missing or is not a GitHub repository address.
    """
    text = (_root(root) / "pyproject.toml").read_text(encoding="utf-8")
    try:
        import tomllib
        url = tomllib.loads(text).get("project", {}).get("urls", {}).get("Repository")
    except ModuleNotFoundError:          # Python 3.10: no tomllib; the setting is one line of its section
        section = re.search(r"^\[project\.urls\]\n(.*?)(?=^\[|\Z)", text, re.MULTILINE | re.DOTALL)
        found = section and re.search(r'^Repository\s*=\s*"([^"]*)"', section.group(1), re.MULTILINE)
        url = found.group(1) if found else None
    if not url:
        raise ValueError('pyproject.toml has no [project.urls] Repository = "https://github.com/<owner>/<repo>"')
    m = GITHUB.match(url.strip())
    if not m:
        raise ValueError(f"[project.urls] Repository = {url!r} is not https://github.com/<owner>/<repo>")
    return f"https://github.com/{m['owner']}/{m['repo']}"


def colab_url(lesson_path: str | Path, repository: str | None = None) -> str:
    """Where Colab opens a lesson straight from GitHub:
    ``https://colab.research.google.com/github/<owner>/<repo>/blob/main/lessons/<file>``."""
    repo = repository or repository_url()
    owner_repo = repo.removeprefix("https://github.com/")
    return f"https://colab.research.google.com/github/{owner_repo}/blob/{BRANCH}/lessons/{Path(lesson_path).name}"


def lesson_paths(root: str | Path | None = None) -> list[Path]:
    """Every lesson, in course order: ``lessons/[0-9A-Z]*.ipynb`` under ``root`` (default: the course); the
    course book (``book.py``) and the README's table both list them so."""
    return sorted(_root(root).joinpath("lessons").glob("[0-9A-Z]*.ipynb"))


def lesson_title(nb_path: Path) -> str:
    """A lesson's first markdown heading (e.g. "Lesson 04 — Sampling"), else its file name."""
    import nbformat
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return Path(nb_path).stem


def _heading(nb_path: Path) -> str:
    """A lesson's title: its first markdown heading, less a "Lesson 04 — " or "Appendix A1 — " prefix."""
    return re.sub(r"^(Lesson|Appendix)\s+\S+\s*[—:-]\s*", "", lesson_title(nb_path))


# -- the README's lesson table ---------------------------------------------------------------------------
def _cells(row: str) -> list[str]:
    """``| a | b |`` -> ``["a", "b"]`` (an escaped ``\\|`` stays inside its cell)."""
    return [c.strip() for c in re.split(r"(?<!\\)\|", row.strip().strip("|"))]


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def _existing_table(table: str) -> tuple[list[str], dict[str, list[str]]]:
    """The current table's header and rows, less the generated column; rows keyed by lesson file name."""
    lines = [line for line in table.splitlines() if line.strip().startswith("|")]
    if len(lines) < 2:
        return list(HEADER), {}
    header = _cells(lines[0])
    link_col = header.index(LINK_HEADER) if LINK_HEADER in header else None
    rows = {}
    for line in lines[2:]:
        cells = _cells(line)
        if link_col is not None:
            del cells[link_col]
        found = re.search(r"\(lessons/([^)\s]+\.ipynb)\)", " ".join(cells))
        if found:
            rows[found.group(1)] = cells
    return [c for c in header if c != LINK_HEADER], rows


def _table_span(readme: str) -> tuple[int, int]:
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no lesson table between {START} and {END}")
    return start + len(START), end


def readme_lesson_rows(root: str | Path | None = None) -> tuple[list[str], dict[str, list[str]]] | None:
    """The README's lesson table as (header cells, {lesson file name: row cells}); None where there is no
    README or no table (what the course book's index reads its lines from)."""
    readme_path = _root(root) / "README.md"
    if not readme_path.is_file():
        return None
    readme = readme_path.read_text(encoding="utf-8")
    try:
        a, b = _table_span(readme)
    except ValueError:
        return None
    return _existing_table(readme[a:b])


def lesson_table(root: str | Path | None = None, readme: str | None = None) -> str:
    """The README's lesson table, regenerated: the current rows' text and measured times kept as they are,
    a row for every lesson (new ones titled from their heading, "—" elsewhere), and a Colab badge each (the
    badge's image a reference, ``[colab]``, defined once under the table: a long URL less on every row)."""
    root = _root(root)
    if readme is None:
        readme = (root / "README.md").read_text(encoding="utf-8")
    a, b = _table_span(readme)
    header, rows = _existing_table(readme[a:b])
    repo = repository_url(root)
    lines = [_row((*header, LINK_HEADER)), "|" + "---|" * (len(header) + 1)]
    for nb_path in lesson_paths(root):
        number = nb_path.stem.split("_", 1)[0]
        title = _heading(nb_path).replace("|", "\\|")                # a "|" would end the cell
        cells = rows.get(nb_path.name) or [number, f"[{title}](lessons/{nb_path.name})",
                                           *["—"] * (len(header) - 2)]
        badge = f"[![Open in Colab][{BADGE_REF}]]({colab_url(nb_path, repo)})"
        lines.append(_row((*cells, badge)))
    return "\n".join(lines + ["", f"[{BADGE_REF}]: {BADGE}"])


# -- the notebooks ---------------------------------------------------------------------------------------
def colab_packages(root: str | Path | None = None) -> list[str]:
    """The requirements the Colab set-up cell installs (with ``--no-deps``): the lines of
    ``requirements-colab.txt``, less comments and blank lines; each must be ``name<op>version`` (no options,
    no URLs: the cell passes them to pip as they are).

    Raises:
        ValueError: the file is missing, empty, or has a line that is not a plain versioned requirement.
    """
    path = _root(root) / COLAB_REQUIREMENTS
    if not path.is_file():
        raise ValueError(f"{COLAB_REQUIREMENTS} is missing: it lists what the Colab set-up cell installs")
    found = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        if not REQUIREMENT.match(line):
            raise ValueError(f"{COLAB_REQUIREMENTS} line {number}: {line!r} is not `name==version` "
                             f"(the Colab cell passes each line to `pip install --no-deps` as it is)")
        found.append(line.replace(" ", ""))
    if not found:
        raise ValueError(f"{COLAB_REQUIREMENTS} lists no package")
    return found


def setup_cell_source(root: str | Path | None = None) -> str:
    """Every lesson's Colab set-up cell, from ``SETUP_CELL``: the repository (``[project.urls] Repository``)
    and the packages of ``requirements-colab.txt`` filled in."""
    packages = ", ".join(f'"{p}"' for p in colab_packages(root))
    return SETUP_CELL.substitute(repo=repository_url(root), packages=packages)


def _setup_cell(nb):
    """A lesson's set-up cell: the code cell tagged ``colab-setup``, else (a lesson written by hand) the
    first code cell with a ``COURSE_REPO = "..."`` line; None if neither."""
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    tagged = [cell for cell in code if SETUP_TAG in cell.get("metadata", {}).get("tags", [])]
    if tagged:
        return tagged[0]
    return next((cell for cell in code if REPO_LINE.search(cell.source)), None)


def _setup_metadata_ok(cell) -> bool:
    md = cell.get("metadata", {})
    return (md.get("cellView") == "form" and md.get("jupyter", {}).get("source_hidden") is True
            and SETUP_TAG in md.get("tags", []))


def sync(root: str | Path | None = None, check: bool = False) -> tuple[list[str], list[str]]:
    """Bring the README's lesson table and every lesson's Colab set-up cell in line with the setting and
    ``SETUP_CELL``.

    Args:
        root: the course folder (default: ``paths.root()``); tests pass a copy.
        check: only report; write nothing.

    Returns:
        ``(out_of_date, problems)``: files that differ(ed) from what is generated (rewritten unless
        ``check``), and what cannot be generated (a lesson with no set-up cell, or one that is not the
        lesson's first code cell).
    """
    import nbformat
    root = _root(root)
    repo = repository_url(root)
    out_of_date, problems = [], []
    readme_path = root / "README.md"
    readme = readme_path.read_text(encoding="utf-8")
    a, b = _table_span(readme)
    table = "\n" + lesson_table(root, readme) + "\n"
    if readme[a:b] != table:
        out_of_date.append("README.md (lesson table)")
        if not check:
            readme_path.write_text(readme[:a] + table + readme[b:], encoding="utf-8")
    wanted = setup_cell_source(root)
    for nb_path in lesson_paths(root):
        rel = nb_path.relative_to(root).as_posix()
        nb = nbformat.read(nb_path, as_version=4)
        cell = _setup_cell(nb)
        if cell is None:
            problems.append(f"{rel}: no Colab set-up cell (a code cell tagged {SETUP_TAG!r}, or one with a "
                            f'COURSE_REPO = "..." line) to write')
            continue
        if cell is not next(c for c in nb.cells if c.cell_type == "code"):
            problems.append(f"{rel}: the Colab set-up cell is not the lesson's first code cell")
            continue
        if cell.source != wanted or not _setup_metadata_ok(cell):
            out_of_date.append(f"{rel} (Colab set-up cell)")
            if not check:                 # only that cell changes; outputs stay as they are (stripped)
                cell.source = wanted
                md = cell.setdefault("metadata", {})
                md["cellView"] = "form"
                md.setdefault("jupyter", {})["source_hidden"] = True
                if SETUP_TAG not in md.setdefault("tags", []):
                    md["tags"].append(SETUP_TAG)
                nbformat.write(nb, nb_path)
    return out_of_date, problems
