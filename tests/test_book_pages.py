"""The course book's lesson pages (``book.render_lesson_page``), on small made-up lessons (no execution):
formulas as MathML, nothing from a CDN, previous / next / index links and an "Open in Colab" link, no Colab
set-up cell, solutions folded. ``tests/test_browser.py`` opens the same pages in Chromium offline."""
import functools
import re
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from course_lib.course import book
from course_lib.course.links import colab_url

SETUP = ('#@title Set-up: does something only on Colab { display-mode: "form" }\n'
         'import os, subprocess, sys\nCOLAB_ONLY_MARKER = 1')
SOLUTION = ('#@title Solution (click to expand) { display-mode: "form" }\n'
            'def my_answer():\n    return 42\nSOLUTION_MARKER = my_answer()')
FORMULA = r"q(x_t \mid x_0) = \mathcal N\big(\sqrt{\bar\alpha_t}\, x_0,\ (1 - \bar\alpha_t) I\big)"


@functools.lru_cache(maxsize=1)
def player_html() -> str:
    """matplotlib's animation player for two tiny frames (what ``plotting.animate`` shows in a lesson)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation
    fig, ax = plt.subplots(figsize=(1, 1), dpi=20)
    img = ax.imshow([[0.0, 1.0]])
    html = FuncAnimation(fig, lambda i: img.set_data([[i, 1.0 - i]]), frames=2).to_jshtml()
    plt.close(fig)
    return html


def small_lesson(title: str, setup_tagged: bool = True) -> nbformat.NotebookNode:
    """A lesson as the course writes them: heading, Colab set-up cell, an inline and a display formula,
    code with output, an animation, an exercise's solution cell."""
    setup_meta = {"cellView": "form", "jupyter": {"source_hidden": True}}
    if setup_tagged:
        setup_meta["tags"] = ["colab-setup"]
    return new_notebook(cells=[
        new_markdown_cell(f"# {title}\n\nThe noise level $\\bar\\alpha_t$ falls with $t$:\n\n$${FORMULA}$$"),
        new_code_cell(SETUP, metadata=setup_meta),
        new_code_cell("print(1 + 1)", outputs=[new_output("stream", name="stdout", text="2\n")]),
        new_code_cell("animate(frames)", outputs=[new_output("display_data", data={"text/html": player_html(),
                                                                                 "text/plain": "<HTML>"})]),
        new_markdown_cell("## Exercise: the answer to $x_t$\n\nWrite `my_answer`; a price of \\$5 is not a formula."),
        new_code_cell(SOLUTION, metadata={"cellView": "form", "jupyter": {"source_hidden": True},
                                          "tags": ["solution"]},
                      outputs=[new_output("stream", name="stdout", text="[ok] my_answer: correct\n")]),
    ])


def small_book(folder: Path, n: int = 3) -> tuple[list[Path], Path]:
    """``n`` small lessons written to ``folder/lessons`` and rendered into ``folder/book``: (lessons, book)."""
    (folder / "lessons").mkdir(parents=True)
    out = folder / "book"
    out.mkdir()
    lessons = []
    for i in range(n):
        path = folder / "lessons" / f"{i:02d}_small.ipynb"
        nbformat.write(small_lesson(f"Lesson {i:02d} — Small {i}", setup_tagged=i != 1), path)
        lessons.append(path)
    for path in lessons:
        book.render_lesson_page(nbformat.read(path, as_version=4), path, out, lessons=lessons)
    return lessons, out


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    lessons, out = small_book(tmp_path_factory.mktemp("pages"))
    return lessons, {p.stem: (out / (p.stem + ".html")).read_text(encoding="utf-8") for p in lessons}


def test_formulas_are_mathml_and_nothing_comes_from_a_cdn(pages):
    _, html = pages
    page = html["00_small"]
    maths = re.findall(r"<math\b[^>]*>", page)
    assert len(maths) == 4 and sum('display="block"' in m for m in maths) == 1, maths
    assert "ns0:" not in page, "a formula in a heading lost its MathML element name"
    assert "$" not in re.sub(r"\\\$5|\$5", "", page.split("<main>", 1)[1]), "raw TeX left on the page"
    assert "\\bar" not in page and "\U0001D4A9" in page          # \mathcal N drawn as the script letter
    assert "anim-buttons" in page and "fa-play" in page                    # the player is on the page
    remote = re.findall(r'<(?:script|link|img)\b[^>]*(?:src|href)=\s*"(https?:[^"]*)"', page)
    assert not remote, f"the page loads {remote}"


