"""``make course``: make sure every model a lesson needs exists, execute every lesson in order with nbclient
into ``build/``, and render a static HTML course book (``build/index.html``) a person can open in a browser.

Re-running resumes instead of starting over: a lesson is executed again only when its notebook, the
library or the profile changed since its last successful run (recorded in ``build/manifest.json``), and
model training resumes from its last checkpoint.
"""
from __future__ import annotations

import hashlib
import html
import json
import os
import time
from pathlib import Path

from . import paths
from .config import Profile, Runtime

__all__ = ["lesson_paths", "execute_lesson", "render_index", "run_course", "ensure_models"]

LESSON_MODELS = ("classifier", "denoiser", "class", "clip", "text2image")


def lesson_paths(root: str | Path | None = None) -> list[Path]:
    """Every lesson, in course order: ``lessons/[0-9A-Z]*.ipynb`` under ``root`` (default: the course)."""
    return sorted((Path(root) if root is not None else paths.root()).joinpath("lessons").glob("[0-9A-Z]*.ipynb"))


def _library_hash() -> str:
    h = hashlib.sha256()
    for p in sorted((paths.root() / "course_lib").rglob("*.py")):
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def _key(nb_path: Path, profile: Profile, lib_hash: str) -> str:
    return hashlib.sha256(nb_path.read_bytes() + profile.name.encode() + lib_hash.encode()).hexdigest()[:16]


def execute_lesson(nb_path: Path, out_dir: Path, timeout: int | None = None) -> tuple[Path, float]:
    """Execute one notebook (working directory ``lessons/``) and write the executed copy and its HTML."""
    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter
    nb = nbformat.read(nb_path, as_version=4)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   # the kernel's own log only warns that a local kernel talks over TCP without encryption
                   extra_arguments=["--IPKernelApp.log_level=ERROR"],
                   resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    seconds = time.perf_counter() - t0
    (out_dir / "lessons").mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, out_dir / "lessons" / nb_path.name)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(   # the page title: the lesson's heading
        nb, resources={"metadata": {"name": _title(nb_path)}})
    html_path = out_dir / (nb_path.stem + ".html")
    tmp = html_path.with_suffix(".html.tmp")
    tmp.write_text(body, encoding="utf-8")
    os.replace(tmp, html_path)
    return html_path, seconds


def _title(nb_path: Path) -> str:
    import nbformat
    nb = nbformat.read(nb_path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return nb_path.stem


def render_index(out_dir: Path, entries: list[dict], profile: Profile, runtime: Runtime) -> Path:
    """``build/index.html``: one link per executed lesson, with its time and profile."""
    rows = "\n".join(
        f'<li><a href="{html.escape(e["html"])}">{html.escape(e["title"])}</a>'
        f' <span class="meta">{e["seconds"]:.0f} s</span></li>' for e in entries)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>From Noise to Digits: the course book</title>
<style>body{{font-family:system-ui,sans-serif;max-width:46rem;margin:3rem auto;line-height:1.5;padding:0 1rem}}
li{{margin:.4rem 0}} .meta{{color:#777;font-size:.85em}}</style></head>
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
    """Use finished user checkpoints or matching shipped weights; train (resuming) only what is missing."""
    from .models import train_missing
    used = {}
    for name in names:
        t0 = time.perf_counter()
        folder, trained = train_missing(name, profile, runtime)     # says so when it has to train
        used[name] = str(folder)
        print(f"[model] {name:<10} " + (f"trained in {time.perf_counter() - t0:.0f} s" if trained
                                         else f"using {folder}"))
    return used


def run_course(profile: Profile, runtime: Runtime, lessons=None, force: bool = False,
               out_dir: str | os.PathLike | None = None) -> int:
    """Train what is missing, execute the lessons (all, or those named in ``lessons``) and render the book.

    Args:
        lessons: file names or prefixes such as ``"04"`` (default: every lesson).
        force: re-execute lessons even when their notebook, the library and the profile are unchanged.
        out_dir: where the executed lessons, ``manifest.json`` and ``index.html`` go (default: ``build/``).
    """
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
    entries = []
    for nb_path in lesson_paths():
        key = _key(nb_path, profile, lib)
        rec = manifest.get(nb_path.name)
        html_path = out_dir / (nb_path.stem + ".html")
        if nb_path in todo and (force or not rec or rec["key"] != key or not html_path.is_file()):
            print(f"[lesson] {nb_path.name}: executing ...", flush=True)
            _, seconds = execute_lesson(nb_path, out_dir)
            rec = {"key": key, "seconds": seconds, "title": _title(nb_path), "html": html_path.name}
            manifest[nb_path.name] = rec
            manifest_path.write_text(json.dumps(manifest, indent=1))   # progress survives an interruption
            print(f"[lesson] {nb_path.name}: done in {seconds:.0f} s")
        elif rec:
            print(f"[lesson] {nb_path.name}: unchanged, kept ({rec['seconds']:.0f} s last time)")
        if rec:
            entries.append(rec)
    index = render_index(out_dir, entries, profile, runtime)
    print(f"course book: {index} ({len(entries)} lessons) in {time.perf_counter() - t_start:.0f} s")
    return 0
