"""The package's import graph is acyclic and layered (issue 10); the library and the lab apart (issue 29).

Every ``import``/``from ... import`` in ``src/noprop`` is an edge — module-level and function-local
alike (imports under ``if TYPE_CHECKING:`` are for annotations only and never run, so they are not).
The test fails on a cycle between modules, on a module importing a layer above its own, and on a
function-local import of the package's own modules without a comment saying why it is local.

Issue 29: the library (``src/noprop``) imports nothing from the lab (``src/noprop_lab``) — no import
statement anywhere, not even under ``TYPE_CHECKING`` or in a function, and no ``"noprop_lab…"`` string
an import could be built from; the lab imports the library's public API only (:data:`PUBLIC`); a
task's selection evaluator is a library function that a run of another task never loads.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "noprop"
LAB = SRC.parent / "noprop_lab"

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
    ("math", ("schedules", "solvers")),
    ("models", ("models",)),
    ("data", ("data",)),
    ("tasks", ("tasks",)),
    ("methods", ("methods",)),
    ("training", ("training",)),
    ("config", ("config", "flags", "presets", "build", "rundir")),
    ("parallel", ("parallel",)),
    ("runs", ("runs",)),
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


# ------------------------------------------------------------------------ the library and the lab


def lab_references(source: str) -> list[str]:
    """Every place ``source`` names the lab: ``import noprop_lab…``, ``from noprop_lab… import``
    (anywhere: module level, functions, ``TYPE_CHECKING``) and a string constant ``"noprop_lab…"``
    (what ``importlib.import_module`` or an evaluator reference would be built from)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == "noprop_lab"]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] == "noprop_lab":
                found.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.split(".")[0].split(":")[0] == "noprop_lab":
                found.append(node.value)
    return found


def library_references_to_the_lab(root: Path) -> list[str]:
    return [f"{path.relative_to(root.parent)}: {name}"
            for path in sorted(root.rglob("*.py")) for name in lab_references(path.read_text())]  # fmt: skip


def test_the_library_imports_nothing_from_the_lab():
    bad = library_references_to_the_lab(SRC)
    assert not bad, "the library must not import the lab (issue 29):\n" + "\n".join(bad)


PLANTED = [
    "import noprop_lab\n",
    "import noprop_lab.plots as p\n",
    "from noprop_lab.bench import efficiency\n",
    "def f():\n    from noprop_lab.commands import add_commands  # local\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from noprop_lab import plots\n",
    "import importlib\nimportlib.import_module('noprop_lab.bench.lm')\n",
    "EVALUATOR = 'noprop_lab.bench.lm.readout:fair'\n",
]


@pytest.mark.parametrize("source", PLANTED)
def test_the_checker_catches_a_planted_import_of_the_lab(source, tmp_path):
    """Control: a planted reference to the lab, in a copy of the library's tree, fails the check;
    the unplanted copy and look-alike names (``noprop``, ``noprop_labels``, prose) pass."""
    tree = tmp_path / "noprop"
    (tree / "runs").mkdir(parents=True)
    (tree / "__init__.py").write_text("from .runs import train\n")
    (tree / "runs" / "__init__.py").write_text(
        '"""Mentions noprop_lab in prose."""\nimport noprop\nimport noprop_labels\n'
    )
    assert library_references_to_the_lab(tree) == []
    (tree / "runs" / "train.py").write_text(source)
    assert library_references_to_the_lab(tree), source


#: the library's public API: ``noprop``'s ``__all__`` and the ``__all__`` of these documented
#: modules (``noprop``'s docstring lists them); the lab may import these names and nothing else
PUBLIC = (
    "noprop",
    "noprop.arguments",
    "noprop.data",
    "noprop.methods",
    "noprop.models",
    "noprop.parallel",
    "noprop.runs",
    "noprop.runs.readouts",
    "noprop.tasks",
    "noprop.training",
)


def non_public_imports(source: str, public: dict[str, set[str]]) -> list[str]:
    """The imports of the library in ``source`` that are not ``from M import NAME`` with M in
    ``public`` and NAME in its ``__all__`` (relative imports stay inside the lab and pass)."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            bad += [f"import {a.name}" for a in node.names if a.name.split(".")[0] == "noprop"]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] != "noprop":
                continue
            names = public.get(node.module)
            bad += [f"from {node.module} import {a.name}" for a in node.names
                    if names is None or a.name not in names]  # fmt: skip
    return bad


def public_api() -> dict[str, set[str]]:
    import importlib

    return {m: set(importlib.import_module(m).__all__) for m in PUBLIC}


def test_the_lab_uses_the_library_s_public_api_only():
    public = public_api()
    bad = [f"{path.relative_to(LAB.parent)}: {imp}"
           for path in sorted(LAB.rglob("*.py")) for imp in non_public_imports(path.read_text(), public)]  # fmt: skip
    assert not bad, "the lab imports the library's public API only (issue 29):\n" + "\n".join(bad)


def test_the_public_api_checker_catches_a_private_import():
    public = public_api()
    assert (
        non_public_imports("from noprop import RunDir, train\nfrom . import plots\n", public) == []
    )
    for source in (
        "from noprop.runs.train import build_for_data\n",  # a module the API does not list
        "from noprop.runs import _to_device\n",  # a listed module, a name outside its __all__
        "import noprop.runs\n",
        "def f():\n    from noprop.bench import grid\n",
    ):
        assert non_public_imports(source, public), source


def test_a_task_s_evaluator_is_a_library_function():
    """The text task's selection evaluator (issue 29): named by the task, resolved in the library."""
    from noprop.tasks import TASKS

    for task_cls in TASKS.values():
        if task_cls.evaluator is not None:
            assert task_cls.evaluator.split(".")[0] == "noprop", task_cls.evaluator
            assert callable(task_cls.load_evaluator())


def test_an_image_run_loads_neither_the_text_read_outs_nor_the_lab(tmp_path):
    """A digits run trains without importing :mod:`noprop.runs.readouts`, the selection evaluator
    of text runs (before issue 29 every run imported it), or anything of the lab."""
    import subprocess
    import sys

    code = (
        "import sys, noprop\n"
        "cfg = noprop.make_config(method='dt', dataset='digits', max_train_samples=200, block='mlp',"
        " T=2, epochs=1, seed=3)\n"
        f"noprop.train(cfg, {str(tmp_path / 'run')!r}, progress=False)\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('noprop_lab', 'noprop.runs.readouts',"
        " 'noprop.runs.selection')))\n"
        "print('LOADED', loaded)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "LOADED []" in out.stdout, out.stdout
