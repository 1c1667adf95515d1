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

from . import paths
from .links import lesson_paths, lesson_title, readme_lesson_rows
from .config import Profile, Runtime

__all__ = ["lesson_paths", "execute_lesson", "render_lesson_page", "book_cells", "tex_to_mathml", "lesson_summary", "thumbnail", "render_index", "run_course",
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
