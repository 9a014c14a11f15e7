"""Test-session settings.

OpenMP threads spin while waiting by default; when a test spawns training subprocesses (kill/resume,
torchrun) on a 2-core machine, spinning threads of one process starve the others (measured: 10x slower
steps). Subprocesses get passive waiting through the environment they inherit. This process keeps the
default (fast) policy: torch is imported first, so its OpenMP runtime has read the environment before
the variable is set (passive waiting made the in-process training tests 2.4x slower: DT on digits,
10 epochs, 8.4 s of training with the default policy, 19.9 s passive, AMD EPYC 2 cores, alone).
"""

import os

if "OMP_WAIT_POLICY" not in os.environ:
    import torch  # noqa: F401 (OpenMP starts here, with the default policy)

    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # for the subprocesses only

import functools  # noqa: E402
import http.server  # noqa: E402
import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

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
        from noprop.methods import METHODS
        from tests.test_conformance import CONFORMANCE_TASKS, TASK_KIND

        names = cls.method_names() if callable(cls.method_names) else cls.method_names

        def supports(m: str, t: str) -> bool:  # a method not registered yet (the toy): images
            return TASK_KIND[t] in getattr(METHODS.get(m), "tasks", ("classification",))

        cases = [(m, t) for m in names for t in CONFORMANCE_TASKS if supports(m, t)]
        metafunc.parametrize("case", cases, ids=[f"{m}-{t}" for m, t in cases])


# ------------------------------------------------- download tests (test_data, test_text_data)
@pytest.fixture
def isolated_download_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep tests away from the user's cache, mirrors and proxies."""
    from noprop.data import datasets as ds
    from noprop.data import download as dl

    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "default-cache"))
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """Serve a fresh directory over HTTP on 127.0.0.1; yield ``(directory, base_url)``."""
    root = tmp_path / "served"
    root.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root))
    )
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