def test_pages_link_previous_next_index_and_colab(pages):
    lessons, html = pages
    for i, path in enumerate(lessons):
        nav = re.findall(r"<nav\b.*?</nav>", html[path.stem], re.DOTALL)
        assert len(nav) == 2, "a navigation bar at the top and at the bottom"
        for bar in nav:
            rels = dict((m[1], m[0]) for m in re.findall(r'<a [^>]*href="([^"]+)"[^>]*rel="(\w+)"|'
                                                          r'<a [^>]*rel="(\w+)"[^>]*href="([^"]+)"', bar)
                        for m in [(m[0] or m[3], m[1] or m[2])])
            assert rels.get("index") == "index.html"
            assert rels.get("prev") == (lessons[i - 1].stem + ".html" if i > 0 else None)
            assert rels.get("next") == (lessons[i + 1].stem + ".html" if i + 1 < len(lessons) else None)
            assert f'href="{colab_url(path)}"' in bar and "Colab" in bar


def test_the_setup_cell_is_left_out_and_solutions_are_folded(pages):
    _, html = pages
    for stem, page in html.items():            # lesson 01's set-up cell is found by its title alone
        assert "COLAB_ONLY_MARKER" not in page, f"{stem}: the Colab set-up cell is on the page"
        assert "#@title" not in page
        folds = re.findall(r"<details class=\"solution\"><summary>(.*?)</summary>(.*?)</details>", page, re.DOTALL)
        assert len(folds) == 1 and folds[0][0] == "Solution"
        assert "SOLUTION_MARKER" in folds[0][1] and "[ok] my_answer: correct" in folds[0][1]
        assert "print" in page and "SOLUTION_MARKER" not in page.replace(folds[0][1], "")


def test_book_cells_leaves_the_notebook_alone():
    nb = small_lesson("Lesson 00 — x")
    shown = book.book_cells(nb)
    assert len(nb.cells) == 6 and len(shown.cells) == 5 and nb.cells[5].source == SOLUTION
    assert "font-awesome" in nb.cells[3].outputs[0].data["text/html"]
    assert "font-awesome" not in shown.cells[2].outputs[0].data["text/html"]
    assert shown.cells[4].source.startswith("def my_answer") and shown.cells[4].metadata["book_summary"] == "Solution"


def test_a_formula_that_does_not_convert_stays_readable_tex():
    assert book.tex_to_mathml(r"\frac{1}{") == r"$\frac{1}{$"
    assert book.tex_to_mathml("x^", display=True) == "$$x^$$"
    assert book.tex_to_mathml(r"\begin{aligned} a &= b \end{aligned}") == r"$\begin{aligned} a &amp;= b \end{aligned}$"
    assert book.tex_to_mathml("<b>", display=True).count("<b>") == 0          # escaped either way
    assert book.tex_to_mathml(r"\mathbb R").count("\u211d") == 1           # double-struck R: Letterlike Symbols
    assert 'display="block"' in book.tex_to_mathml("x", display=True)


def test_the_index_opens_each_lesson_in_colab(tmp_path):
    from course_lib.config import get_profile, get_runtime
    entries = [{"title": f"Lesson {i:02d}", "html": f"{i:02d}_small.html", "seconds": 3.0} for i in range(2)]
    index = book.render_index(tmp_path, entries, get_profile("test"), get_runtime("cpu"), root=tmp_path)
    items = re.findall(r"<li>(.*?)</li>", index.read_text(encoding="utf-8"), re.DOTALL)
    assert len(items) == 2
    for i, item in enumerate(items):
        assert f'href="{colab_url(f"{i:02d}_small.ipynb")}"' in item and "Open in Colab" in item


def test_only_a_page_with_widgets_asks_for_the_widget_manager(tmp_path):
    """Progress bars and lesson 08's prompt box are widgets: their page keeps require.js and the widget
    manager (online they draw; offline they are left out), every other page asks nothing of a CDN."""
    nb = small_lesson("Lesson 00 — x")
    path = tmp_path / "00_x.ipynb"
    nbformat.write(nb, path)
    plain = book.render_lesson_page(nb, path, tmp_path, lessons=[path]).read_text(encoding="utf-8")
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {
        "state": {}, "version_major": 2, "version_minor": 0}}
    widgets = book.render_lesson_page(nb, path, tmp_path, lessons=[path]).read_text(encoding="utf-8")
    assert "require" not in plain and "html-manager" not in plain
    assert "require.js" in widgets or "require.min.js" in widgets
    assert "html-manager" in widgets
