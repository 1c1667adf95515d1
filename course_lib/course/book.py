"""``make course``: make sure every model a lesson needs exists, execute every lesson in order with nbclient
into ``build/``, and render a static HTML course book (``build/index.html``) a person can open in a browser.

Re-running resumes instead of starting over: a lesson is executed again only when its notebook, the
library or the profile changed since its last successful run (recorded in ``build/manifest.json``), and
model training resumes from its last checkpoint.

When a lesson fails or hangs, one line on stderr names it, the cell (its number and first line) and the
error, and the lesson's output up to there is saved in ``build/failed/``; the other running lesson is
stopped at once (one that finished is recorded). A cell running past ``cell_timeout()`` (900 s under
``cpu``) is taken for a hang: its lesson runs once more, then fails. A cell running for ``HEARTBEAT_S``
gets a line saying so. Each lesson runs in its own worker process; Ctrl-C, SIGTERM and SIGHUP end every
worker and its kernel. The kernels' own output (shutdown noise) goes to ``build/logs/``.

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

Each lesson's page (``render_lesson_page``) reads offline, like the index: its formulas are MathML made when
the page is written (``latex2mathml``; every browser draws MathML, with no JavaScript and no network), and
nothing is taken from a CDN (nbconvert's MathJax, require.js and mermaid are left out; the animation
players' icons are drawn by the page). A bar at its top and bottom links the previous lesson, the index and
the next lesson, and opens the lesson in Colab. The Colab set-up cell is left out, and each exercise's
solution is folded (``<details>``), as Colab's forms and JupyterLab hide them.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import re
import time
from pathlib import Path

from .. import paths
from ..config import Profile, Runtime
from ..registry import MODELS
from .links import lesson_paths, lesson_title, readme_lesson_rows

__all__ = ["lesson_paths", "execute_lesson", "run_notebook", "LessonFailed", "cell_timeout", "render_lesson_page",
           "book_cells", "tex_to_mathml", "lesson_summary", "thumbnail", "render_index", "run_course",
           "read_manifest", "ensure_models", "course_jobs"]

LESSON_MODELS = tuple(name for name, spec in MODELS.items() if spec.lesson <= "08")   # Part 1's models, trained first
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


CELL_TIMEOUT = 900           # seconds one cell may run under the `cpu` and `test` profiles (see cell_timeout)
CELL_TIMEOUT_GPU = 3_600     # under `gpu`: lessons there may train their models inside a cell
TIMEOUT_FACTOR = 3           # a lesson that took longer last time gets this many times its last whole run
HEARTBEAT_S = 120            # a cell running this long gets a line saying so (and again every HEARTBEAT_S)


def cell_timeout(profile: Profile | None = None, last_seconds: float | None = None) -> int:
    """Seconds a cell may run before its lesson is stopped: ``COURSE_CELL_TIMEOUT`` when set, else
    ``CELL_TIMEOUT`` (900 s; ``CELL_TIMEOUT_GPU`` under the ``gpu`` profile), raised to ``TIMEOUT_FACTOR``
    times the lesson's last whole run (``last_seconds``, from ``build/manifest.json``) where that is longer.

    Why 900 s: under ``cpu`` with the shipped weights the longest lesson, 04, takes 285 s from its first cell
    to its last (README, 2026-12-06, 2 cores), so no cell takes longer; 900 s is three times that, room for
    a slower laptop, and a hung cell (a lost reply between the Jupyter client and an idle kernel) is
    reported within 15 minutes instead of an hour.
    """
    text = os.environ.get("COURSE_CELL_TIMEOUT", "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            raise ValueError(f"COURSE_CELL_TIMEOUT must be a whole number of seconds >= 1, got {text!r}")
        return int(text)
    base = CELL_TIMEOUT_GPU if profile is not None and profile.name == "gpu" else CELL_TIMEOUT
    return max(base, int(TIMEOUT_FACTOR * last_seconds) if last_seconds else 0)


class LessonFailed(RuntimeError):
    """A lesson stopped: ``str(e)`` is one line naming the lesson, the cell (its number and first line) and
    why. ``nb``: the notebook with the outputs it had when it stopped; ``timed_out``: a cell ran past the
    timeout."""

    def __init__(self, message: str, nb=None, timed_out: bool = False):
        super().__init__(message)
        self.nb, self.timed_out = nb, timed_out


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_CLIENT = None               # the notebook client running in this process (a worker kills its kernel on a stop)
_ON_CELL = None              # in a worker: tells the course which cell starts (its one-line description)


def _cell_words(nb, index: int | None) -> str:
    """``cell 5 of 12 (`first line`)``, counting every cell from 1, as a student scrolls the notebook."""
    if index is None or not 0 <= index < len(nb.cells):
        return "before its first cell"
    lines = [ln.strip() for ln in nb.cells[index].source.splitlines() if ln.strip()]
    first = lines[0] if lines else ""
    first = first if len(first) <= 60 else first[:57] + "..."
    return f"cell {index + 1} of {len(nb.cells)} (`{first}`)"


def run_notebook(nb_path: Path, timeout: int | None = None, kernel_log: Path | None = None):
    """Execute one notebook (working directory: its folder) with nbclient.

    Args:
        timeout: seconds per cell (None: no limit).
        kernel_log: where the kernel's own stdout and stderr go (its shutdown noise, a crash's last words);
            default: discarded. Cell outputs go into the notebook as always.
    Returns:
        (the executed notebook, seconds).
    Raises:
        LessonFailed: a cell raised, ran past ``timeout`` or lost its kernel: one line, with the partial
            notebook attached.
    """
    global _CLIENT
    import subprocess

    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
    nb = nbformat.read(nb_path, as_version=4)
    current: dict = {"index": None}

    def on_cell_start(cell=None, cell_index=None, **_):
        current["index"] = cell_index
        if _ON_CELL is not None:
            _ON_CELL(_cell_words(nb, cell_index))

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                            # the kernel's own log only warns that a local kernel talks over TCP without encryption
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(nb_path.parent)}}, on_cell_start=on_cell_start)
    log = None
    if kernel_log is not None:
        Path(kernel_log).parent.mkdir(parents=True, exist_ok=True)
        log = open(kernel_log, "w")
    t0 = time.perf_counter()
    _CLIENT = client
    try:
        out = log if log is not None else subprocess.DEVNULL
        client.execute(stdout=out, stderr=out)
    except CellTimeoutError:
        raise LessonFailed(f"{nb_path.name}: {_cell_words(nb, current['index'])} did not finish in {timeout} s",
                           nb, timed_out=True) from None
    except CellExecutionError as e:
        detail = _ANSI.sub("", str(e.evalue)).strip()
        why = e.ename + (f": {detail.splitlines()[0]}" if detail else "")
        raise LessonFailed(f"{nb_path.name}: {_cell_words(nb, current['index'])} raised {why}", nb) from None
    except DeadKernelError:
        raise LessonFailed(f"{nb_path.name}: the kernel died in {_cell_words(nb, current['index'])} (out of "
                           f"memory?)" + (f"; its log: {kernel_log}" if kernel_log else ""), nb) from None
    finally:
        _CLIENT = None
        if log is not None:
            log.close()
    return nb, time.perf_counter() - t0


def execute_lesson(nb_path: Path, out_dir: Path, timeout: int | None = None) -> tuple[Path, float]:
    """Execute one notebook (working directory ``lessons/``) and write the executed copy and its HTML page
    (``render_lesson_page``). ``timeout``: seconds per cell (None: no limit). Raises ``LessonFailed``
    (``run_notebook``)."""
    import nbformat
    nb, seconds = run_notebook(nb_path, timeout, Path(out_dir) / "logs" / f"{nb_path.stem}.kernel.log")
    (out_dir / "lessons").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / "lessons" / nb_path.name)
    return render_lesson_page(nb, nb_path, out_dir), seconds


SETUP_TAG = "colab-setup"                # the Colab set-up cell: left out of the book
SETUP_TITLE = "#@title Set-up"           # ... also found by its title, as the first code cell
SOLUTION_TAG = "solution"                # a solution cell: folded in the book (<details>)
# matplotlib's animation player (``to_jshtml``) links Font Awesome from a CDN for its button icons
REMOTE_ICONS = re.compile(r"<link\b[^>]*font-awesome[^>]*>", re.IGNORECASE)

# The lesson page: JupyterLab's look (nbconvert's "lab" template) with nothing loaded from the network (no
# MathJax, require.js or mermaid from a CDN: the formulas are MathML already, see ``tex_to_mathml``; the
# animation players' Font Awesome icons are drawn as text glyphs), a navigation bar at the top and the
# bottom, and each solution folded. Only a page that stored widget state (progress bars, lesson 08's
# prompt box) still asks a CDN for the widget manager and the require.js it needs: online it draws them,
# offline they are left out, as before.
PAGE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- if "widgets" in nb.metadata -%}{{ super() }}{%- endif -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block extra_css -%}
<style>
nav.book{display:flex;flex-wrap:wrap;gap:.4rem 1.2rem;align-items:center;margin:.8rem 0;padding:.5rem 0;
  font:14px system-ui,sans-serif;border-bottom:1px solid #ddd}
nav.book.bottom{border-top:1px solid #ddd;border-bottom:none;margin-top:2rem}
nav.book .colab{margin-left:auto;padding:.15rem .55rem;border-radius:4px;background:#444;color:#fff;
  text-decoration:none} nav.book .colab b{color:#f9ab00}
details.solution{margin:.4rem 0 .4rem 0;border-left:3px solid #c8d8ec;padding-left:.4rem}
details.solution>summary{cursor:pointer;font:14px system-ui,sans-serif;color:#2a5d9f;padding:.2rem 0}
math[display="block"]{margin:.6em 0}
.anim-buttons .fa{font:normal 13px/1 system-ui,sans-serif}
.fa-play:before{content:"\\25B6"} .fa-pause:before{content:"\\2759\\2759"} .fa-plus:before{content:"+"}
.fa-step-forward:before{content:"\\25B6\\2759"} .fa-step-backward:before{content:"\\2759\\25C0"}
.fa-fast-forward:before{content:"\\25B6\\25B6"} .fa-fast-backward:before{content:"\\25C0\\25C0"}
.fa-minus:before{content:"\\2212"} .fa-flip-horizontal{display:inline-block;transform:scaleX(-1)}
</style>
{%- endblock extra_css -%}
{%- macro book_nav(where) -%}
<nav class="book {{ where }}" aria-label="lessons">
{%- if resources.book.previous %}<a rel="prev" href="{{ resources.book.previous.href }}">&larr; {{ resources.book.previous.title }}</a>{% endif %}
<a rel="index" href="index.html">All lessons</a>
{%- if resources.book.next %}<a rel="next" href="{{ resources.book.next.href }}">{{ resources.book.next.title }} &rarr;</a>{% endif %}
<a class="colab" href="{{ resources.book.colab }}">Open in <b>Colab</b></a>
</nav>
{%- endmacro -%}
{%- block body_header -%}
{{ super() }}
{{ book_nav("top") }}
{%- endblock body_header -%}
{%- block body_footer -%}
{{ book_nav("bottom") }}
{{ super() }}
{%- endblock body_footer -%}
{%- block any_cell -%}
{%- if "solution" in cell.metadata.get("tags", []) -%}
<details class="solution"><summary>{{ cell.metadata.get("book_summary", "Solution") }}</summary>
{{ super() }}
</details>
{%- else -%}
{{ super() }}
{%- endif -%}
{%- endblock any_cell -%}
"""


