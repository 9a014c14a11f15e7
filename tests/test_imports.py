"""The package's import graph is acyclic and layered (issue 10).

Every ``import``/``from ... import`` in ``src/noprop`` is an edge — module-level and function-local
alike (imports under ``if TYPE_CHECKING:`` are for annotations only and never run, so they are not).
The test fails on a cycle between modules, on a module importing a layer above its own, and on a
function-local import of the package's own modules without a comment saying why it is local.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "noprop"

#: low → high; a module may import its own layer and the layers below it, never one above
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "base",
        (
            "errors",
            "arguments",
            "version",
            "device",
            "atomic",
            "runlock",
            "options",
            "runtime",
            "limits",
            "untrusted",
            "precision",
        ),
    ),
    ("math", ("schedules", "schedules_ct", "schedules_edm", "solvers")),
    ("models", ("models",)),
    ("data", ("data",)),
    ("tasks", ("tasks",)),
    ("methods", ("methods",)),
    ("training", ("training",)),
    ("config", ("config", "flags", "presets", "build", "rundir")),
    ("parallel", ("parallel",)),
    ("runs", ("runs",)),
    ("bench", ("bench", "plots")),
    ("cli", ("cli", "__main__", "__init__")),
]
LAYER_OF = {top: i for i, (_, tops) in enumerate(LAYERS) for top in tops}
MAX_LOCAL_IMPORTS = 15


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(name: str) -> bool:
    return (SRC.parent / name.replace(".", "/") / "__init__.py").is_file()


def resolve(current: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The noprop modules an import statement loads (a ``from P import m`` of a submodule → P.m)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "noprop"]
    if node.level:
        package = current if is_package(current) else current.rsplit(".", 1)[0]
        for _ in range(node.level - 1):
            package = package.rsplit(".", 1)[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module or ""
    if base.split(".")[0] != "noprop":
        return []
    out = []
    for alias in node.names:
        sub = f"{base}.{alias.name}"
        exists = (SRC.parent / (sub.replace(".", "/") + ".py")).is_file() or is_package(sub)
        out.append(sub if exists else base)
    return out


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def collect() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Edges module → modules, and the function-local imports (module, line, source line)."""
    edges: dict[str, set[str]] = {}
    local: list[tuple[str, int, str]] = []
    for path in sorted(SRC.rglob("*.py")):
        name = module_name(path)
        lines = path.read_text().splitlines()
        edges.setdefault(name, set())

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if _type_checking(child):
                    continue
                if isinstance(child, ast.Import | ast.ImportFrom):
                    targets = resolve(name, child)  # noqa: B023 (used immediately)
                    edges[name].update(t for t in targets if t != name)  # noqa: B023
                    if in_function and targets:
                        local.append((name, child.lineno, lines[child.lineno - 1]))  # noqa: B023
                inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                visit(child, inner)

        visit(ast.parse(path.read_text()), False)
    return edges, local


EDGES, LOCAL = collect()


def layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYER_OF[top]


def test_every_module_has_a_layer():
    missing = sorted({m.split(".")[1] for m in EDGES if "." in m} - set(LAYER_OF))
    assert not missing, f"give these top-level modules a layer in LAYERS: {missing}"


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for n in sorted(EDGES.get(m, ())):
            if state.get(n) == 1:
                cycle = stack[stack.index(n) :] + [n]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if n not in state:
                dfs(n)
        stack.pop()
        state[m] = 2

    for m in sorted(EDGES):
        if m not in state:
            dfs(m)


def test_no_layer_imports_a_higher_one():
    bad = [
        f"{m} ({LAYERS[layer(m)][0]}) imports {n} ({LAYERS[layer(n)][0]})"
        for m, targets in EDGES.items()
        for n in targets
        if layer(n) > layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_function_local_imports_are_few_and_explained():
    assert len(LOCAL) <= MAX_LOCAL_IMPORTS, "\n".join(f"{m}:{n}: {s.strip()}" for m, n, s in LOCAL)
    unexplained = [f"{m}:{n}: {s.strip()}" for m, n, s in LOCAL if "#" not in s]
    assert not unexplained, "a local import needs a comment saying why:\n" + "\n".join(unexplained)


def test_the_checker_catches_a_cycle_and_an_upward_import(tmp_path):
    """Control: the resolver sees relative, absolute and function-local imports."""
    tree = ast.parse("from ..methods import METHODS\ndef f():\n    from ..cli import main\n")
    found = [t for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
             for t in resolve("noprop.models.blocks", node)]  # fmt: skip
    assert found == ["noprop.methods", "noprop.cli"]
    assert layer("noprop.models.blocks") < layer(found[0]) < layer(found[1])


def test_every_required_dependency_is_imported():
    """No required dependency goes unused (pyproject.toml [project] dependencies)."""
    import re

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    project = tomllib.loads((SRC.parents[1] / "pyproject.toml").read_text())["project"]
    import_name = {"scikit-learn": "sklearn"}
    imported: set[str] = set()
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                imported.add(node.module.split(".")[0])
    for requirement in project["dependencies"]:
        dist = re.split(r"[<>=!~\[ ;]", requirement, maxsplit=1)[0]
        assert import_name.get(dist, dist) in imported, f"{dist} is required but never imported"
