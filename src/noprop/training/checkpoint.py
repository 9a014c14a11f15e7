"""Crash-safe, code-free checkpoints.

Files are written with :func:`noprop.atomic.atomic_write`, so the previous good checkpoint survives
until the new one is complete. Checkpoints hold only tensors, numbers, strings, lists and dicts, and are loaded with
``torch.load(weights_only=True)``: a file carrying arbitrary pickled objects is refused, never executed.
"""

from __future__ import annotations

import io
import pickle
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from ..atomic import atomic_write
from ..errors import CheckpointError

FORMAT_VERSION = 1


def save_checkpoint(
    path: Path, payload: dict[str, Any], *, mid_write: Callable[[], None] | None = None
) -> None:
    """Atomically save ``payload`` (plus the format version) with ``torch.save``.

    ``mid_write`` (a test hook) is called when half of the temporary file has been written.
    """
    payload = {"format_version": FORMAT_VERSION, **payload}
    buf = io.BytesIO()
    torch.save(payload, buf)

    def write(f: IO[bytes]) -> None:
        data = buf.getbuffer()
        if mid_write is None:
            f.write(data)
            return
        half = len(data) // 2
        f.write(data[:half])
        f.flush()
        mid_write()
        f.write(data[half:])

    atomic_write(path, write)


def _unpickling_detail(e: BaseException) -> str:
    """The informative line of torch's multi-line weights-only error (what was refused)."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    boiler = ("Weights only load failed", "Check the documentation", "Please file an issue")
    useful = [ln for ln in lines if not ln.startswith(boiler)]
    return ((useful or lines or [type(e).__name__])[0])[:160]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint without executing code from it; one-line CheckpointError on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": a 2nd stderr line
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refusing to load {path}: it holds pickled objects other than tensors, numbers, "
            f"strings, lists and dicts ({_unpickling_detail(e)}); nothing in it was executed"
        ) from None
    except Exception as e:  # truncated zip, garbage bytes, ...
        detail = " ".join(str(e).split()).split(". ")[0][:200]  # torch appends long advice
        raise CheckpointError(
            f"cannot read checkpoint {path} (truncated or corrupt?): {type(e).__name__}: {detail}"
        ) from None
    if not isinstance(payload, dict) or "format_version" not in payload:
        raise CheckpointError(f"{path} is not a noprop checkpoint (no format_version)")
    if payload["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload['format_version']}, this noprop reads {FORMAT_VERSION}"
        )
    return payload
