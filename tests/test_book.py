"""The course book: a lesson executes with nbclient into HTML, and the index links every lesson, with the
README's line on what you build in it and a picture from its own executed output."""
import base64
import io
import re

import nbformat
import numpy as np
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from PIL import Image

from course_lib import paths
from course_lib.config import get_profile, get_runtime
from course_lib.course import book


def _png(color, size=(8, 8)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _image_cell(*pngs: bytes, tags=()) -> dict:
    outputs = [new_output("display_data", data={"image/png": base64.b64encode(b).decode(), "text/plain": "<Figure>"})
               for b in pngs]
    return new_code_cell("plot()", outputs=outputs, metadata={"tags": list(tags)} if tags else {})


def _index_items(index: str) -> list[str]:
    return re.findall(r"<li>(.*?)</li>", index, re.DOTALL)


def _thumb(item: str) -> bytes | None:
    found = re.search(r'<img[^>]* src="data:image/png;base64,([^"]+)"', item)
    return base64.b64decode(found.group(1)) if found else None


def _pixels(png: bytes, size=None) -> np.ndarray:
    im = Image.open(io.BytesIO(png)).convert("RGB")
    return np.asarray(im.resize(size, Image.LANCZOS) if size else im, dtype=float)


def _notebook_images(nb_path) -> list[bytes]:
    nb = nbformat.read(nb_path, as_version=4)
    return [base64.b64decode(out["data"]["image/png"]) for cell in nb.cells if cell.cell_type == "code"
            for out in cell.outputs if "image/png" in out.get("data", {})]


def test_lesson_executes_to_html_and_index_links_it(tmp_path):
    nb = paths.root() / "lessons" / "00_from_static_to_digits.ipynb"
    html_path, seconds = book.execute_lesson(nb, tmp_path)
    page = html_path.read_text()
    assert "data:image/png;base64" in page and "<title>Lesson 00 — From static to digits</title>" in page
    assert (tmp_path / "lessons" / nb.name).is_file()
    entry = {"title": book.lesson_title(nb), "html": html_path.name, "seconds": seconds}
    index = book.render_index(tmp_path, [entry], get_profile("test"), get_runtime("cpu")).read_text()
    assert f'href="{html_path.name}"' in index and "Lesson 00" in index
    # the line: this lesson's "what you build" cell of the README's lesson table
    table = [line for line in (paths.root() / "README.md").read_text().splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    row = next([c.strip() for c in line.strip("|").split("|")] for line in table if f"(lessons/{nb.name})" in line)
    summary = book.lesson_summary(nb.name)
    assert summary and summary == row[header.index("what you build")] and summary in index
    # the picture: the lesson's last figure, shrunk, and not its first one
    (item,) = _index_items(index)
    thumb = _thumb(item)
    figures = _notebook_images(tmp_path / "lessons" / nb.name)
    assert thumb is not None and len(figures) >= 2 and len(thumb) < 40_000
    shown = _pixels(thumb)
    size = shown.shape[1], shown.shape[0]
    last, first = (np.abs(shown - _pixels(f, size)).mean() for f in (figures[-1], figures[0]))
    assert last < 10 < first, f"thumbnail differs from the last figure by {last:.1f}, from the first by {first:.1f}"


def test_index_shows_each_lessons_line_and_picture(tmp_path):
    """Synthetic executed lessons: the last image is shown unless a cell is tagged ``book-thumbnail``, a
    broken image output is skipped, a big one is shrunk, and a lesson without images shows no picture."""
    red, blue, green = _png("red"), _png("blue"), _png((0, 200, 0), size=(900, 300))
    lessons = {
        "A1_last.ipynb": [_image_cell(red), _image_cell(blue),
                          new_code_cell("oops()", outputs=[new_output("display_data", data={"image/png": "bm90IGEgcG5n"})])],
        "A2_tagged.ipynb": [_image_cell(red), _image_cell(green, tags=["book-thumbnail"]), _image_cell(blue)],
        "A3_no_images.ipynb": [new_code_cell("print(1)", outputs=[new_output("stream", name="stdout", text="1\n")])],
    }
    (tmp_path / "lessons").mkdir()
    for name, cells in lessons.items():
        nbformat.write(new_notebook(cells=[new_markdown_cell(f"# {name}"), *cells]), tmp_path / "lessons" / name)
    (tmp_path / "README.md").write_text(
        "# Course\n<!-- lessons:start -->\n| # | lesson | what you build | `cpu` profile | Colab |\n|---|---|---|---|---|\n"
        "| A1 | [Last](lessons/A1_last.ipynb) | the `last` one \\| kept | 9 min | badge |\n"
        "| A3 | [None](lessons/A3_no_images.ipynb) | a lesson <without> [pictures](lessons/x.md) | 2 s | badge |\n"
        "<!-- lessons:end -->\n")
    entries = [{"title": name, "html": name.replace(".ipynb", ".html"), "seconds": 1.0} for name in lessons]
    index = book.render_index(tmp_path, entries, get_profile("test"), get_runtime("cpu"), root=tmp_path).read_text()
    last, tagged, none = _index_items(index)

    assert _thumb(last) == blue                                          # the last image that decodes, as it is
    assert "the <code>last</code> one | kept" in last and "9 min" not in last   # the README's cell, not its times
    shrunk = _pixels(_thumb(tagged))
    assert shrunk.shape[1] <= book.THUMB_PX[0] and shrunk.shape[0] <= book.THUMB_PX[1] < 300
    assert np.abs(shrunk - (0, 200, 0)).max() < 10                       # the tagged cell's image, shrunk
    assert 'class="what"' not in tagged                                  # no README row: no line
    assert "<img" not in none and 'href="A3_no_images.html"' in none     # no images: no picture, still linked
    assert "a lesson &lt;without&gt; pictures" in none
    assert book.thumbnail(tmp_path / "lessons" / "missing.ipynb") is None


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
    thumb = _thumb(_index_items(index)[0])
    assert thumb is not None
    assert book.run_course(get_profile("test"), get_runtime("cpu"), lessons=["00"], out_dir=out) == 0
    assert "00_from_static_to_digits.ipynb: unchanged" in capsys.readouterr().out   # resumes from its manifest
    resumed = _index_items((out / "index.html").read_text())
    assert _thumb(resumed[0]) == thumb          # the kept lesson's picture, read from its executed notebook


def test_course_runs_two_lessons_at_a_time_on_two_cpu_cores_and_one_on_a_gpu(monkeypatch):
    import dataclasses

    import pytest
    import torch
    monkeypatch.delenv("COURSE_JOBS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(book.os, "cpu_count", lambda: 2)
    cpu = get_runtime("cpu")
    assert book.course_jobs(cpu) == (2, 1)
    assert book.course_jobs(dataclasses.replace(cpu, device=torch.device("cuda"))) == (1, None)
    monkeypatch.setattr(book.os, "cpu_count", lambda: 8)
    assert book.course_jobs(cpu) == (2, 4)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")                # the user's thread setting is kept
    assert book.course_jobs(cpu) == (2, None)
    monkeypatch.setenv("COURSE_JOBS", "1")
    assert book.course_jobs(cpu) == (1, None)
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("COURSE_JOBS", bad)
        with pytest.raises(ValueError, match="COURSE_JOBS must be a whole number"):
            book.course_jobs(cpu)


def _tiny_lesson(folder, name, source):
    nb = new_notebook(cells=[new_markdown_cell(f"# Lesson {name}"), new_code_cell(source)])
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def test_lessons_run_side_by_side_each_kernel_with_its_share_of_threads(tmp_path, monkeypatch, capfd):
    """Two lessons at a time, each kernel told its torch threads; a lesson that fails stops the course."""
    monkeypatch.setattr(book, "ensure_models", lambda *a, **k: {})
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(book.os, "cpu_count", lambda: 2)
    src = tmp_path / "lessons"
    src.mkdir()
    show = "import os; print('threads', os.environ.get('OMP_NUM_THREADS'))"
    lessons = [_tiny_lesson(src, f"0{i}_tiny", show) for i in range(2)]
    monkeypatch.setattr(book, "lesson_paths", lambda: lessons)
    out = tmp_path / "book"
    assert book.run_course(get_profile("test"), get_runtime("cpu"), out_dir=out) == 0
    assert "2 lesson(s), 2 at a time, 1 torch thread(s) each" in capfd.readouterr().out
    for p in lessons:
        executed = nbformat.read(out / "lessons" / p.name, as_version=4)
        assert executed.cells[1].outputs[0]["text"] == "threads 1\n"
        assert (out / f"{p.stem}.html").is_file()
    lessons.append(_tiny_lesson(src, "02_broken", "raise RuntimeError('broken lesson')"))
    assert book.run_course(get_profile("test"), get_runtime("cpu"), out_dir=out) == 1
    captured = capfd.readouterr()
    assert "unchanged" in captured.out                                 # the two good ones were kept
    assert "error: lesson 02_broken.ipynb: cell 2 of 2" in captured.err and "broken lesson" in captured.err


def test_a_cell_past_the_timeout_is_retried_once_then_stops_its_lesson(tmp_path, monkeypatch, capfd):
    """A cell that gets no reply in COURSE_CELL_TIMEOUT seconds: the lesson runs once more, and fails clearly
    if it times out again (nothing waits for ever)."""
    import pytest
    monkeypatch.setattr(book, "ensure_models", lambda *a, **k: {})
    src = tmp_path / "lessons"
    src.mkdir()
    marker = tmp_path / "first-run-done"
    slow_once = (f"import os, time, pathlib\nm = pathlib.Path({str(marker)!r})\n"
                 f"if not m.exists():\n    m.touch(); time.sleep(30)\nprint('done')")
    lessons = [_tiny_lesson(src, "00_slow_once", slow_once)]
    monkeypatch.setattr(book, "lesson_paths", lambda: lessons)
    monkeypatch.setenv("COURSE_CELL_TIMEOUT", "3")
    out = tmp_path / "book"
    assert book.run_course(get_profile("test"), get_runtime("cpu"), out_dir=out, jobs=1) == 0
    assert "did not finish in 3 s; executing the lesson once more" in capfd.readouterr().out
    assert nbformat.read(out / "lessons" / lessons[0].name, as_version=4).cells[1].outputs[0]["text"] == "done\n"
    lessons.append(_tiny_lesson(src, "01_always_slow", "import time; time.sleep(30)"))
    assert book.run_course(get_profile("test"), get_runtime("cpu"), out_dir=out, jobs=1) == 1
    assert "twice; if it really needs longer, set COURSE_CELL_TIMEOUT" in capfd.readouterr().err
    for bad in ("0", "soon", "-5"):
        monkeypatch.setenv("COURSE_CELL_TIMEOUT", bad)
        with pytest.raises(ValueError, match="COURSE_CELL_TIMEOUT"):
            book.run_course(get_profile("test"), get_runtime("cpu"), out_dir=out, jobs=1)
