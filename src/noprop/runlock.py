"""One writer per run directory: an advisory lock held by the operating system.

Every command that writes into a run directory (``train``, ``train --resume``, ``eval --chains`` /
``--steps``, ``bench reproduce``'s evaluation, ``export --overwrite`` on its ``--out``) holds
:func:`run_lock` while it writes. The lock is ``flock(2)`` on the file ``RUN/.noprop.lock``: the
kernel releases it when the holder exits, however it exits (``kill -9`` included), so a crash never
leaves a lock that blocks the next start — the file itself stays and means nothing on its own. The
holder writes its PID and command into the file, so that a refused process can name it.

[I] Where ``fcntl`` is missing (Windows) the lock is not taken; the docs say so. ``flock`` on
NFS is emulated with byte-range locks by Linux, which works across clients on NFSv4.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import NoPropError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

#: the lock file inside a run directory (ignored when a directory is checked for other files)
LOCK_FILE = ".noprop.lock"


class RunBusyError(NoPropError):
    """Another process holds the run directory's lock."""


def _holder(fd: int) -> str:
    """What the holder wrote into the lock file ("PID COMMAND"), or a placeholder."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").split("\n")[0].strip()
    except OSError:
        text = ""
    pid, _, what = text.partition(" ")
    if not pid.isdigit():
        return "another process"
    return f"process {pid}" + (f" ({what})" if what else "")


@contextlib.contextmanager
def run_lock(directory: str | Path, what: str) -> Iterator[None]:
    """Hold the lock of ``directory`` (which must exist) for the block, or raise RunBusyError.

    ``what`` names this command in the lock file (e.g. ``train``), for the message another process
    gets. Never waits: a second writer is refused at once, in one line."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    path = Path(directory) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(
                f"{directory} is in use by {_holder(fd)}: one process writes a run at a time; "
                "wait for it to end or stop it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {what}\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # the file outlives us: leave no stale PID in it
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
