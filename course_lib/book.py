"""``make course``: make sure every model a lesson needs exists, execute every lesson in order with nbclient
into ``build/``, and render a static HTML course book (``build/index.html``) a person can open in a browser.

Re-running resumes instead of starting over: a lesson is executed again only when its notebook, the
library or the profile changed since its last successful run (recorded in ``build/manifest.json``), and
model training resumes from its last checkpoint.

The index is the first page an instructor opens. Each lesson gets its title (linking to its page), the time
it took, one line on what you build in it, and a small picture from its own executed output:

- **The line** is the lesson's "what you build" cell in the README's lesson table, read with the parser that
  ``links.py`` maintains that table with (``python -m course_lib links``). That table is already the one
  place this sentence is written and reviewed, and ``links`` gives every new lesson a row, so nothing here
  repeats it by hand. (The lessons' first paragraphs are stories that open the lesson, not summaries, and
  a notebook metadata field would be a second copy to keep in step.) A lesson with no row, or "—" there,
  shows no line.
- **The picture** is the first image output of a code cell tagged ``book-thumbnail``, if a lesson has one,
  else the lesson's *last* image output (lessons build up to their result; their first figure is often the
  same grid of training digits). It is read from the executed notebook in ``build/lessons/``, so lessons
  that were kept unchanged on a resumed run still show theirs. PNG, JPEG and GIF outputs qualify (an SVG
  cannot be shrunk without a renderer); a lesson without one shows no picture. The picture is embedded in
  ``index.html`` as a data URI, shrunk to fit ``THUMB_PX`` with a ``THUMB_COLORS`` palette (as it is, if it
  already fits), so the index stays one small file (about 10 kB a lesson; TV static, which does not
  compress, about 20 kB).
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import time
from pathlib import Path

from . import paths
from .links import lesson_paths, lesson_title, readme_lesson_rows
from .config import Profile, Runtime

__all__ = ["lesson_paths", "execute_lesson", "render_lesson_page", "lesson_summary", "thumbnail", "render_index", "run_course",
           "ensure_models", "course_jobs"]

LESSON_MODELS = ("classifier", "denoiser", "class", "clip", "text2image")
THUMB_TAG = "book-thumbnail"             # tag a code cell with it to choose the lesson's picture on the index
THUMB_PX = (320, 180)                    # a thumbnail's largest (width, height) in pixels; shown at half size
THUMB_COLORS = 64                        # a shrunk thumbnail's palette: a third of the bytes of full colour
THUMB_TYPES = ("image/png", "image/jpeg", "image/gif")   # outputs Pillow can shrink
SUMMARY_COLUMN = "what you build"        # the README lesson table's column the index quotes


def _library_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((paths.root() / "course_lib").rglob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _key(nb_path: Path, profile: Profile, lib_hash: str) -> str:
    return hashlib.sha256(nb_path.read_bytes() + profile.name.encode() + lib_hash.encode()).hexdigest()[:16]


CELL_TIMEOUT = 3_600         # seconds one cell may go without finishing before its lesson is stopped


def cell_timeout() -> int:
    """Seconds a cell may run (``COURSE_CELL_TIMEOUT``, default ``CELL_TIMEOUT``): a cell that never gets its
    reply (a rare hang between the Jupyter client and an idle kernel) stops its lesson instead of the course
    waiting for ever."""
    text = os.environ.get("COURSE_CELL_TIMEOUT", "").strip()
    if not text:
        return CELL_TIMEOUT
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"COURSE_CELL_TIMEOUT must be a whole number of seconds >= 1, got {text!r}")
    return int(text)


def execute_lesson(nb_path: Path, out_dir: Path, timeout: int | None = None) -> tuple[Path, float]:
    """Execute one notebook (working directory ``lessons/``) and write the executed copy and its HTML page
    (``render_lesson_page``). ``timeout``: seconds per cell (None: no limit); nbclient's ``CellTimeoutError``
    past it."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(nb_path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   # the kernel's own log only warns that a local kernel talks over TCP without encryption
                   extra_arguments=["--IPKernelApp.log_level=ERROR"],
                   resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    seconds = time.perf_counter() - t0
    (out_dir / "lessons").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / "lessons" / nb_path.name)
    return render_lesson_page(nb, nb_path, out_dir), seconds


