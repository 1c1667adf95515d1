"""The course book as a reader sees it: render it under the test profile, then open ``index.html`` and
every lesson page in headless Chromium (``tests/browser.py``) and check that each page loads, that the
index links every lesson, and that every figure is drawn. Every host name is unresolvable there, as on a
train: a small made-up lesson's page (``test_book_pages.small_book``, seconds) must typeset its formulas
and ask nothing of the network.

Rendering executes every lesson again (nbval executes them too, in the same ``make test``), after training
the test-profile models the lessons need into the session's COURSE_HOME, where nbval's runs of the lessons
find them later. Measured alone on 2 shared cores, one thread, ten lessons: about 4 minutes, nearly all of
it training the models (about 100 s) and executing the lessons (about 130 s); opening the eleven pages in
Chromium takes about 2 seconds.
"""
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
from browser import BrowserError, Chromium, find_chromium

CHROMIUM = find_chromium()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium): "
                             "the course book is not checked in a browser")

IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/svg+xml")
ONE_PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def _figures_in(executed_nb: Path) -> int:
    """How many figures (image outputs) an executed notebook holds."""
    import nbformat
    nb = nbformat.read(executed_nb, as_version=4)
    return sum(any(k in out.get("data", {}) for k in IMAGE_TYPES)
               for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def _drawn(image: dict) -> bool:
    return image["complete"] and image["naturalWidth"] > 0 and image["shownWidth"] > 0


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """The course book rendered under the test profile into a temporary folder, and the lessons it holds.

    Its models go to the test session's private COURSE_HOME (the root conftest.py), where the lessons nbval
    executes later find them: every model seeds its own initial weights and data order, so it is the same
    model whoever trains it first. torch's random state is restored afterwards all the same.
    """
    import torch

    from course_lib.config import get_profile, get_runtime
    from course_lib.course.book import run_course
    from course_lib.course.links import lesson_paths
    out = tmp_path_factory.mktemp("book")
    lessons = lesson_paths()
    with torch.random.fork_rng(devices=[]):
        assert run_course(get_profile("test"), get_runtime(), out_dir=out) == 0
    return out, lessons


@pytest.fixture(scope="module")
def pages(book):
    """Every page of the book as Chromium loaded it: ``{"index": state, "<lesson stem>": state, ...}``."""
    out, _ = book
    with Chromium(CHROMIUM) as browser:
        index = browser.open((out / "index.html").as_uri())
        opened = {"index": index}
        for link in _lesson_links(index):
            target = Path(unquote(urlparse(link["href"]).path))
            opened[target.stem] = browser.open(link["href"])     # raises BrowserError if it does not load
    return opened


def _lesson_links(index: dict) -> list[dict]:
    return [link for link in index["links"] if link["href"].startswith("file:") and link["href"].endswith(".html")]


def test_the_client_reports_broken_pages_and_images(tmp_path):
    """The checks below can fail: a missing page raises, and a missing image is reported as not drawn."""
    (tmp_path / "p.html").write_text(f'<title>t</title><h1>h</h1><img src="data:image/png;base64,{ONE_PIXEL}">'
                                     f'<img src="missing.png" width="20" height="20">')
    with Chromium(CHROMIUM) as browser:
        page = browser.open((tmp_path / "p.html").as_uri())
        with pytest.raises(BrowserError, match="ERR_FILE_NOT_FOUND"):
            browser.open((tmp_path / "nope.html").as_uri())
    assert page["readyState"] == "complete" and page["title"] == "t" and page["headings"] == ["h"]
    assert [_drawn(i) for i in page["images"]] == [True, False]


def _small_page(tmp_path):
    from test_book_pages import small_book
    lessons, out = small_book(tmp_path)
    return lessons, out


def test_a_book_page_typesets_its_math_offline(tmp_path):
    """A small lesson rendered by ``book.render_lesson_page``, opened with every host name unresolvable:
    its formulas are MathML that Chromium lays out as math (CSS display "math" / "block math"), the page
    asks for nothing outside the disk, the navigation and Colab links are there, and the solution is folded."""
    from course_lib.course.links import colab_url
    lessons, out = _small_page(tmp_path)
    with Chromium(CHROMIUM) as browser:
        page = browser.open((out / (lessons[1].stem + ".html")).as_uri())
    assert page["readyState"] == "complete" and not page["exceptions"], page["exceptions"]
    # CSS display "math" (inline) or "block math": Chromium's MathML layout; an unknown element would be "inline"
    displays = sorted(m["display"] for m in page["math"])
    assert displays == ["block math", "math", "math", "math"], f"math not typeset: {page['math']}"
    assert all(m["width"] > 0 for m in page["math"]), page["math"]
    remote = [u for u in page["requests"] if not u.startswith(("file:", "data:"))]
    assert not remote, f"the page asked the network for {remote}"
    assert "\\bar" not in page["text"] and "$$" not in page["text"], "raw TeX on the page"
    rels = {link["rel"]: Path(unquote(urlparse(link["href"]).path)).name for link in page["links"] if link["rel"]}
    assert rels == {"prev": lessons[0].stem + ".html", "index": "index.html", "next": lessons[2].stem + ".html"}
    assert any(link["href"] == colab_url(lessons[1]) and "Colab" in link["text"] for link in page["links"])
    assert page["details"] == [{"open": False, "summary": "Solution"}]
    assert "SOLUTION_MARKER" not in page["text"] and "COLAB_ONLY_MARKER" not in page["text"]


def test_the_plain_lab_page_shows_raw_tex_offline(tmp_path):
    """What the check above guards against: nbconvert's own ``lab`` page takes MathJax from a CDN, so offline
    its formulas stay TeX and no math is typeset."""
    import nbformat
    from nbconvert import HTMLExporter
    from test_book_pages import small_lesson
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(small_lesson("Lesson 00 — x"))
    (tmp_path / "plain.html").write_text(body, encoding="utf-8")
    with Chromium(CHROMIUM) as browser:
        page = browser.open((tmp_path / "plain.html").as_uri())
    assert page["math"] == [] and "\\bar\\alpha_t" in page["text"]
    assert [u for u in page["requests"] if u.startswith("https:")], "the plain page asks a CDN for MathJax"


def test_index_links_every_lesson(book, pages):
    from course_lib.course.links import lesson_title as _title
    out, lessons = book
    index = pages["index"]
    assert index["title"] and index["headings"] == ["From Noise to Digits"]
    links = _lesson_links(index)
    linked = [(Path(unquote(urlparse(link["href"]).path)).name, link["text"]) for link in links]
    for name, _ in linked:
        assert (out / name).is_file(), f"index.html links {name}, which is not in the book"
    expected = [(p.stem + ".html", _title(p)) for p in lessons]
    assert linked == expected, "the index must link every lesson once, in order, under its title"


def test_every_lesson_page_loads_with_its_title(book, pages):
    from course_lib.course.links import lesson_title as _title
    for nb_path in book[1]:
        page = pages[nb_path.stem]
        title = _title(nb_path)
        assert page["readyState"] == "complete", f"{nb_path.stem}.html did not finish loading"
        assert page["title"] == title, f"{nb_path.stem}.html: tab title {page['title']!r}, expected {title!r}"
        assert [h.rstrip("¶").strip() for h in page["headings"]][:1] == [title], \
            f"{nb_path.stem}.html: first heading {page['headings'][:1]}, expected {title!r}"
        assert not page["exceptions"], f"{nb_path.stem}.html threw while loading: {page['exceptions']}"


def test_every_figure_is_drawn(book, pages):
    """Every <img> on every page decoded to a picture and is shown, and each lesson page shows (at least)
    every figure its executed notebook holds: at least one, since every lesson draws under the test profile."""
    out, lessons = book
    for name, page in pages.items():
        broken = [i["src"] for i in page["images"] if not _drawn(i)]
        assert not broken, f"{name}: {len(broken)} of {len(page['images'])} images not drawn: {broken[:3]}"
    for nb_path in lessons:
        figures = _figures_in(out / "lessons" / nb_path.name)
        shown = len(pages[nb_path.stem]["images"])
        assert figures >= 1, f"{nb_path.name} drew no figure under the test profile"
        assert shown >= figures, f"{nb_path.stem}.html shows {shown} images; its notebook holds {figures} figures"
