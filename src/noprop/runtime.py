"""Process-wide defaults that must be in place before torch starts its OpenMP runtime.

On a shared machine, OpenMP's default wait policy makes idle worker threads spin for a while before
sleeping. When another process holds one of the cores, the spinning thread of a 2-thread torch process
competes with it and the next parallel region waits for the descheduled thread: BENCHMARKS.md measured
DT training at 0.31× its quiet throughput with one busy competing process (fair share: 0.5×), 0.53×
with ``OMP_WAIT_POLICY=PASSIVE``. So noprop makes passive waiting the default, *before* torch is
imported (libgomp reads the variable when it is loaded): :func:`apply_omp_defaults` runs first thing in
``noprop/__init__.py``, and torchrun workers and benchmark subprocesses import noprop the same way.

A user's explicit environment always wins: nothing is changed when ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` is set (e.g. ``OMP_WAIT_POLICY=ACTIVE`` to get spinning back), or when torch was
imported before noprop (then the runtime has started and changing the variable would do nothing but
mislead). ``$NOPROP_NO_OMP_DEFAULTS=1`` turns the default off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping

OMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "NOPROP_NO_OMP_DEFAULTS")


def apply_omp_defaults(
    environ: MutableMapping[str, str] = os.environ, torch_loaded: bool | None = None
) -> dict[str, str]:
    """Set :data:`OMP_DEFAULTS` unless the user chose or torch is loaded; returns what was set."""
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    if torch_loaded or any(k in environ for k in USER_KEYS):
        return {}
    environ.update(OMP_DEFAULTS)
    return dict(OMP_DEFAULTS)
