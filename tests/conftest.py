"""Test-session settings.

OpenMP threads spin while waiting by default; when a test spawns training subprocesses (kill/resume,
torchrun) on a 2-core machine, spinning threads of one process starve the others (measured: 10x slower
steps). Passive waiting is set before torch is imported anywhere, and inherited by subprocesses.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