def tex_to_mathml(tex: str, display: bool = False) -> str:
    """A TeX formula as MathML, which browsers typeset without JavaScript or a network (``latex2mathml``).

    Letters in a ``mathvariant`` other than normal (``\\mathcal N``, ``\\mathbb R``, ``\\mathbf x``) become
    their Unicode mathematical letters, since Chromium's MathML draws only the normal variant. A formula
    that does not convert is kept as escaped TeX between dollars, as the page showed it before."""
    from latex2mathml.converter import convert
    try:
        out = convert(tex, display="block" if display else "inline")
        if "<mi>&</mi>" in out:           # an alignment it does not know (``aligned``): a bare & in the page
            raise ValueError(tex)
    except Exception:                     # latex2mathml raises its own exceptions, and others, on odd TeX
        return html.escape(f"$${tex}$$" if display else f"${tex}$", quote=False)
    # HTML needs no namespace on <math>, and without one a formula in a heading survives nbconvert's anchor
    # filter (an XML round trip that would rename it <ns0:math>, which no browser takes for math)
    out = out.replace(' xmlns="http://www.w3.org/1998/Math/MathML"', "", 1)
    return re.sub(r'<mi mathvariant="([a-z-]+)">([A-Za-z])</mi>', _math_letter, out)


def _math_letter(m: re.Match) -> str:
    import unicodedata
    variant = {"script": "SCRIPT", "double-struck": "DOUBLE-STRUCK", "bold": "BOLD", "fraktur": "FRAKTUR",
               "bold-italic": "BOLD ITALIC", "sans-serif": "SANS-SERIF"}.get(m.group(1))
    letter = m.group(2)
    if variant is None:
        return m.group(0)
    case = "CAPITAL" if letter.isupper() else "SMALL"
    for name in (f"MATHEMATICAL {variant} {case} {letter.upper()}", f"{variant} {case} {letter.upper()}"):
        try:                              # script B, double-struck R, ...: in Letterlike Symbols, not Math
            return f"<mi>{unicodedata.lookup(name)}</mi>"
        except KeyError:
            continue
    return m.group(0)


