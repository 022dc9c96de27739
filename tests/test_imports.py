"""Static import-graph checks for ``pipeline/`` (issue 15: no import circles).

In: the ``.py`` files under ``pipeline/`` (parsed with ``ast``, never imported).
Out: test failures naming each import cycle or forbidden import found.

Rules of the graph:

* Every ``.py`` file is one node; ``pipeline/x/__init__.py`` is the node ``pipeline.x``.
* Every ``import``/``from ... import`` anywhere in a file counts (module level, inside
  functions, inside ``try``), except those under ``if TYPE_CHECKING:`` (not runtime).
  Relative imports are resolved against the importing module's package.
* ``import pipeline.x.y`` is an edge to ``pipeline.x.y``; ``from pipeline.x import y`` is an
  edge to ``pipeline.x.y`` when that is a module file, else to ``pipeline.x``.
* A package ``__init__`` counts as an ordinary node with its own imports, but importing a
  submodule ``pipeline.x.y`` is NOT an edge to its parent ``pipeline.x``: Python's
  initialising of the enclosing package is not an import the module chose, and an
  ``__init__`` that re-exports its own submodules would otherwise make every package cyclic.
  So ``pipeline.x`` -> ``pipeline.x.y`` -> ``pipeline.x`` is a cycle only when ``y`` itself
  imports ``pipeline.x`` (or a name from it that is not a submodule).

Checked: (a) no cycle between modules, and none between the top-level subpackages either
(each module collapsed to `pipeline.<first part>`: `pipeline.evaluate.tasks` ->
`pipeline.evaluate`, so evaluate -> decontaminate -> evaluate is a cycle even when the modules
involved differ) (strongly connected components, Tarjan);
(b) nothing in ``pipeline`` imports ``prefect`` or ``flows``; (c) nothing under
``pipeline/model/`` imports ``pipeline.train`` or ``pipeline.finetune``; (d) nothing under
``pipeline/train/`` imports ``pipeline.finetune``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Yield every Import/ImportFrom node, skipping ``if TYPE_CHECKING:`` bodies."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def raw_imports(package_dir: Path) -> dict[str, set[str]]:
    """Module name -> every absolute dotted name it imports (any package)."""
    base = package_dir.parent
    out: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        name = _module_name(path, base)
        is_pkg = path.name == "__init__.py"
        package = name if is_pkg else name.rpartition(".")[0]
        found: set[str] = set()
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
                continue
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from X import n` is recorded as `X.n`; resolution maps it to the module `X.n`
            # when that is a file, else to `X` (the longest prefix that is a module).
            found.update(f"{target}.{alias.name}" for alias in node.names)
        out[name] = found
    return out


def import_graph(package_dir: Path) -> dict[str, set[str]]:
    """Module -> modules of the same top package it imports (edges resolved as documented)."""
    top = package_dir.name
    raw = raw_imports(package_dir)
    modules = set(raw)
    graph: dict[str, set[str]] = {}
    for name, targets in raw.items():
        edges = set()
        for target in targets:
            if target != top and not target.startswith(top + "."):
                continue
            # Longest prefix that is a module: `pipeline.x.y.Name` -> `pipeline.x.y`.
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts:
                edges.add(".".join(parts))
        edges.discard(name)
        graph[name] = edges
    return graph


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Collapse modules to their top-level subpackage (`pipeline.evaluate.tasks` -> `pipeline.evaluate`)."""

    def unit(name: str) -> str:
        return ".".join(name.split(".")[:2])

    out: dict[str, set[str]] = {}
    for name, targets in graph.items():
        out.setdefault(unit(name), set()).update(unit(t) for t in targets)
    for name, targets in out.items():
        targets.discard(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "cycle among " + ", ".join(component) + "\n    " + "\n    ".join(edges)


def test_pipeline_has_no_import_cycles():
    graph = import_graph(ROOT / "pipeline")
    found = cycles(graph)
    assert not found, "import cycles in pipeline/:\n" + "\n".join(describe(c, graph) for c in found)


def test_pipeline_subpackages_have_no_import_cycles():
    graph = package_graph(import_graph(ROOT / "pipeline"))
    found = cycles(graph)
    assert not found, "import cycles between subpackages of pipeline/:\n" + "\n".join(
        describe(c, graph) for c in found
    )


def _offending(raw, under: str, forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{mod} imports {target}"
        for mod, targets in raw.items()
        if mod == under or mod.startswith(under + ".")
        for target in targets
        if any(target == f or target.startswith(f + ".") for f in forbidden)
    )


def test_pipeline_layering():
    raw = raw_imports(ROOT / "pipeline")
    bad = (
        _offending(raw, "pipeline", ("prefect", "flows"))
        + _offending(raw, "pipeline.model", ("pipeline.train", "pipeline.finetune"))
        + _offending(raw, "pipeline.train", ("pipeline.finetune",))
    )
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_checker_finds_a_planted_cycle_and_forbidden_import(tmp_path):
    pkg = tmp_path / "pipeline"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .a import thing\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from pipeline.b import g\n")
    (pkg / "b.py").write_text("from .sub import a\nimport prefect\n")
    (pkg / "c.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline import b\n"
    )
    graph = import_graph(pkg)
    assert graph["pipeline.sub"] == {"pipeline.sub.a"}
    assert graph["pipeline.b"] == {"pipeline.sub.a"}
    assert graph["pipeline.c"] == set()
    assert cycles(graph) == [["pipeline.b", "pipeline.sub.a"]]
    assert "pipeline.b -> pipeline.sub.a" in describe(cycles(graph)[0], graph)
    assert cycles(package_graph(graph)) == [["pipeline.b", "pipeline.sub"]]
    assert _offending(raw_imports(pkg), "pipeline", ("prefect",)) == ["pipeline.b imports prefect"]
