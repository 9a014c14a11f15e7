"""The OpenMP wait policy chosen at start-up from the machine's load (noprop/runtime.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from noprop import runtime


def test_a_loaded_machine_gets_passive_waiting_and_fewer_threads(monkeypatch) -> None:
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 2)
    env: dict[str, str] = {}
    chosen = runtime.apply_omp_defaults(env, torch_loaded=False, busy=lambda: 1.0)
    assert chosen == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    assert env == {**chosen, runtime.AUTO_KEY: "OMP_WAIT_POLICY,OMP_NUM_THREADS"}
    assert runtime.STARTUP["other_busy_cores"] == 1.0


def test_a_users_thread_count_is_kept_under_load(monkeypatch) -> None:
    monkeypatch.setattr(runtime.os, "cpu_count", lambda: 4)
    env = {"OMP_NUM_THREADS": "3"}
    assert runtime.apply_omp_defaults(env, torch_loaded=False, busy=lambda: 1.2) == {
        "OMP_WAIT_POLICY": "PASSIVE"
    }
    assert env["OMP_NUM_THREADS"] == "3"


@pytest.mark.parametrize("load", [0.0, 0.3, None])
def test_a_quiet_machine_keeps_the_default(load: float | None) -> None:
    env: dict[str, str] = {}
    assert runtime.apply_omp_defaults(env, torch_loaded=False, busy=lambda: load) == {}
    assert env == {}


@pytest.mark.parametrize(
    "env",
    [
        {"OMP_WAIT_POLICY": "ACTIVE"},
        {"GOMP_SPINCOUNT": "10000"},
        {runtime.OFF_KEY: "1"},
    ],
)
def test_the_users_environment_wins(env: dict[str, str]) -> None:
    before = dict(env)
    assert runtime.apply_omp_defaults(env, torch_loaded=False, busy=lambda: 2.0) == {}
    assert env == before


def test_nothing_changes_once_torch_is_loaded() -> None:
    env: dict[str, str] = {}
    assert runtime.apply_omp_defaults(env, torch_loaded=True, busy=lambda: 2.0) == {}
    assert env == {}


def test_a_child_decides_again_from_its_own_load() -> None:
    """A value set by a parent noprop (marked in NOPROP_AUTO_OMP) is not the user's choice."""
    env = {
        "OMP_WAIT_POLICY": "PASSIVE",
        "OMP_NUM_THREADS": "1",
        runtime.AUTO_KEY: "OMP_WAIT_POLICY,OMP_NUM_THREADS",
    }
    assert runtime.apply_omp_defaults(env, torch_loaded=False, busy=lambda: 0.0) == {}
    assert env == {}


def test_other_busy_cores_subtracts_this_process() -> None:
    """4 busy seconds over 1 s of wall time, 1 of them ours → 3 other cores."""
    hz = os.sysconf("SC_CLK_TCK")
    ticks = iter([0, 4 * hz])
    own = iter([10.0, 11.0])
    clock = iter([0.0, 1.0])
    busy = runtime.other_busy_cores(
        1.0, ticks=lambda: next(ticks), own=lambda: next(own), sleep=lambda s: None,
        clock=lambda: next(clock),
    )  # fmt: skip
    assert busy == pytest.approx(3.0)
    assert runtime.other_busy_cores(ticks=lambda: None) is None


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="Linux only")
def test_a_busy_loop_is_seen_as_load() -> None:
    """The real measurement: one busy process is about one other busy core."""
    loop = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        runtime.other_busy_cores(0.2)  # let it start
        assert runtime.other_busy_cores(0.5) >= runtime.BUSY_CORES
    finally:
        loop.kill()
        loop.wait()


def test_import_noprop_sets_the_policy_before_torch() -> None:
    """In a fresh interpreter: noprop chose (or left) the policy and torch was loaded after it."""
    code = (
        "import os, sys; import noprop; from noprop import runtime; "
        "print(runtime.STARTUP['decided_by']); print(os.environ.get('OMP_WAIT_POLICY'))"
    )
    env = {k: v for k, v in os.environ.items() if k not in (*runtime.USER_KEYS, runtime.AUTO_KEY)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    decided, policy = out.stdout.split("\n")[:2]
    assert decided == "load at start-up"
    assert policy in ("PASSIVE", "None")