def render_lesson_page(nb, nb_path: Path, out_dir: Path) -> Path:
    """A lesson's page of the book, ``out_dir/<stem>.html``, from its notebook ``nb`` (executed or not).

    Args:
        nb: the notebook node (``nbformat.read``).
        nb_path: the lesson's notebook file (its name and title name the page).
        out_dir: the book's folder.

    Returns:
        The page's path (written atomically: a reader never sees half a page).
    """
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(   # the page title: the lesson's heading
        nb, resources={"metadata": {"name": lesson_title(nb_path)}})
    html_path = Path(out_dir) / (Path(nb_path).stem + ".html")
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html_path)
    return html_path


def lesson_summary(nb_name: str, root: str | Path | None = None) -> str | None:
    """What you build in a lesson, in one line: its "what you build" cell in the README's lesson table.

    Args:
        nb_name: the lesson's file name, e.g. ``"01_forward_noising.ipynb"``.
        root: the course folder whose ``README.md`` is read (default: the course).

    Returns:
        The cell's markdown text, or ``None`` where there is no README, table, row or column, or the cell
        is empty or "—".
    """
    found = readme_lesson_rows(root)
    if found is None:                    # no README or no lesson table
        return None
    header, rows = found
    cells = rows.get(nb_name)
    if SUMMARY_COLUMN not in header or cells is None or header.index(SUMMARY_COLUMN) >= len(cells):
        return None
    text = cells[header.index(SUMMARY_COLUMN)].replace("\\|", "|").strip()
    return text if text not in ("", "—", "-") else None


def _inline_markdown(text: str) -> str:
    """A table cell's markdown as HTML: escaped, with `code` spans and **bold**; a [link](url) keeps only
    its text (a README-relative address would not resolve from ``build/``)."""
    out = html.escape(re.sub(r"\[([^\]]+)\]\([^)\s]+\)", r"\1", text), quote=False)
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


def _image_outputs(cell: dict) -> list[tuple[str, str]]:
    """A code cell's image outputs as ``(mime type, base64 text)``, in output order."""
    found = []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        for mime in THUMB_TYPES:
            if mime in data:
                b64 = data[mime]
                found.append((mime, "".join(b64) if isinstance(b64, list) else b64))
                break
    return found


