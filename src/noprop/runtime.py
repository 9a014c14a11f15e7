"""The OpenMP wait policy, chosen at start-up from the machine's load, before torch starts OpenMP.

Why: libgomp's default wait policy lets an idle worker thread spin before it sleeps. When another
process holds one of the cores, a 2-thread torch process then loses most of its speed — its spinning
thread competes for the busy core and every parallel region waits for the descheduled one: DT training
kept 0.21–0.30 of its quiet throughput with one competing busy process (the fair share is 0.5).
``OMP_WAIT_POLICY=PASSIVE`` keeps 0.72–0.82 under load but costs ~35% of the quiet throughput itself
(BENCHMARKS.md, "A busy machine"). Neither setting is right for both, so noprop chooses per process:

* at ``import noprop`` (first thing in ``noprop/__init__.py``, before torch is imported; libgomp reads
  the variable when it loads), :func:`other_busy_cores` samples ``/proc/stat`` for
  :data:`SAMPLE_SECONDS` while this process sleeps, and subtracts this process's own CPU time;
* if other processes keep at least :data:`BUSY_CORES` cores busy, ``OMP_WAIT_POLICY=PASSIVE`` is set,
  and ``OMP_NUM_THREADS`` to the cores left free (at least 1) unless the user set it; on a quiet
  machine nothing is set and the default (fast) policy and thread count stay. Measured with one
  competing busy process on 2 cores: DT kept 0.43 of its quiet throughput with passive waiting on 2
  threads, 0.57 with passive waiting on 1 thread (BENCHMARKS.md).

A user's explicit environment always wins: nothing is changed when ``OMP_WAIT_POLICY`` or
``GOMP_SPINCOUNT`` is set by the user, when ``NOPROP_NO_OMP_DEFAULTS=1``, or when torch was imported
before noprop (its runtime has started; changing the variable then would only mislead). A value noprop
set itself is marked in ``NOPROP_AUTO_OMP`` so child processes (torchrun workers, benchmark workers,
``lm compare``'s training runs) decide again from the load they see when they start.

The thread cap changes the numbers, not only the speed (floating-point sums are split differently:
the README's digits quickstart gives another test accuracy on 1 thread than on 2), so it is said:
:func:`thread_cap_note` is the one line ``noprop train`` (and ``eval``, ``predict``) print on stderr
when the cap is in force, and a run records its thread count (``--threads``, kept on ``--resume``).

Limits: the decision is made once per process. A machine that becomes busy after a run started keeps
the fast policy (and the slowdown); steal time (other virtual machines on the host) is not counted as
load, since passive waiting does not help against it. Off Linux nothing is measured or set.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time
from collections.abc import Callable, MutableMapping

#: seconds of /proc/stat sampling at start-up (this process sleeps meanwhile)
SAMPLE_SECONDS = 0.1
#: other processes keeping at least this many cores busy make the machine "loaded"
BUSY_CORES = 0.5
USER_KEYS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
OFF_KEY = "NOPROP_NO_OMP_DEFAULTS"
AUTO_KEY = "NOPROP_AUTO_OMP"
#: what the start-up check measured and chose (benchmarks record it)
STARTUP: dict[str, object] = {}


def _busy_ticks() -> int | None:
    """Busy jiffies of all CPUs since boot: user + nice + system + irq + softirq (no idle, iowait,
    steal or guest, which is already in user)."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != b"cpu" or len(fields) < 8:
        return None
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return user + nice + system + irq + softirq


def _own_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load_meter(
    *,
    ticks: Callable[[], int | None] = _busy_ticks,
    own: Callable[[], float] = _own_seconds,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], float | None]:
    """Start measuring; the returned function gives the cores kept busy by *other* processes since
    then (the machine's busy time minus this process's CPU time, per second of wall time; None when
    /proc/stat is unreadable). The trainer records it per epoch, so every timing says its load."""
    t0, own0, c0 = ticks(), own(), clock()

    def read() -> float | None:
        t1, own1, c1 = ticks(), own(), clock()
        if t0 is None or t1 is None or c1 <= c0:
            return None
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        busy_seconds = (t1 - t0) / hz - (own1 - own0)
        return max(0.0, busy_seconds / (c1 - c0))

    return read