_EXPORTER = None


def _page_exporter():
    """nbconvert's HTML exporter with the book's template (``PAGE_TEMPLATE``) and markdown whose formulas
    become MathML (``tex_to_mathml``). Built once: its template environment is compiled on first use."""
    global _EXPORTER
    if _EXPORTER is None:
        from jinja2 import DictLoader
        from nbconvert import HTMLExporter
        from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

        class MathMLRenderer(IPythonRenderer):
            def block_math(self, body: str) -> str:
                return tex_to_mathml(body, display=True)

            def inline_math(self, body: str) -> str:
                return tex_to_mathml(body)

            def latex_environment(self, name: str, body: str) -> str:
                return tex_to_mathml(f"\\begin{{{name}}}{body}\\end{{{name}}}", display=True)

        class BookExporter(HTMLExporter):
            def markdown2html(self, context, source):
                # nbconvert's own filter (HTMLExporter.markdown2html) with the renderer above
                cell = context.get("cell", {})
                renderer = MathMLRenderer(
                    escape=False, attachments=cell.get("attachments", {}), embed_images=self.embed_images,
                    path=context.get("resources", {}).get("metadata", {}).get("path", ""),
                    anchor_link_text=self.anchor_link_text, exclude_anchor_links=self.exclude_anchor_links,
                    **getattr(self, "lexer_options", {}))
                return MarkdownWithMath(renderer=renderer).render(source)

        from jinja2 import pass_context
        BookExporter.markdown2html = pass_context(BookExporter.markdown2html)
        _EXPORTER = BookExporter(template_name="lab", template_file="book.html.j2",
                                 extra_loaders=[DictLoader({"book.html.j2": PAGE_TEMPLATE})])
    return _EXPORTER


