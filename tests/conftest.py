"""Test-session settings.

OpenMP threads spin while waiting by default; when a test spawns training subprocesses (kill/resume,
torchrun) on a 2-core machine, spinning threads of one process starve the others (measured: 10x slower
steps). Passive waiting is set before torch is imported anywhere, and inherited by subprocesses.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402 (after the environment is set)


@pytest.fixture
def one_thread():
    """torch on one thread for the test (bit-exact comparisons with numbers recorded that way)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_generate_tests(metafunc):
    """Conformance classes (tests/test_conformance.py) run over their ``method_names`` × tasks."""
    cls = metafunc.cls
    if cls is not None and hasattr(cls, "method_names") and "case" in metafunc.fixturenames:
        from tests.test_conformance import CONFORMANCE_TASKS

        names = cls.method_names() if callable(cls.method_names) else cls.method_names
        cases = [(m, t) for m in names for t in CONFORMANCE_TASKS]
        metafunc.parametrize("case", cases, ids=[f"{m}-{t}" for m, t in cases])
