"""``make course`` when a lesson fails, hangs or is stopped (reliability review 2026-12, F3, F7, F9 and
"two more"), on tiny generated notebooks: one short line names the lesson and the cell, the partial output
is kept in ``build/failed/``, the other running lesson stops at once (one that finished is recorded), a
damaged manifest is set aside, SIGTERM and SIGHUP leave no worker or kernel running, and two lessons at a
time never each take all the threads."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from course_lib import paths
from course_lib.config import get_profile, get_runtime
from course_lib.course import book

TEST, CPU = get_profile("test"), get_runtime("cpu")


def _lesson(folder, name, *sources):
    nb = new_notebook(cells=[new_markdown_cell(f"# Lesson {name}")] + [new_code_cell(s) for s in sources])
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


@pytest.fixture
def course(tmp_path, monkeypatch):
    """A course of tiny lessons: ``add(name, *cell sources)``; models are not checked."""
    monkeypatch.setattr(book, "ensure_models", lambda *a, **k: {})
    monkeypatch.delenv("COURSE_CELL_TIMEOUT", raising=False)
    src = tmp_path / "lessons"
    src.mkdir()
    lessons = []
    monkeypatch.setattr(book, "lesson_paths", lambda: list(lessons))

    def add(name, *sources):
        lessons.append(_lesson(src, name, *sources))
        return lessons[-1]
    return add, tmp_path / "book"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                                    # a zombie has ended: only its entry is left
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def test_a_failing_lesson_is_one_line_naming_it_and_its_cell_and_stops_the_other_at_once(course, capfd):
    add, out = course
    add("01_quick", "print('quick')")
    add("02_raise", "print('before')", "import time; time.sleep(2)\nraise ValueError('boom in lesson 02')")
    add("03_slow", "import time\nfor i in range(60):\n    print(i, flush=True); time.sleep(1)")
    t = time.perf_counter()
    assert book.run_course(TEST, CPU, out_dir=out, jobs=2) == 1
    seconds = time.perf_counter() - t
    captured = capfd.readouterr()
    errors = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert errors == [f"error: lesson 02_raise.ipynb: cell 3 of 3 (`import time; time.sleep(2)`) raised ValueError: "
                      f"boom in lesson 02; its output up to there: {out / 'failed' / '02_raise.ipynb'}"]
    assert "Traceback" not in captured.out + captured.err and "\x1b[" not in captured.out + captured.err
    assert seconds < 40                                    # 03_slow (60 s) was stopped, not waited for
    partial = nbformat.read(out / "failed" / "02_raise.ipynb", as_version=4)
    assert partial.cells[1].outputs[0]["text"] == "before\n"
    assert partial.cells[2].outputs[-1]["output_type"] == "error"
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest) == ["01_quick.ipynb"]             # the finished lesson is recorded, not lost


def test_a_hung_cell_is_named_retried_once_then_one_line(course, capfd, monkeypatch):
    add, out = course
    add("01_hang", "x = 1", "import time\ntime.sleep(600)")
    monkeypatch.setenv("COURSE_CELL_TIMEOUT", "3")
    assert book.run_course(TEST, CPU, out_dir=out, jobs=1) == 1
    captured = capfd.readouterr()
    cell = "cell 3 of 3 (`import time`)"
    assert f"[lesson] 01_hang.ipynb: {cell} did not finish in 3 s; executing the lesson once more" in captured.out
    errors = [ln for ln in captured.err.splitlines() if ln.strip()]
    assert errors == [f"error: lesson 01_hang.ipynb: {cell} did not finish in 3 s, twice; if it really needs "
                      f"longer, set COURSE_CELL_TIMEOUT (seconds); its output up to there: "
                      f"{out / 'failed' / '01_hang.ipynb'}"]
    assert "ZMQError" not in captured.out + captured.err and "Traceback" not in captured.out + captured.err
    assert (out / "failed" / "01_hang.ipynb").is_file()


def test_a_long_cell_is_not_a_silent_one(course, capfd, monkeypatch):
    """Review section 8: `make course` printed nothing while a lesson ran; a student could not tell a long
    cell from a hang. Now a line names the running cell every HEARTBEAT_S seconds."""
    add, out = course
    add("01_long", "x = 1", "import time\ntime.sleep(5)")
    monkeypatch.setattr(book, "HEARTBEAT_S", 2)
    assert book.run_course(TEST, CPU, out_dir=out) == 0
    lines = [ln for ln in capfd.readouterr().out.splitlines() if "running for" in ln]
    assert lines and lines[0].startswith("[lesson] 01_long.ipynb: cell 3 of 3 (`import time`) running for 2 s")


def test_a_kernel_that_dies_is_one_line_naming_the_cell_and_its_log(course, capfd):
    add, out = course
    add("01_dies", "print(1)", "import os\nos._exit(1)")
    assert book.run_course(TEST, CPU, out_dir=out) == 1
    errors = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: lesson 01_dies.ipynb: the kernel died in cell 3 of 3 "
                                                     "(`import os`)")
    assert str(out / "logs" / "01_dies.kernel.log") in errors[0]


def test_the_default_cell_timeout_is_minutes_not_an_hour(monkeypatch):
    monkeypatch.delenv("COURSE_CELL_TIMEOUT", raising=False)
    assert book.cell_timeout(get_profile("cpu")) == 900 and book.cell_timeout(TEST) == 900
    assert book.cell_timeout(get_profile("gpu")) == 3_600      # lessons there may train inside a cell
    assert book.cell_timeout(get_profile("cpu"), last_seconds=285) == 900
    assert book.cell_timeout(get_profile("cpu"), last_seconds=600) == 1_800   # 3 x a slow machine's last run
    monkeypatch.setenv("COURSE_CELL_TIMEOUT", "42")
    assert book.cell_timeout(get_profile("cpu"), last_seconds=600) == 42


def test_a_damaged_manifest_is_set_aside_with_one_line_and_the_course_goes_on(course, capsys):
    add, out = course
    add("01_ok", "print('ok')")
    out.mkdir(parents=True)
    (out / "manifest.json").write_text('{"01_ok.ipynb": {"key": "82')      # what a kill mid-write left
    assert book.run_course(TEST, CPU, out_dir=out) == 0
    printed = capsys.readouterr().out
    assert "manifest.json was damaged" in printed and "set aside as manifest.json.damaged" in printed
    assert (out / "manifest.json.damaged").read_text() == '{"01_ok.ipynb": {"key": "82'
    assert "01_ok.ipynb" in json.loads((out / "manifest.json").read_text())
    assert not list(out.glob("*.tmp"))


def test_the_manifest_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    book._write_manifest(path, {"a": 1})

    def dies(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(book.os, "replace", dies)            # the write fails before the swap
    with pytest.raises(OSError):
        book._write_manifest(path, {"a": 2, "b": 3})
    assert json.loads(path.read_text()) == {"a": 1}


def test_two_lessons_never_each_take_all_the_threads(course, monkeypatch):
    add, out = course
    monkeypatch.setattr(book.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")              # already set to the core count
    assert book.course_jobs(CPU, 2) == (2, 1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert book.course_jobs(CPU, 2) == (2, None)            # fits: kept as it is
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert book.course_jobs(CPU, 1) == (1, 2)               # never more than the cores
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    show = "import os; print(os.environ['OMP_NUM_THREADS'])"
    first, second = add("01_a", show), add("02_b", show)
    assert book.run_course(TEST, CPU, out_dir=out, jobs=2) == 0
    for p in (first, second):
        assert nbformat.read(out / "lessons" / p.name, as_version=4).cells[1].outputs[0]["text"] == "1\n"


RUNNER = """
import sys
from pathlib import Path
from course_lib.course import book
from course_lib.config import get_profile, get_runtime
if __name__ == "__main__":
    lessons = sorted(Path(sys.argv[1]).glob("*.ipynb"))
    book.ensure_models = lambda *a, **k: {}
    book.lesson_paths = lambda: lessons
    try:
        book.run_course(get_profile("test"), get_runtime("cpu"), out_dir=sys.argv[2], jobs=2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(130)
"""


@pytest.mark.parametrize("how", ["SIGTERM to the course", "SIGHUP to its process group",
                                 "SIGINT to its process group", "SIGKILL to the course"])
def test_a_stopped_course_leaves_no_worker_or_kernel_running(tmp_path, how):
    src = tmp_path / "lessons"
    src.mkdir()
    pids = tmp_path / "pids"
    pids.mkdir()
    record = (f"import os, pathlib, time\npathlib.Path({str(pids)!r}, str(os.getpid())).write_text(str(os.getppid()))\n"
              f"time.sleep(120)")
    _lesson(src, "01_long", record)
    _lesson(src, "02_long", record)
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    env = {**os.environ, "PYTHONPATH": str(paths.root()), "OMP_NUM_THREADS": "1"}
    env.pop("COURSE_CELL_TIMEOUT", None)
    proc = subprocess.Popen([sys.executable, str(script), str(src), str(tmp_path / "book")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while len(list(pids.iterdir())) < 2:                 # both kernels are running their cell
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.2)
        kernels = [int(p.name) for p in pids.iterdir()]
        workers = [int(p.read_text()) for p in pids.iterdir()]
        assert all(_alive(pid) for pid in kernels + workers)
        if how.startswith("SIGTERM"):
            proc.send_signal(signal.SIGTERM)
        elif how.startswith("SIGKILL"):
            proc.kill()                                      # no handler runs: the workers notice
        elif how.startswith("SIGHUP"):
            os.killpg(proc.pid, signal.SIGHUP)               # what a closed terminal does
        else:
            os.killpg(proc.pid, signal.SIGINT)               # Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    if how.startswith("SIGKILL"):
        assert proc.returncode == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while [pid for pid in kernels + workers if _alive(pid)] and time.monotonic() < deadline:
            time.sleep(0.2)
    else:
        assert proc.returncode == 130 and "interrupted" in out, (out, err)
        time.sleep(0.5)
    assert not [pid for pid in kernels + workers if _alive(pid)]
    assert "Traceback" not in err
