"""A method is one file: outside ``noprop/methods/`` no module names a concrete method class.

Everything that runs inference does it through :meth:`noprop.methods.Method.chain` and the method's
own declarations (``readout_names``, ``prediction_kind``, ``stochastic``, ``fusable``,
``output_embeddings``); a module that tests ``isinstance(m, NoPropDT)`` would hold a second copy of
what the method's file says, which is what this test refuses. The registry line
(``noprop/methods/__init__.py``) and the public re-export (``noprop/__init__.py``) are the exceptions.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import noprop.methods as methods_pkg
from noprop.methods import ContinuousTimeMethod, Method

SRC = Path(__file__).resolve().parents[1] / "src"
ALLOWED = {SRC / "noprop" / "__init__.py"}


def concrete_method_classes() -> set[str]:
    """The names of every Method subclass defined in noprop.methods, bases excepted."""
    import pkgutil
    from importlib import import_module

    names = set()
    for info in pkgutil.iter_modules(methods_pkg.__path__):
        module = import_module(f"noprop.methods.{info.name}")
        for name, obj in vars(module).items():
            if (inspect.isclass(obj) and issubclass(obj, Method)
                    and obj not in (Method, ContinuousTimeMethod)):  # fmt: skip
                names.add(name)
    return names


def named_classes(path: Path, classes: set[str]) -> list[str]:
    """``file:line name`` for every identifier, attribute or import of ``path`` that is one of
    ``classes`` (docstrings and comments are prose, not code, and are not read)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        elif isinstance(node, ast.alias):
            name = node.name.rsplit(".", 1)[-1]
        else:
            continue
        if name in classes:
            hits.append(
                f"{path.relative_to(path.parents[2])}:{getattr(node, 'lineno', '?')} {name}"
            )
    return hits


def outside_methods() -> list[Path]:
    return [
        p
        for p in sorted(SRC.rglob("*.py"))
        if (SRC / "noprop" / "methods") not in p.parents and p not in ALLOWED
    ]


def test_the_concrete_classes_are_found():
    assert {"NoPropDT", "NoPropCT", "NoPropFM", "DiffusionBlocks", "Backprop", "Adjoint",
            "TransformerBackprop"} <= concrete_method_classes()  # fmt: skip


def test_no_module_outside_methods_names_a_concrete_method_class():
    classes = concrete_method_classes()
    hits = [h for p in outside_methods() for h in named_classes(p, classes)]
    assert not hits, "a concrete method class named outside noprop/methods/:\n" + "\n".join(hits)


def test_a_planted_isinstance_is_found(tmp_path):
    planted = tmp_path / "src" / "noprop" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text(
        '"""NoPropDT in a docstring is prose."""\n'
        "from noprop.methods import Method\n\n\n"
        "def f(m: Method) -> bool:\n"
        "    return isinstance(m, NoPropDT)  # noqa: F821\n"
    )
    assert named_classes(planted, concrete_method_classes()) == ["src/noprop/planted.py:6 NoPropDT"]


def test_train_help_groups_each_method_option_under_the_methods_that_take_it():
    """``noprop train --help``: one group per set of methods; each flag in it is a field of every
    listed method's options and of no other method's."""
    import dataclasses

    from noprop.cli import build_parser
    from noprop.methods import METHODS

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    groups = [g for g in train._action_groups if g.title.startswith("options of --method ")]
    assert len(groups) >= 5
    seen = set()
    for g in groups:
        names = g.title.removeprefix("options of --method ").split(", ")
        for action in g._group_actions:
            owners = {n for n, cls in METHODS.items()
                      if action.dest in {f.name for f in dataclasses.fields(cls.Config)}}  # fmt: skip
            assert owners == set(names), (action.dest, g.title)
            assert action.dest not in seen
            seen.add(action.dest)
    assert {"T", "eta", "inference_steps", "db_overlap", "adjoint_steps"} <= seen