def book_cells(nb):
    """The notebook as the book shows it (a copy): without the Colab set-up cell (tagged ``SETUP_TAG``, or
    the first code cell when it starts with ``SETUP_TITLE``), and with Colab's ``#@title`` line taken off
    every solution (tagged ``SOLUTION_TAG``), whose title becomes the fold's label; HTML outputs lose their
    link to Font Awesome on a CDN (``REMOTE_ICONS``: the page draws those icons itself)."""
    import copy
    nb = copy.deepcopy(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    first_code = code[0] if code else None
    kept = []
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if SETUP_TAG in tags or (cell is first_code and cell.source.lstrip().startswith(SETUP_TITLE)):
            continue
        if SOLUTION_TAG in tags and cell.cell_type == "code":
            first, _, rest = cell.source.partition("\n")
            if first.startswith("#@title"):
                title = re.sub(r"\{.*\}|\(click to expand\)", "", first[len("#@title"):]).strip()
                cell.metadata["book_summary"] = title or "Solution"
                cell.source = rest
        for out in cell.get("outputs", []):
            page = out.get("data", {}).get("text/html")
            if page is not None:
                out["data"]["text/html"] = REMOTE_ICONS.sub("", "".join(page) if isinstance(page, list) else page)
        kept.append(cell)
    nb.cells = kept
    return nb


def render_lesson_page(nb, nb_path: Path, out_dir: Path, lessons: list[Path] | None = None) -> Path:
    """A lesson's page of the book, ``out_dir/<stem>.html``, from its notebook ``nb`` (executed or not).

    The page reads offline: formulas are MathML (``tex_to_mathml``), nothing is loaded from a CDN. It has
    links to the previous and next lesson and to the index, an "Open in Colab" link (``links.colab_url``),
    no Colab set-up cell, and each solution folded (``book_cells``).

    Args:
        nb: the notebook node (``nbformat.read``).
        nb_path: the lesson's notebook file (its name and title name the page).
        out_dir: the book's folder.
        lessons: the lessons in course order, for the previous / next links (default: ``lesson_paths()``).

    Returns:
        The page's path (written atomically: a reader never sees half a page).
    """
    from .links import colab_url
    nb_path = Path(nb_path)
    order = [Path(p).name for p in (lessons if lessons is not None else lesson_paths())]
    paths_by_name = {Path(p).name: Path(p) for p in (lessons if lessons is not None else lesson_paths())}
    i = order.index(nb_path.name) if nb_path.name in order else None

    def neighbour(j: int) -> dict | None:
        if i is None or not 0 <= j < len(order):
            return None
        p = paths_by_name[order[j]]
        return {"href": html.escape(p.stem + ".html"), "title": html.escape(lesson_title(p))}

    book = {"previous": neighbour(i - 1) if i is not None else None,
            "next": neighbour(i + 1) if i is not None else None,
            "colab": html.escape(colab_url(nb_path))}
    body, _ = _page_exporter().from_notebook_node(     # the page title: the lesson's heading
        book_cells(nb), resources={"metadata": {"name": lesson_title(nb_path)}, "book": book})
    html_path = Path(out_dir) / (nb_path.stem + ".html")
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
    """``build/index.html``: per executed lesson, its title linking to its page, the time it took, a link
    that opens it in Colab, what you build in it (``lesson_summary``) and a picture from its executed
    notebook in ``out_dir/lessons/`` (``thumbnail``).

    Args:
        entries: ``{"title", "html", "seconds"}`` per lesson, in course order (the manifest's records).
        root: the course folder whose README gives the lines (default: the course).
    """
    import base64

    from .links import colab_url
    rows = []
    for e in entries:
        nb_name = Path(e["html"]).with_suffix(".ipynb").name
        png = thumbnail(Path(out_dir) / "lessons" / nb_name)
        picture = (f'<img class="thumb" alt="a figure from {html.escape(e["title"])}" '
                   f'src="data:image/png;base64,{base64.b64encode(png).decode()}">' if png
                   else '<span class="thumb"></span>')
        summary = lesson_summary(nb_name, root)
        line = f'<br><span class="what">{_inline_markdown(summary)}</span>' if summary else ""
        colab = html.escape(colab_url(nb_name))
        rows.append(f'<li>{picture}<div><a href="{html.escape(e["html"])}">{html.escape(e["title"])}</a>'
                    f' <span class="meta" title="the time it took to execute">{e["seconds"]:.0f} s</span>'
                    f' <a class="colab" href="{colab}">Open in Colab</a>{line}</div></li>')
    rows = "\n".join(rows)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>From Noise to Digits: the course book</title>
<style>body{{font-family:system-ui,sans-serif;max-width:50rem;margin:3rem auto;line-height:1.5;padding:0 1rem}}
ol{{list-style:none;padding:0}} li{{display:flex;gap:1rem;align-items:center;margin:.8rem 0}}
.thumb{{flex:none;width:160px;max-height:90px;object-fit:contain}} .what{{color:#444}}
.meta{{color:#777;font-size:.85em}} .colab{{font-size:.85em;color:#b06f00}}</style></head>
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
    lessons do: ``registry.find_usable``); train (resuming) only what is missing."""
    from ..registry import find_usable, train_missing
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
    ``COURSE_JOBS`` (or ``course --jobs``) overrides the count. An ``OMP_NUM_THREADS`` that is already set
    is kept where it fits, and lowered where it does not: threads per kernel never exceed the cores divided
    by the lessons running (two lessons each taking both of 2 cores ran lesson 03 ten times slower).

    Returns:
        (jobs, threads per kernel, or None to leave torch's default or the user's setting).
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
    share = max(1, (os.cpu_count() or 1) // jobs)
    text = os.environ.get("OMP_NUM_THREADS", "").strip()
    if text:
        return jobs, (None if text.isdigit() and 1 <= int(text) <= share else share)
    return jobs, (None if jobs == 1 else share)


class _Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a closed terminal): handled as Ctrl-C is, so the workers and kernels are ended."""


def _kill_kernel() -> None:
    """Kill the kernel of the client running in this process (and its process group), at once."""
    import signal
    km = getattr(_CLIENT, "km", None)
    proc = getattr(getattr(km, "provisioner", None), "process", None)
    if proc is None or proc.poll() is not None:
        return
    try:
        if hasattr(os, "killpg") and os.getpgid(proc.pid) == proc.pid:   # jupyter_client: its own session
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.kill()
        proc.wait(5)
    except Exception:                    # already gone, or not ours to wait for: nothing left to do
        pass
    try:
        os.remove(km.connection_file)
    except (OSError, TypeError, AttributeError):
        pass


def _stop_worker(signum, frame) -> None:
    """A worker told to stop (by the course, a closed terminal or Ctrl-C): kill its kernel, leave quietly."""
    _kill_kernel()
    os._exit(128 + signum)


def _watch_parent(poll_s: float = 1.0) -> None:
    """If the course itself is killed (``kill -9``: no handler runs), its workers notice that their parent
    is gone within ``poll_s`` seconds, kill their kernels and leave."""
    import threading
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                _kill_kernel()
                os._exit(1)
    threading.Thread(target=watch, daemon=True, name="watch the course").start()


def _keep_nbclient_out_of_signals() -> None:
    """Make the event loop nbclient will run in (jupyter_core's, for this thread) decline
    ``add_signal_handler``: nbclient then keeps out of SIGINT and SIGTERM (it catches the RuntimeError),
    and the worker's own handlers stay in force the whole time. Left to itself, nbclient replaces them while
    it runs, cleans up on a signal and goes on, printing tracebacks."""
    from jupyter_core.utils import ensure_event_loop

    def decline(*args, **kwargs):
        raise RuntimeError("a course worker handles its own signals")
    ensure_event_loop().add_signal_handler = decline


def _send(conn, message: dict) -> None:
    """Tell the course; a course that has stopped listening (its end closed) is not an error here."""
    try:
        conn.send(message)
    except OSError:
        pass


def _lesson_worker(nb_path: Path, out_dir: Path, threads: int | None, timeout: int, conn) -> None:
    """A worker process's whole life: ``_run_lesson``, then leave at once. Whatever happens while it is
    being stopped (nbclient's own signal handlers clean up a kernel that is still starting, the course has
    closed its end) prints nothing: the course reports what it needs, in one line."""
    import sys
    try:
        _run_lesson(nb_path, out_dir, threads, timeout, conn)
    except BaseException:
        pass
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(0)                  # no interpreter shutdown: no asyncio "never retrieved" logs at exit


def _run_lesson(nb_path: Path, out_dir: Path, threads: int | None, timeout: int, conn) -> None:
    """One lesson in a worker process: ``execute_lesson``, its result sent back on ``conn`` as a dict
    (``ok``, ``seconds`` or ``error``). Its kernel inherits ``OMP_NUM_THREADS`` (torch's threads).

    A cell past ``timeout`` seconds is taken for the client's rare lost reply (seen once on 2 cores: the
    kernel idle, the client waiting): the lesson runs once more, in a new kernel, and fails if it times out
    again. A failed lesson's partial notebook goes to ``out_dir/failed/`` so the student sees where it stopped.
    """
    import signal
    global _ON_CELL

    def on_cell(words: str) -> None:
        _send(conn, {"cell": words})
    for name in ("SIGTERM", "SIGHUP", "SIGINT"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), _stop_worker)
    _keep_nbclient_out_of_signals()
    _ON_CELL = on_cell
    _watch_parent()
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    failed = Path(out_dir) / "failed" / nb_path.name
    for attempt in (1, 2):
        try:
            _, seconds = execute_lesson(nb_path, out_dir, timeout)
            failed.unlink(missing_ok=True)
            _send(conn, {"ok": True, "seconds": seconds})
            return
        except LessonFailed as e:
            if e.nb is not None:
                import nbformat
                failed.parent.mkdir(parents=True, exist_ok=True)
                nbformat.write(e.nb, failed)
            if e.timed_out and attempt == 1:
                print(f"[lesson] {e}; executing the lesson once more", flush=True)
                continue
            why = str(e) + (", twice; if it really needs longer, set COURSE_CELL_TIMEOUT (seconds)"
                            if e.timed_out else "")
            _send(conn, {"ok": False, "error": why, "partial": str(failed) if e.nb is not None else None})
            return
        except Exception as e:                       # not the lesson's own error: still one line
            _send(conn, {"ok": False, "error": f"{nb_path.name}: {type(e).__name__}: "
                                               f"{str(e).splitlines()[0] if str(e) else ''}", "partial": None})
            return


def _write_manifest(path: Path, manifest: dict) -> None:
    """``manifest.json`` written whole or not at all (a temporary file, then ``os.replace``)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict:
    """The lessons recorded in ``manifest.json``; a damaged one (an interrupted write of an older course) is
    set aside as ``manifest.json.damaged`` with a one-line notice, and every lesson then runs again."""
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not all(isinstance(r, dict) and {"key", "seconds", "title", "html"}
                                                      <= r.keys() for r in manifest.values()):
            raise ValueError("not a record of lessons")
        return manifest
    except (ValueError, UnicodeDecodeError) as e:
        aside = path.with_name(path.name + ".damaged")
        os.replace(path, aside)
        print(f"[lesson] {path} was damaged ({str(e).splitlines()[0][:80]}): set aside as {aside.name}; "
              f"every lesson runs again", flush=True)
        return {}


def _end_workers(running: dict, wait_s: float = 5.0) -> None:
    """Stop the workers still running (each kills its kernel), then kill any that did not leave in time."""
    for proc in running:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + wait_s
    for proc in running:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1)


def run_course(profile: Profile, runtime: Runtime, lessons=None, force: bool = False,
               out_dir: str | os.PathLike | None = None, jobs: int | None = None) -> int:
    """Train what is missing, execute the lessons (all, or those named in ``lessons``) and render the book.

    Args:
        lessons: file names or prefixes such as ``"04"`` (default: every lesson).
        force: re-execute lessons even when their notebook, the library and the profile are unchanged.
        out_dir: where the executed lessons, ``manifest.json`` and ``index.html`` go (default: ``build/``).
        jobs: lessons executed at once (default: ``course_jobs``). Every model a lesson only uses is
            trained (or found) first, so lessons that run side by side never train the same model.
    Returns:
        0, or 1 when a lesson failed: one line on stderr names it, its cell and why, and where its partial
        output is; the lessons still running are stopped at once (those that finished are recorded).
    Raises:
        KeyboardInterrupt: Ctrl-C, SIGTERM or SIGHUP; no worker or kernel is left running.
    """
    import multiprocessing
    import signal
    import sys
    from multiprocessing.connection import wait
    jobs, threads = course_jobs(runtime, jobs)                   # checked before any compute
    cell_timeout(profile)
    out_dir = Path(out_dir) if out_dir is not None else paths.build_dir()
    (out_dir / "lessons").mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    ensure_models(profile, runtime)
    manifest_path = out_dir / "manifest.json"
    manifest = read_manifest(manifest_path)
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
        jobs, threads = course_jobs(runtime, min(jobs, len(run)))     # one lesson left gets all the cores
        print(f"[lesson] executing {len(run)} lesson(s), {jobs} at a time"
              + (f", {threads} torch thread(s) each" if threads else ""), flush=True)
    # the longest first (by the last run's time), so the last lesson to finish is a short one
    run.sort(key=lambda p: -manifest.get(p.name, {}).get("seconds", 0.0))
    ctx = multiprocessing.get_context("spawn")
    running: dict = {}          # worker process -> its lesson, pipe, result, and the cell it is running
    failures: list[str] = []

    def drain(w: dict) -> None:
        """Read what a worker sent: the cell it started (a heartbeat), then its result."""
        try:
            while not w["closed"] and w["conn"].poll():
                msg = w["conn"].recv()
                if "cell" in msg:
                    w.update(cell=msg["cell"], since=time.monotonic(), told=0)
                else:
                    w["result"] = msg
        except (EOFError, OSError):              # the worker has ended and closed its end
            w["closed"] = True

    def collect(proc) -> None:
        w = running.pop(proc)
        drain(w)
        w["conn"].close()
        nb_path, result = w["lesson"], w["result"]
        if result is None:
            if failures:                         # stopped by us after another lesson failed
                return
            result = {"ok": False, "error": f"{nb_path.name}: its worker process ended without a result "
                                             f"(exit code {proc.exitcode})", "partial": None}
        if result["ok"]:
            manifest[nb_path.name] = {"key": keys[nb_path], "seconds": result["seconds"],
                                      "title": lesson_title(nb_path), "html": nb_path.stem + ".html"}
            _write_manifest(manifest_path, manifest)          # progress survives an interruption
            print(f"[lesson] {nb_path.name}: done in {result['seconds']:.0f} s", flush=True)
        else:
            failures.append(result["error"] + (f"; its output up to there: {result['partial']}"
                                               if result.get("partial") else ""))

    def on_signal(signum, frame):
        raise _Stopped()

    saved = {}
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            try:
                saved[name] = signal.signal(getattr(signal, name), on_signal)
            except ValueError:                   # not the main thread: leave the handlers alone
                pass
    pending = list(run)
    try:
        while (pending or running) and not failures:
            while pending and len(running) < jobs:
                nb_path = pending.pop(0)
                parent, child = ctx.Pipe(duplex=False)
                timeout = cell_timeout(profile, manifest.get(nb_path.name, {}).get("seconds"))
                proc = ctx.Process(target=_lesson_worker, args=(nb_path, out_dir, threads, timeout, child),
                                   name=f"lesson {nb_path.stem}")
                proc.start()
                child.close()
                running[proc] = {"lesson": nb_path, "conn": parent, "result": None, "closed": False,
                                 "cell": None, "since": time.monotonic(), "told": 0}
            wait([p.sentinel for p in running] + [w["conn"] for w in running.values() if not w["closed"]],
                 timeout=1.0)
            now = time.monotonic()
            for proc, w in list(running.items()):
                drain(w)
                if w["result"] is not None or not proc.is_alive():
                    proc.join()
                    collect(proc)
                elif w["cell"] and now - w["since"] >= HEARTBEAT_S * (w["told"] + 1):
                    w["told"] += 1           # a long cell is not a silent one: a line every HEARTBEAT_S
                    print(f"[lesson] {w['lesson'].name}: {w['cell']} running for {now - w['since']:.0f} s",
                          flush=True)
        for proc, w in list(running.items()):    # finished meanwhile: recorded
            drain(w)
            if w["result"] is not None:
                proc.join()
                collect(proc)
    finally:
        _end_workers(running)
        for proc in list(running):
            running.pop(proc)["conn"].close()
        for name, handler in saved.items():
            signal.signal(getattr(signal, name), handler)
    if failures:
        print(f"error: lesson {failures[0]}", file=sys.stderr, flush=True)
        return 1
    entries = [manifest[p.name] for p in lesson_paths() if p.name in manifest]
    index = render_index(out_dir, entries, profile, runtime)
    print(f"course book: {index} ({len(entries)} lessons) in {time.perf_counter() - t_start:.0f} s")
    return 0
