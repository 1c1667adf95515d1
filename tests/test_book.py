"""The course book: a lesson executes with nbclient into HTML, and the index links every lesson."""
from course_lib import book, paths
from course_lib.config import get_profile, get_runtime


def test_lesson_executes_to_html_and_index_links_it(tmp_path):
    nb = paths.root() / "lessons" / "00_from_static_to_digits.ipynb"
    html_path, seconds = book.execute_lesson(nb, tmp_path)
    page = html_path.read_text()
    assert "data:image/png;base64" in page and "From static to digits" in page
    assert (tmp_path / "lessons" / nb.name).is_file()
    entry = {"title": book._title(nb), "html": html_path.name, "seconds": seconds}
    index = book.render_index(tmp_path, [entry], get_profile("test"), get_runtime("cpu")).read_text()
    assert f'href="{html_path.name}"' in index and "Lesson 00" in index


def test_every_lesson_is_found_in_order():
    names = [p.name for p in book.lesson_paths()]
    assert names == sorted(names) and names[0].startswith("00_")
