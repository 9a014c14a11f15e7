"""The lab: experiments built on the ``noprop`` library, never inside it (issue 29).

The benchmarks (:mod:`noprop_lab.bench`: ``efficiency``, ``parallel``, the paper's Table 1 grid
``reproduce`` with time to accuracy), the language-model comparison with its read-outs and tuned lens
(:mod:`noprop_lab.bench.lm`) and the figures (:mod:`noprop_lab.plots`). The lab uses the library's
public API only (the names :mod:`noprop`'s docstring lists; ``tests/test_imports.py`` checks it) and
reaches users as ``noprop bench …``, ``noprop lm compare …`` and ``noprop plot …`` through the
``noprop.commands`` entry point (:func:`noprop_lab.commands.add_commands`). The library imports
nothing from here.
"""
