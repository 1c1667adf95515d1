"""The course book: a lesson executes with nbclient into HTML, and the index links every lesson."""
from course_lib import book, paths
from course_lib.config import get_profile, get_runtime


def test_lesson_executes_to_html_and_index_links_it(tmp_path):
    nb = paths.root() / "lessons" / "00_from_static_to_digits.ipynb"
    html_path, seconds = book.execute_lesson(nb, tmp_path)
    page = html_path.read_text()
    assert "data:image/png;base64" in page and "<title>Lesson 00 — From static to digits</title>" in page
    assert (tmp_path / "lessons" / nb.name).is_file()
    entry = {"title": book._title(nb), "html": html_path.name, "seconds": seconds}
    index = book.render_index(tmp_path, [entry], get_profile("test"), get_runtime("cpu")).read_text()
    assert f'href="{html_path.name}"' in index and "Lesson 00" in index


def test_every_lesson_is_found_in_order():
    names = [p.name for p in book.lesson_paths()]
    assert names == sorted(names) and names[0].startswith("00_")


def test_run_course_writes_where_it_is_told(tmp_path, monkeypatch, capsys):
    """``out_dir`` (``course --out``) holds the whole book; the default build/ is left alone."""
    from course_lib.__main__ import main
    monkeypatch.setattr(book, "ensure_models", lambda *a, **k: {})     # lesson 00 needs no model
    default = tmp_path / "default-build"
    monkeypatch.setattr(paths, "build_dir", lambda: default)
    out = tmp_path / "book"
    assert main(["course", "--profile", "test", "--lessons", "00", "--out", str(out)]) == 0
    assert (out / "00_from_static_to_digits.html").is_file()
    assert (out / "lessons" / "00_from_static_to_digits.ipynb").is_file()
    index = (out / "index.html").read_text()
    assert 'href="00_from_static_to_digits.html"' in index and "01_forward_noising" not in index
    assert not default.exists()
    assert "unchanged" not in capsys.readouterr().out
    assert book.run_course(get_profile("test"), get_runtime("cpu"), lessons=["00"], out_dir=out) == 0
    assert "00_from_static_to_digits.ipynb: unchanged" in capsys.readouterr().out   # resumes from its manifest
