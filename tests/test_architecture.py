"""The package's import graph against the layers written down in docs/architecture.md: every module in a layer,
no import pointing up a layer, no cycle. Imports inside functions count, and importing ``a.b.c`` counts as
importing the packages ``a`` and ``a.b`` too (Python runs their ``__init__``)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mobilevlm_export"
DOC = ROOT / "docs" / "architecture.md"


def layers() -> dict[str, tuple[int, str]]:
    """``{module prefix: (layer number, layer name)}`` from the doc's fenced ``layers`` block."""
    block = re.search(r"```layers\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"{DOC}: no ```layers block"
    table = {}
    for line in block.group(1).splitlines():
        m = re.fullmatch(r"(\d+) (\w+):\s+(.*)", line.strip())
        assert m, f"{DOC}: cannot read the layer line {line!r}"
        for prefix in m.group(3).split():
            assert prefix not in table, f"{DOC}: {prefix} is in two layers"
            table[prefix] = (int(m.group(1)), m.group(2))
    return table


def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name relative to the package (``__init__`` for the package root)."""
    out = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT / PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def layer_of(module: str, table: dict) -> tuple[int, str] | None:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in table:
            return table[".".join(parts[:n])]
    return None


def imports(module: str, path: Path, known: dict) -> list[tuple[str, int, bool]]:
    """(imported module, line, inside a function) for every import of a package module in ``path``."""
    tree = ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    found = []

    def add(name: str, line: int, local: bool) -> None:
        rel = name.removeprefix(PACKAGE).lstrip(".") or "__init__"
        if rel not in known:
            return
        found.append((rel, line, local))
        parts = rel.split(".")  # the packages above it run first
        own = module.split(".") if is_package else module.split(".")[:-1]
        for n in range(1, len(parts)):
            parent = ".".join(parts[:n])
            if parent in known and own[:n] != parts[:n]:
                found.append((parent, line, local))

    def visit(node, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        add(alias.name, child.lineno, inside)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: resolve against this module's package
                    anchor = (module.split(".") if is_package else module.split(".")[:-1])
                    anchor = anchor[:len(anchor) - child.level + 1]
                    base = ".".join([PACKAGE, *anchor, *([base] if base else [])])
                if base.split(".")[0] != PACKAGE:
                    continue
                for alias in child.names:
                    sub = f"{base}.{alias.name}"
                    add(sub if sub.removeprefix(PACKAGE).lstrip(".") in known else base, child.lineno, inside)
            visit(child, inside)

    visit(tree, False)
    return found


@pytest.fixture(scope="module")
def graph():
    known = modules()
    return known, {m: imports(m, p, known) for m, p in known.items()}


def test_every_module_has_a_layer(graph):
    known, _ = graph
    table = layers()
    missing = [m for m in known if layer_of(m, table) is None]
    assert not missing, f"modules in no layer of {DOC.name}: {missing}"
    unused = [p for p in table if not any(m == p or m.startswith(p + ".") for m in known)]
    assert not unused, f"{DOC.name} names modules that do not exist: {unused}"


def test_no_import_points_up_a_layer(graph):
    known, edges = graph
    table = layers()
    up = []
    for mod, found in edges.items():
        here = layer_of(mod, table)
        for dep, line, local in sorted(set(found)):
            there = layer_of(dep, table)
            if not edges[dep] and known[dep].name == "__init__.py":
                continue  # a package that imports nothing: running its __init__ depends on nothing
            if there[0] > here[0]:
                up.append(f"{known[mod].relative_to(ROOT)}:{line} ({here[1]}) imports {dep} ({there[1]})"
                          f"{' inside a function' if local else ''}")
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_no_import_cycle(graph):
    known, edges = graph
    adjacency = {m: sorted({d for d, _, _ in found if d != m}) for m, found in edges.items()}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v: str) -> None:  # Tarjan's strongly connected components (iterative enough for ~100 nodes)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in adjacency[v]:
            if w not in index:
                strongconnect(w)
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
                cycles.append(sorted(component))

    for v in adjacency:
        if v not in index:
            strongconnect(v)
    detail = []
    for comp in cycles:
        detail += [f"  {known[m].relative_to(ROOT)}:{line} imports {d}" for m in comp
                   for d, line, _ in sorted(set(edges[m])) if d in comp and d != m]
    assert not cycles, "import cycles:\n" + "\n".join(detail)


def test_the_checker_sees_what_it_must(tmp_path):
    """The walker itself: a function-local import, a parent package and ``from PACKAGE.pkg import module`` count."""
    known = {"__init__": None, "a": None, "a.b": None, "c": None}
    src = tmp_path / "c.py"
    src.write_text(f"from {PACKAGE}.a import b\n\ndef f():\n    import {PACKAGE}.c\n    from {PACKAGE} import a\n")
    found = {(d, local) for d, _, local in imports("c", src, known)}
    assert found == {("a.b", False), ("a", False), ("c", True), ("a", True)}
    assert layer_of("runtime.artifacts", layers()) != layer_of("runtime.golden_reader", layers())


def test_no_private_name_crosses_modules(graph):
    """A name starting with ``_`` is its module's own: no other module of the package imports it."""
    known, _ = graph
    crossing = []
    for path in known.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == PACKAGE:
                crossing += [f"{path.relative_to(ROOT)}:{node.lineno} imports {node.module}.{a.name}"
                             for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    assert not crossing, "private names imported across modules:\n" + "\n".join(crossing)
