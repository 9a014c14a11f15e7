"""Benchmarks run from ``noprop bench``: ``efficiency`` (:mod:`.efficiency`) and ``reproduce``
(the paper's Table 1 grid, :mod:`.reproduce`)."""
