"""Atomic file writes: a reader (or a crash) sees either the old file or the complete new one.

Files are written to a temporary sibling ``.NAME.tmp-PID``, flushed and fsynced, then renamed over the
target with ``os.replace`` and the directory is fsynced. A process killed at any point leaves the old
file or the new one (plus, at worst, a stale temporary sibling that ``RunDir`` removes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

TMP_MARKER = ".tmp-"


def temp_path(path: Path) -> Path:
    """The temporary sibling :func:`atomic_write` writes first (``.NAME.tmp-PID``)."""
    return path.with_name(f".{path.name}{TMP_MARKER}{os.getpid()}")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via ``write(fileobj)`` so that it is either the old or the complete new file."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    data = text.encode()
    atomic_write(path, lambda f: f.write(data))
