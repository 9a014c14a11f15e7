"""Reading files that someone else made: one error path, bounded sizes, headers checked first.

Every loader of an outside file (an export's safetensors and JSON, a run's config, predict's
inputs, a data set, a TOML config) turns any failure of its parser into a one-line
:class:`~noprop.errors.NoPropError` naming the file (:func:`guard`), and reads sizes from a header
before it allocates by them (SECURITY.md). The limits are in :mod:`noprop.limits`.

``model.safetensors`` is read in two steps: :func:`safetensors_header` parses and checks the header
alone (8-byte length, then JSON: name → dtype, shape, byte offsets) against the file's size: every
tensor's bytes equal its shape × dtype, the tensors tile the data region exactly, nothing overlaps
or points past the end. Only once the caller has compared those names, shapes and dtypes with the
model its config implies are the tensors read.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from .errors import NoPropError
from .limits import MAX_JSON_BYTES, MAX_SAFETENSORS_HEADER_BYTES

#: safetensors dtype names → torch dtypes (the names noprop can meet; others are refused)
SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}

#: name → (dtype, shape) of every tensor of a file or a model
Shapes = dict[str, tuple[torch.dtype, tuple[int, ...]]]


def one_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first sentence`` of an exception, on one line."""
    text = " ".join(str(e).split())[:limit]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


@contextlib.contextmanager
def guard(path: str | os.PathLike[str], what: str, error: type[NoPropError]) -> Iterator[None]:
    """Any exception of a parser inside becomes ``error("cannot read WHAT PATH: ...")``.

    A NoPropError passes unchanged (it names its file already). MemoryError and RecursionError
    are caught too: a nested or huge file must not end in a traceback.
    """
    try:
        yield
    except NoPropError:
        raise
    except Exception as e:  # noqa: BLE001 - the point: no parser exception escapes
        raise error(f"cannot read {what} {os.fspath(path)}: {one_line(e)}") from None


def read_json(
    path: str | os.PathLike[str],
    error: type[NoPropError],
    *,
    what: str = "JSON file",
    max_bytes: int = MAX_JSON_BYTES,
) -> Any:
    """A JSON file of at most ``max_bytes`` (checked before reading), parsed; ``error`` otherwise."""
    with guard(path, what, error):
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise error(
                    f"{os.fspath(path)} is {size} bytes, more than a {what} may be "
                    f"({max_bytes}; noprop/limits.py)"
                )
            return json.loads(f.read(max_bytes + 1).decode("utf-8"))


def safetensors_header(path: Path, error: type[NoPropError]) -> Shapes:
    """Names, dtypes and shapes of a safetensors file, its header checked against its size."""
    with guard(path, "safetensors file", error):
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise error(f"{path} is not a safetensors file ({size} bytes, truncated?)")
            n = int.from_bytes(prefix, "little")
            if n > MAX_SAFETENSORS_HEADER_BYTES or n > size - 8:
                raise error(
                    f"{path}: header claims {n} bytes "
                    f"(file {size} bytes, at most {MAX_SAFETENSORS_HEADER_BYTES}); truncated or forged"
                )
            header = json.loads(f.read(n).decode("utf-8"))
        return _check_header(header, size - 8 - n, path, error)


def _check_header(header: Any, data_bytes: int, path: Path, error: type[NoPropError]) -> Shapes:
    if not isinstance(header, dict):
        raise error(f"{path}: the safetensors header is not a JSON object")
    header = dict(header)
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise error(f"{path}: the safetensors __metadata__ is not a map of strings")
    out: Shapes = {}
    spans = []
    for name, info in header.items():
        where = f"{path}: tensor {name[:80]!r}"
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise error(f"{where} needs exactly dtype, shape and data_offsets")
        dtype = SAFETENSORS_DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
        if dtype is None:
            raise error(f"{where} has an unsupported dtype {str(info['dtype'])[:20]!r}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not _ints(shape, 0) or len(shape) > 8:
            raise error(f"{where} has a bad shape {str(shape)[:60]}")
        if not _ints(offsets, 2):
            raise error(f"{where} has bad data_offsets {str(offsets)[:60]}")
        begin, end = offsets
        nbytes = math.prod(shape) * dtype.itemsize
        if not begin <= end <= data_bytes or end - begin != nbytes:
            raise error(
                f"{where} claims bytes {begin}..{end} for shape {tuple(shape)} ({nbytes} bytes) "
                f"but the file holds {data_bytes} data bytes; truncated or forged"
            )
        out[name] = (dtype, tuple(shape))
        spans.append((begin, end))
    covered = 0
    for begin, end in sorted(spans):
        if begin != covered:
            raise error(f"{path}: tensors overlap or leave a gap at byte {covered}; forged?")
        covered = end
    if covered != data_bytes:
        raise error(f"{path}: {data_bytes - covered} bytes after the last tensor; forged?")
    return out


def _ints(value: Any, length: int) -> bool:
    """A list of non-negative ints (of ``length`` items unless 0)."""
    return (
        isinstance(value, list)
        and (length == 0 or len(value) == length)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    )


def compare_shapes(expected: Shapes, found: Shapes, where: Path, error: type[NoPropError]) -> None:
    """``found`` holds exactly ``expected``'s tensors, shapes and dtypes; else one line naming one."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise error(f"{where} lacks tensor {missing[0]!r}{more} that the config implies")
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise error(f"{where} holds tensor {extra[0][:80]!r}{more} that the config does not imply")
    for k, (dtype, shape) in expected.items():
        got_dtype, got_shape = found[k]
        if got_shape != shape or got_dtype != dtype:
            raise error(
                f"{where}: tensor {k!r} is {str(got_dtype).removeprefix('torch.')}"
                f"{list(got_shape)}, the config implies {str(dtype).removeprefix('torch.')}"
                f"{list(shape)}"
            )
