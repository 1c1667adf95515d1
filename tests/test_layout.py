"""The library's layout (issue 34): folders by role, and who may import whom.

Every module's imports are read with ``ast`` (module level and inside functions), resolved to files, and held
against the rules of ``course_lib/__init__.py`` (the table of the architecture review, section 4.3): a lower role
never imports a higher one, the maths (``diffusion/``) and the networks (``networks/``) do not know each other,
and no two modules import each other, directly or round a longer loop. The few imports that still break a rule
are listed in ``EXCEPTIONS``, each with the reason and the step of issue 34 that removes it; an exception that no
longer occurs fails the test too, so the list only shrinks.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parent.parent / "course_lib"
BASE = {"config", "paths", "hub", "store"}
FOLDERS = ("diffusion", "networks", "text", "data", "training", "pipelines", "measures", "course", "exercises")
MAX_TOP, MAX_FOLDER = 10, 10
# one folder allowed one module more, with the reason (an exception, so the list only shrinks):
FOLDER_EXCEPTIONS = {"training": (12, "one recipe per trained model (issue 34: a recipe beside its presets), so "
                                      "training/ grows with the models: the loop, checkpoints, the toys and 9 recipes")}

# role -> the roles it may import (itself always); "base" is config, paths, hub and store
ALLOWED = {
    "base": {"base"},
    "text": {"base"},
    "diffusion": {"base"},
    "networks": {"base"},
    "data": {"base", "text"},
    "pipelines": {"base", "diffusion", "networks", "text"},
    "training": {"base", "diffusion", "networks", "data", "text", "pipelines"},
    "measures": {"base", "diffusion", "networks", "data", "text"},
    "plotting": {"base", "diffusion"},
    "exercises": {"base", "diffusion", "networks", "training", "measures"},
    "registry": {"base", "training", "pipelines", "networks", "measures"},
    "course": {"base", "registry", "pipelines", "plotting"},
    "cli": {"base", "registry", "pipelines", "plotting", "course", "init"},        # init: __version__
    "init": {"base"},
}

# (importer, imported): why it still holds, and the step of issue 34 that removes it. Exact module pairs only.
EXCEPTIONS = {
    # the denoiser's pipeline draws each image's k-means cluster with data.clusters.draw_clusters (c ~ p(c), one
    # line of torch.multinomial over the sizes its training.json keeps), which lessons 03-04 import from there too
    ("course_lib.pipelines.class_to_image", "course_lib.data.clusters"): "DenoiserPipeline draws clusters "
                                                                         "(draw_clusters; lessons 03-04 use it)",
    # argparse checks --guidance and --autoguidance with guidance.check_scale, so a bad scale fails at parse time
    ("course_lib.__main__", "course_lib.diffusion.guidance"): "_scale: guidance.check_scale at parse time",
    # step B: one ModelSpec per model (its recipe checks its own target; train_missing returns the record)
    ("course_lib.__main__", "course_lib.training.checkpoints"): "cmd_train checks the target (step B: ModelSpec)",
    ("course_lib.__main__", "course_lib.training.unclip"): "cmd_train checks unCLIP's two targets (step B: ModelSpec)",
    # step B: zero-shot readings move to measures/alignment; embed_text is handed a tokenizer
    ("course_lib.networks.clip", "course_lib.text.tokenizer"): "embed_text tokenizes itself (step B)",
    ("course_lib.networks.clip", "course_lib.text.vocabulary"): "zero-shot reading lists the digit words (step B)",
    # step B: TextToImage.grid moves to plotting (a function-level import today)
    ("course_lib.pipelines.text_to_image", "course_lib.plotting"): "TextToImage.grid draws (step B: to plotting)",
    # step B: a recipe is handed what it builds on (ModelSpec.needs); measures move out of training/
    ("course_lib.training.latent", "course_lib.measures.metrics"): "latent_quality is a measure (step B: measures/)",
    ("course_lib.training.latent", "course_lib.registry"): "the latent run finds its autoencoder (step B: needs=)",
    ("course_lib.training.text2image", "course_lib.registry"): "prompt_accuracy finds the classifier, the run its "
                                                                 "CLIP (step B: needs=, measures/alignment)",
}


def module_name(path: Path) -> str:
    rel = path.relative_to(LIB.parent).with_suffix("")
    return ".".join(rel.parts).removesuffix(".__init__")


def role(module: str) -> str:
    """course_lib.training.clip -> "training"; course_lib.store -> "base"; course_lib.__main__ -> "cli"."""
    parts = module.split(".")[1:]
    if not parts:
        return "init"
    if parts[0] in FOLDERS or parts[0] in ("registry", "plotting"):
        return parts[0]
    if parts[0] in BASE:
        return "base"
    return {"__main__": "cli"}[parts[0]]


MODULES = {module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def resolve(module: str, node: ast.ImportFrom, path: Path) -> list[str]:
    """The course_lib modules an ImportFrom brings in (a name that is a submodule counts as that module)."""
    if node.level:
        pkg = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = pkg[: len(pkg) - node.level + 1]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("course_lib"):
        return []
    out = []
    for alias in node.names:
        sub = f"{target}.{alias.name}"
        out.append(sub if sub in MODULES else target)
    return out


def imports() -> dict[str, dict[str, int]]:
    """module -> {imported module: first line}, module level and function level together."""
    graph = {}
    for module, path in MODULES.items():
        edges = {}
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom):
                targets = resolve(module, node, path)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("course_lib")]
            for t in targets:
                if t != module and t in MODULES:
                    edges.setdefault(t, node.lineno)
        # course_lib.registry loads recipes by name: importlib.import_module(f"course_lib.{module}")
        for m in re.finditer(r'_lazy\("([\w.]+)"', path.read_text()):
            edges.setdefault(f"course_lib.{m.group(1)}", 0)
        graph[module] = edges
    return graph


GRAPH = imports()


def test_the_top_level_and_each_folder_hold_at_most_ten_modules():
    top = sorted(p.stem for p in LIB.glob("*.py"))
    assert len(top) <= MAX_TOP, f"{len(top)} modules at the top of course_lib/: {top}"
    folders = sorted(p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").is_file())
    assert folders == sorted(FOLDERS), folders
    for folder in FOLDERS:
        if folder == "exercises":          # one checker per lesson, unchanged by the layout
            continue
        files = sorted(p.stem for p in (LIB / folder).glob("*.py") if p.stem != "__init__")
        limit = FOLDER_EXCEPTIONS.get(folder, (MAX_FOLDER, ""))[0]
        assert len(files) <= limit, f"course_lib/{folder}/ holds {len(files)} modules: {files}"
        assert not list((LIB / folder).glob("*/__init__.py")), f"course_lib/{folder}/ has a sub-folder"


def test_every_folder_says_what_it_holds_and_what_it_may_import():
    for folder in FOLDERS[:-1]:                  # exercises/: unchanged by the layout
        doc = ast.get_docstring(ast.parse((LIB / folder / "__init__.py").read_text())) or ""
        assert "May import" in doc, f"course_lib/{folder}/__init__.py's docstring lacks 'May import'"


def test_the_package_map_lists_every_module():
    doc = ast.get_docstring(ast.parse((LIB / "__init__.py").read_text()))
    listed = set(re.findall(r"^ {4}([\w/]+) ", doc, re.M))
    on_disk = {m.split(".", 1)[1].replace(".", "/") for m in MODULES if m != "course_lib"}
    on_disk = {m for m in on_disk if not m.startswith("exercises/") and m not in FOLDERS and m != "__main__"}
    assert sorted(on_disk - listed) == [], "course_lib/__init__.py's map misses these modules"
    assert sorted(listed - on_disk - {"exercises"}) == [], "course_lib/__init__.py's map names modules that are gone"


def broken_rules() -> dict[tuple[str, str], int]:
    out = {}
    for module, edges in GRAPH.items():
        mine = role(module)
        for target, line in edges.items():
            theirs = role(target)
            if theirs != mine and theirs not in ALLOWED[mine]:
                out[(module, target)] = line
    return out


def test_a_lower_role_never_imports_a_higher_one():
    broken = broken_rules()
    new = {pair: line for pair, line in broken.items() if pair not in EXCEPTIONS}
    assert not new, "imports that break the folders' rules (ALLOWED; each folder's __init__.py):\n" + "\n".join(
        f"  {a} (line {line}, a {role(a)} module) imports {b} (a {role(b)} module)"
        for (a, b), line in sorted(new.items()))
    gone = sorted(set(EXCEPTIONS) - set(broken))
    assert not gone, f"these listed exceptions no longer occur: remove them from EXCEPTIONS: {gone}"


def test_no_import_cycles():
    """Tarjan's strongly connected components over the module graph: every component is one module.

    The edges listed in EXCEPTIONS are left out: the only loop today runs through them (registry -> the
    latent and text recipes -> registry, function-level imports that step B replaces with ModelSpec.needs).
    test_the_listed_exceptions_are_the_only_loop checks that claim."""
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in (w for w in GRAPH.get(v, ()) if (v, w) not in EXCEPTIONS):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not cycles, f"modules that import each other (directly or round a loop): {cycles}"


@pytest.mark.parametrize("module", ["course_lib.diffusion", "course_lib.networks"])
def test_the_two_pillars_do_not_know_each_other(module):
    other = {"course_lib.diffusion": "networks", "course_lib.networks": "diffusion"}[module]
    hits = [(a, b) for a, edges in GRAPH.items() if a.startswith(module + ".") for b in edges
            if role(b) == other]
    assert not hits, hits


def test_the_listed_exceptions_are_the_only_loop():
    """Every import that closes a loop back to the registry is a listed exception (none hides elsewhere)."""
    into_registry = {a for a, edges in GRAPH.items() if "course_lib.registry" in edges and a != "course_lib.__main__"
                     and not a.startswith("course_lib.course.")}
    assert into_registry <= {a for a, b in EXCEPTIONS if b == "course_lib.registry"}, into_registry
