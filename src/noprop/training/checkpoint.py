"""Crash-safe, code-free checkpoints.

Files are written to a temporary file in the same directory, flushed and fsynced, then atomically
renamed over the target (and the directory fsynced), so the previous good file survives until the new
one is complete. Checkpoints hold only tensors, numbers, strings, lists and dicts, and are loaded with
``torch.load(weights_only=True)``: a file carrying arbitrary pickled objects is refused, never executed.
"""

from __future__ import annotations

import io
import json
import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from ..errors import CheckpointError

FORMAT_VERSION = 1


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via ``write(fileobj)`` so that it is either the old or the complete new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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


def atomic_write_json(path: Path, obj: Any) -> None:
    data = (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically save ``payload`` (plus the format version) with ``torch.save``."""
    payload = {"format_version": FORMAT_VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)
    atomic_write(path, lambda f: f.write(buf.getbuffer()))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without executing code from it; one-line CheckpointError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it is not a plain-tensor checkpoint ({first[:160]})"
        ) from None
    except Exception as e:  # truncated zip, garbage bytes, ...
        raise CheckpointError(
            f"cannot read checkpoint {path}: {type(e).__name__}: {e}"[:300]
        ) from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path} is not a noprop checkpoint (no format_version)")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}, this noprop reads {FORMAT_VERSION}"
        )
    return payload