def other_busy_cores(
    seconds: float = SAMPLE_SECONDS,
    *,
    ticks: Callable[[], int | None] = _busy_ticks,
    own: Callable[[], float] = _own_seconds,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> float | None:
    """Cores kept busy by *other* processes over ``seconds`` (None when /proc/stat is unreadable)."""
    read = load_meter(ticks=ticks, own=own, clock=clock)
    sleep(seconds)
    return read()


def apply_omp_defaults(
    environ: MutableMapping[str, str] = os.environ,
    *,
    torch_loaded: bool | None = None,
    busy: Callable[[], float | None] = other_busy_cores,
) -> dict[str, str]:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` when the machine is loaded (module docstring); returns what
    was set. Records the measurement in :data:`STARTUP`."""
    if torch_loaded is None:
        torch_loaded = "torch" in sys.modules
    auto = environ.get(AUTO_KEY, "")
    if auto:  # set by a parent noprop process, not by the user: decide again
        for key in auto.split(","):
            environ.pop(key, None)
        environ.pop(AUTO_KEY, None)
    STARTUP.clear()
    if torch_loaded or environ.get(OFF_KEY) == "1" or any(k in environ for k in USER_KEYS):
        STARTUP.update(decided_by="user or torch already loaded", set={})
        return {}
    load = busy()
    chosen: dict[str, str] = {}
    if load is not None and load >= BUSY_CORES:
        chosen["OMP_WAIT_POLICY"] = "PASSIVE"
        # and no more threads than there are free cores: a thread on a core another process holds
        # makes every parallel region wait for it
        cores = os.cpu_count() or 1
        if "OMP_NUM_THREADS" not in environ and cores > 1:
            chosen["OMP_NUM_THREADS"] = str(max(1, cores - math.floor(load + 0.5)))
    environ.update(chosen)
    if chosen:
        environ[AUTO_KEY] = ",".join(chosen)
    STARTUP.update(decided_by="load at start-up", other_busy_cores=load, set=dict(chosen))
    return chosen


def thread_cap() -> tuple[int, float] | None:
    """(threads, cores other processes kept busy) when the start-up check capped ``OMP_NUM_THREADS``
    in this process; None otherwise (quiet machine, the user's environment, torch loaded first)."""
    chosen = STARTUP.get("set")
    if not isinstance(chosen, dict) or "OMP_NUM_THREADS" not in chosen:
        return None
    busy = STARTUP.get("other_busy_cores")
    return int(chosen["OMP_NUM_THREADS"]), float(busy) if isinstance(busy, int | float) else 0.0


def thread_cap_note(threads: int, *, recorded: bool = False) -> str | None:
    """The one line saying that the start-up cap is in force (None when it is not): how many torch
    threads, why, and how to override. ``threads``: the count the command runs with; ``recorded``:
    it is a resumed run's recorded count (which overrides the cap)."""
    cap = thread_cap()
    if cap is None:
        return None
    capped, busy = cap
    cores = os.cpu_count() or 1
    if recorded:
        if threads == capped:
            return None
        return (
            f"noprop: other jobs busy {busy:.1f} cores: keeping the run's recorded {threads} torch "
            f"thread{'s' if threads != 1 else ''} (--threads {capped} to override; results depend "
            "on the thread count)"
        )
    if threads != capped:  # set otherwise since start-up (torch.set_num_threads)
        return None
    return (
        f"noprop: other jobs busy {busy:.1f} cores: using {threads} torch "
        f"thread{'s' if threads != 1 else ''} (--threads {cores} to override; results depend on "
        "the thread count)"
    )