def thumbnail(executed_nb: str | Path, max_px: tuple[int, int] = THUMB_PX) -> bytes | None:
    """A lesson's picture for the index, from its executed notebook (the rule is in the module docstring).

    Args:
        executed_nb: an executed notebook, e.g. ``build/lessons/01_forward_noising.ipynb``.
        max_px: the largest (width, height); a bigger image is shrunk to fit, keeping its aspect ratio.

    Returns:
        PNG bytes (the output's own bytes when it is a PNG that already fits), or ``None`` when the
        notebook is missing or has no image output that decodes.
    """
    import base64
    import io
    from PIL import Image
    try:
        nb = json.loads(Path(executed_nb).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    code = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    tagged = [img for c in code if THUMB_TAG in c.get("metadata", {}).get("tags", []) for img in _image_outputs(c)]
    candidates = tagged or [img for c in code for img in _image_outputs(c)][::-1]   # else the last image
    for mime, b64 in candidates:
        try:
            raw = base64.b64decode(b64)
            with Image.open(io.BytesIO(raw)) as im:
                if mime == "image/png" and im.width <= max_px[0] and im.height <= max_px[1]:
                    return raw
                im.seek(0)                                             # a GIF: its first frame
                rgba = im.convert("RGBA")
        except Exception:                # a broken output is skipped, not an error: the next one is tried
            continue
        flat = Image.new("RGB", rgba.size, "white")                    # figures are drawn on white
        flat.paste(rgba, mask=rgba.getchannel("A"))
        flat.thumbnail(max_px, Image.LANCZOS)
        buf = io.BytesIO()
        flat.quantize(THUMB_COLORS).save(buf, format="PNG", optimize=True)
        return buf.getvalue()
    return None


def render_index(out_dir: Path, entries: list[dict], profile: Profile, runtime: Runtime,
                 root: str | Path | None = None) -> Path:
    """``build/index.html``: per executed lesson, its title linking to its page, the time it took, what you
    build in it (``lesson_summary``) and a picture from its executed notebook in ``out_dir/lessons/``
    (``thumbnail``).

    Args:
        entries: ``{"title", "html", "seconds"}`` per lesson, in course order (the manifest's records).
        root: the course folder whose README gives the lines (default: the course).
    """
    import base64
    rows = []
    for e in entries:
        nb_name = Path(e["html"]).with_suffix(".ipynb").name
        png = thumbnail(Path(out_dir) / "lessons" / nb_name)
        picture = (f'<img class="thumb" alt="a figure from {html.escape(e["title"])}" '
                   f'src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png
                   else '<span class="thumb"></span>')
        summary = lesson_summary(nb_name, root)
        line = f'<br><span class="what">{_inline_markdown(summary)}</span>' if summary else ""
        rows.append(f'<li>{picture}<div><a href="{html.escape(e["html"])}">{html.escape(e["title"])}</a>'
                    f' <span class="meta">{e["seconds"]:.0f} s</span>{line}</div></li>')
    rows = "\n".join(rows)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>From Noise to Digits: the course book</title>
<style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:3rem auto;line-height:1.5;padding:0 1rem}}
ol{{list-style:none;padding:0}} li{{display:flex;gap:1rem;align-items:center;margin:.8rem 0}}
.thumb{{flex:none;width:160px;max-height:90px;object-fit:contain}} .what{{color:#444}}
.meta{{color:#777;font-size:.85em}}</style></head>
<body><h1>From Noise to Digits</h1>
<p>Every lesson below was executed on <b>{html.escape(runtime.device.type)}</b> with the
<b>{html.escape(profile.name)}</b> profile ({html.escape(runtime.precision)}), with its pictures and animations.</p>
<ol id="lessons">
{rows}
</ol>
<p class="meta">Built {time.strftime('%Y-%m-%d %H:%M')} by <code>make course</code>.</p>
</body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


def ensure_models(profile: Profile, runtime: Runtime, names=LESSON_MODELS) -> dict[str, str]:
    """Use finished user checkpoints or matching shipped weights (the profile's, else its fallback's, as the
    lessons do: ``models.find_usable``); train (resuming) only what is missing."""
    from .models import find_usable, train_missing
    used = {}
    for name in names:
        t0 = time.perf_counter()
        found = find_usable(name, profile)
        if found is not None:
            folder, trained = found[0], False
        else:
            folder, trained = train_missing(name, profile, runtime)     # says so when it has to train
        used[name] = str(folder)
        print(f"[model] {name:<10} " + (f"trained in {time.perf_counter() - t0:.0f} s" if trained
                                         else f"using {folder}"))
    return used


def course_jobs(runtime: Runtime, jobs: int | None = None) -> tuple[int, int | None]:
    """How many lessons execute at once, and the torch threads each kernel gets.

    On a GPU, one lesson at a time (they would share one device's memory). On a CPU, two at a time where
    there are at least two cores, each kernel with half of them: on a 2-core machine two one-thread
    kernels finish the course sooner than one two-thread kernel after another, because much of a lesson
    (plotting, small tensors, converting to HTML) uses one core however many torch may take.
    ``COURSE_JOBS`` (or ``course --jobs``) overrides the count; an ``OMP_NUM_THREADS`` that is already set
    is left as it is.

    Returns:
        (jobs, threads per kernel, or None to leave torch's default).
    """
    if jobs is None:
        text = os.environ.get("COURSE_JOBS", "").strip()
        if text:
            if not text.isdigit() or int(text) < 1:
                raise ValueError(f"COURSE_JOBS must be a whole number >= 1, got {text!r}")
            jobs = int(text)
        else:
            jobs = 1 if runtime.device.type != "cpu" else min(2, os.cpu_count() or 1)
    elif not (isinstance(jobs, int) and jobs >= 1):
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    if jobs == 1 or "OMP_NUM_THREADS" in os.environ:
        return jobs, None
    return jobs, max(1, (os.cpu_count() or 1) // jobs)


def _execute_in_worker(nb_path: Path, out_dir: Path, threads: int | None, timeout: int) -> tuple[Path, float]:
    """``execute_lesson`` in a worker process; its kernel inherits ``OMP_NUM_THREADS`` (torch's threads).

    A cell past ``timeout`` seconds is taken for the client's rare lost reply (seen once on 2 cores: the
    kernel idle, the client waiting): the lesson runs once more, in a new kernel, and fails if it times out
    again."""
    from nbclient.exceptions import CellTimeoutError
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        return execute_lesson(nb_path, out_dir, timeout)
    except CellTimeoutError:
        print(f"[lesson] {nb_path.name}: a cell did not finish in {timeout} s; executing the lesson once more",
              flush=True)
    try:
        return execute_lesson(nb_path, out_dir, timeout)
    except CellTimeoutError:
        raise RuntimeError(f"{nb_path.name}: a cell did not finish in {timeout} s, twice; if it really needs "
                           f"longer, set COURSE_CELL_TIMEOUT (seconds)") from None


def run_course(profile: Profile, runtime: Runtime, lessons=None, force: bool = False,
               out_dir: str | os.PathLike | None = None, jobs: int | None = None) -> int:
    """Train what is missing, execute the lessons (all, or those named in ``lessons``) and render the book.

    Args:
        lessons: file names or prefixes such as ``"04"`` (default: every lesson).
        force: re-execute lessons even when their notebook, the library and the profile are unchanged.
        out_dir: where the executed lessons, ``manifest.json`` and ``index.html`` go (default: ``build/``).
        jobs: lessons executed at once (default: ``course_jobs``). Every model a lesson only uses is
            trained (or found) first, so lessons that run side by side never train the same model.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    jobs, threads = course_jobs(runtime, jobs)                   # checked before any compute
    timeout = cell_timeout()
    out_dir = Path(out_dir) if out_dir is not None else paths.build_dir()
    (out_dir / "lessons").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ensure_models(profile, runtime)
    manifest_path = out_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    lib = _library_hash()
    todo = lesson_paths()
    if lessons:
        todo = [p for p in todo if any(p.name.startswith(s) or p.stem == s for s in lessons)]
    keys = {nb_path: _key(nb_path, profile, lib) for nb_path in lesson_paths()}
    run = []
    for nb_path in lesson_paths():
        rec = manifest.get(nb_path.name)
        html_path = out_dir / (nb_path.stem + ".html")
        if nb_path in todo and (force or not rec or rec["key"] != keys[nb_path] or not html_path.is_file()):
            run.append(nb_path)
        elif rec:
            print(f"[lesson] {nb_path.name}: unchanged, kept ({rec['seconds']:.0f} s last time)")
    if run:
        print(f"[lesson] executing {len(run)} lesson(s), {jobs} at a time"
              + (f", {threads} torch thread(s) each" if threads else ""), flush=True)
    # the longest first (by the last run's time), so the last lesson to finish is a short one
    run.sort(key=lambda p: -manifest.get(p.name, {}).get("seconds", 0.0))
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    try:
        futures = {pool.submit(_execute_in_worker, nb_path, out_dir, threads, timeout): nb_path for nb_path in run}
        for future in as_completed(futures):
            nb_path = futures[future]
            _, seconds = future.result()           # re-raises a lesson's error here
            manifest[nb_path.name] = {"key": keys[nb_path], "seconds": seconds, "title": lesson_title(nb_path),
                                      "html": nb_path.stem + ".html"}
            manifest_path.write_text(json.dumps(manifest, indent=1))   # progress survives an interruption
            print(f"[lesson] {nb_path.name}: done in {seconds:.0f} s", flush=True)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)   # a failing lesson stops the rest from starting
        raise
    pool.shutdown()
    entries = [manifest[p.name] for p in lesson_paths() if p.name in manifest]
    index = render_index(out_dir, entries, profile, runtime)
    print(f"course book: {index} ({len(entries)} lessons) in {time.perf_counter() - t_start:.0f} s")
    return 0
