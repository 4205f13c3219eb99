"""The code's layout (docs/architecture.md): small modules, no import cycles, domains in order.

Read from the source with ``ast`` — every import counts, the ones inside functions too (a
late import that closes a cycle is still a cycle); only ``if TYPE_CHECKING:`` blocks are
left out, they never run.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("mrifoundry", "catalog", "flows", "models", "tasks", "bench")
#: folders installed as ``mrifoundry.<folder>`` (setup.py): imported only under that name
MAPPED = ("catalog", "flows", "models", "tasks", "deploy")
MAX_LINES = 400
#: tasks/ domains in dependency order: each may import only those before it
DOMAINS = ("mrifoundry.tasks.curation", "mrifoundry.tasks.ingest", "mrifoundry.tasks.data",
           "mrifoundry.tasks.pretraining", "mrifoundry.tasks.evaluation")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            rel = path.relative_to(REPO).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            out[".".join((("mrifoundry",) if pkg in MAPPED else ()) + parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports (``from a.b import c`` counts a.b.c when c is a module)."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = name.split(".")[: len(name.split(".")) - child.level + (path.name == "__init__.py")]
                    base = ".".join(pkg + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in found if m in modules and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def test_no_module_is_over_the_size_limit():
    big = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines: {big}"


def test_no_import_cycles(graph):
    """Depth-first search for a back edge; the message names the cycle."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            # importing a package's submodule runs the package's __init__ first: not a cycle through it
            if m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := dfs(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := dfs(m)):
            pytest.fail("import cycle: " + " → ".join(cycle))


def test_domains_import_only_earlier_domains(graph):
    def domain(m: str) -> int | None:
        return next((i for i, d in enumerate(DOMAINS) if m == d or m.startswith(d + ".")), None)

    wrong = sorted((m, n) for m, deps in graph.items() for n in deps
                   if domain(m) is not None and domain(n) is not None and domain(n) > domain(m))
    assert not wrong, f"a domain imports a later one: {wrong}"


#: the layers, bottom up: mrifoundry's core modules (0) → catalog → models → tasks → flows; bench is on top
LAYERS = ("mrifoundry.catalog", "mrifoundry.models", "mrifoundry.tasks", "mrifoundry.flows")


def _layer(m: str) -> int | None:
    if m == "bench" or m.startswith("bench."):
        return None
    return next((i for i, top in enumerate(LAYERS, 1) if m == top or m.startswith(top + ".")), 0)


def _upward(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((m, n) for m, deps in graph.items() for n in deps
                  if _layer(m) is not None and _layer(n) is not None and _layer(n) > _layer(m))


def test_layers_import_only_downward(graph):
    """Core code never imports catalog, catalog never models …: the sample generator and the vendor
    harness that need the pipeline live outside core (mrifoundry/sample imports nothing above; the
    vendor check is in bench/)."""
    assert not _upward(graph), f"imports that point up a layer: {_upward(graph)}"


def test_core_never_imports_the_sample_generator(graph):
    """mrifoundry/sample makes test and demo data: core code does not depend on it, and it needs
    nothing above core (tasks and flows may call it)."""
    def core(m: str) -> bool:
        return _layer(m) == 0 and not m.startswith("mrifoundry.sample") and not m.startswith("bench")
    into = sorted((m, n) for m, deps in graph.items() if core(m) for n in deps if n.startswith("mrifoundry.sample"))
    out = sorted((m, n) for m, deps in graph.items() if m.startswith("mrifoundry.sample") for n in deps if _layer(n))
    assert not into and not out, (into, out)


def test_plain_runners_do_not_import_prefect():
    """tasks/ holds the plain runners and their stages: Prefect is imported only in flows/."""
    bad = []
    for path in sorted((REPO / "tasks").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            bad += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("prefect", "prefect_dask")]
    assert not bad, bad


def test_the_layer_check_sees_a_planted_upward_import(graph):
    planted = {**graph, "mrifoundry.settings": graph["mrifoundry.settings"] | {"mrifoundry.tasks.curation.stages"}}
    assert _upward(planted) == [("mrifoundry.settings", "mrifoundry.tasks.curation.stages")]


def test_the_checker_sees_a_cycle_and_a_late_import(tmp_path):
    """The graph reader on a made-up pair: a late import inside a function still counts."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("import b\n")
    b.write_text("def f():\n    from a import x\n")
    modules = {"a": a, "b": b, "a.x": a}
    assert _imports(a, "a", modules) == {"b"} and _imports(b, "b", modules) == {"a", "a.x"}


def _bare_imports(path: Path) -> list[str]:
    """``import tasks…`` / ``from catalog… import`` lines: the folders exist only as mrifoundry.*."""
    bad = []
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
        bad += [n for n in names if n.split(".")[0] in MAPPED]
    return bad


def test_no_bare_top_level_imports():
    """Every module of the project, its tests and benchmarks imports ``mrifoundry.tasks``, never
    ``tasks`` (installed, only ``mrifoundry`` exists: a bare import would fail or load a module twice)."""
    files = [p for d in (*PACKAGES, "tests") for p in sorted((REPO / d).rglob("*.py"))]
    bad = {str(p.relative_to(REPO)): names for p in files if (names := _bare_imports(p))}
    assert not bad, f"bare imports of {MAPPED}: {bad}"


def test_the_bare_import_check_sees_one(tmp_path):
    planted = tmp_path / "m.py"
    planted.write_text("def f():\n    from tasks.curation import pipeline\n")
    assert _bare_imports(planted) == ["tasks.curation"]

