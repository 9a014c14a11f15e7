"""Parsers for the raw data-set file formats, written so that no input can do harm.

Three formats are read:

* **IDX** (MNIST, Fashion-MNIST, KMNIST): a 4-byte big-endian magic number (two zero bytes, a
  type code, the number of dimensions), one big-endian ``uint32`` per dimension, then the
  payload. Only unsigned-byte data is accepted: magic ``0x00000801`` (labels, 1-D) and
  ``0x00000803`` (images, 3-D). Files may be gzip-compressed or not; gzip is recognised by its
  magic bytes, and a file named ``*.gz`` that is not gzip is an error.
* **.npy** (``noprop predict``'s arrays; ``--dataset npy``, memory-mapped): NumPy's header, then
  the payload; numbers only.
* **CIFAR binary** (the official ``*-binary.tar.gz`` releases): fixed-size records of one label
  byte (CIFAR-10) or a coarse and a fine label byte (CIFAR-100) followed by 3072 pixel bytes
  (red, green, blue planes of 32x32).

Design choices:

* Nothing is ever unpickled; the Python-pickle releases of CIFAR are deliberately not supported.
* Sizes declared in a header are checked against the real byte length *before* the payload is
  read or any array is allocated, so a lying header cannot make us allocate more memory than the
  file itself occupies. Gzip input is decompressed with a hard cap (:data:`MAX_DECOMPRESSED_BYTES`,
  200 MiB by default), so a gzip bomb fails fast instead of exhausting memory. Gzip CRC and
  length trailers are verified by zlib.
* Every problem with the *content* raises :class:`~noprop.errors.DataError` with a one-line
  message naming the source; a wrong argument (a programming error) raises ``ValueError``.
* Arrays are returned as writable NumPy views of a single buffer (no per-record Python loops).
* Images read from a file of the user's (``--dataset npy``, ``noprop predict``'s arrays, hence also
  ``noprop eval`` of such a run) pass :func:`checked_images`, the one place that decides what an
  array of pixels may hold: any byte order (converted to the machine's), uint8 or floats whose
  values are finite *once converted to* :data:`MODEL_DTYPE`, the dtype the models compute in.
"""

from __future__ import annotations

import os
import zlib
from math import prod
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np

from noprop.errors import DataError

__all__ = [
    "CIFAR_IMAGE_BYTES",
    "CIFAR_IMAGE_SHAPE",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "MAX_DECOMPRESSED_BYTES",
    "MODEL_DTYPE",
    "checked_images",
    "native_order",
    "open_npy",
    "read_cifar_binary",
    "read_idx",
    "read_npy",
]

Source = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview]

IDX_LABELS_MAGIC = 0x00000801
IDX_IMAGES_MAGIC = 0x00000803
_IDX_NDIM = {IDX_LABELS_MAGIC: 1, IDX_IMAGES_MAGIC: 3}
_IDX_MAX_HEADER = 4 + 4 * 3

CIFAR_IMAGE_SHAPE = (3, 32, 32)
CIFAR_IMAGE_BYTES = prod(CIFAR_IMAGE_SHAPE)

GZIP_MAGIC = b"\x1f\x8b"
MAX_DECOMPRESSED_BYTES = 200 * 1024 * 1024
_GUNZIP_CHUNK = 16 * 1024 * 1024


def _describe(source: Source) -> str:
    """Return a short human-readable name for ``source`` to use in error messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return os.fspath(source)


def _read_file(path: Path, description: str) -> bytearray:
    """Read a whole file into a writable buffer, turning OS errors into :class:`DataError`."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            buffer = bytearray(size)
            got = handle.readinto(buffer)
    except OSError as exc:
        raise DataError(f"{description}: cannot read file ({exc.strerror or exc})") from None
    if got != size:
        raise DataError(f"{description}: file changed while being read")
    return buffer


def _peek(path: Path, count: int, description: str) -> tuple[bytes, int]:
    """Return the first ``count`` bytes of a file and its total size, without reading the rest."""
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            return handle.read(count), size
    except OSError as exc:
        raise DataError(f"{description}: cannot read file ({exc.strerror or exc})") from None


def gunzip_capped(
    data: bytes | bytearray | memoryview, description: str, max_bytes: int = MAX_DECOMPRESSED_BYTES
) -> bytearray:
    """Decompress gzip data, refusing to produce more than ``max_bytes`` bytes.

    Concatenated gzip members are supported, as is trailing zero padding; anything else after
    the last member is an error.

    Args:
        data: The compressed bytes.
        description: Name of the source, for error messages.
        max_bytes: Upper bound on the decompressed size.

    Returns:
        The decompressed bytes, in a writable buffer.

    Raises:
        DataError: If ``data`` is not valid, complete gzip or would decompress past the cap.
    """
    out = bytearray()
    remaining = memoryview(data)
    while True:
        decompressor = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        pending: bytes | memoryview = remaining
        try:
            while not decompressor.eof:
                room = max_bytes + 1 - len(out)
                chunk = decompressor.decompress(pending, min(room, _GUNZIP_CHUNK))
                out += chunk
                if len(out) > max_bytes:
                    raise DataError(
                        f"{description}: decompresses to more than {max_bytes} bytes; refusing"
                    )
                progressed = bool(chunk) or len(decompressor.unconsumed_tail) < len(pending)
                pending = decompressor.unconsumed_tail
                if not progressed:
                    break
        except zlib.error as exc:
            raise DataError(f"{description}: corrupt gzip data ({exc})") from None
        if not decompressor.eof:
            raise DataError(f"{description}: gzip data is truncated")
        remaining = memoryview(decompressor.unused_data)
        if bytes(remaining).count(0) == len(remaining):
            return out
        if bytes(remaining[:2]) != GZIP_MAGIC:
            raise DataError(f"{description}: unexpected bytes after the end of the gzip data")


def _parse_idx_header(
    head: bytes | bytearray | memoryview, total: int, description: str
) -> tuple[tuple[int, ...], int]:
    """Validate an IDX header against the total byte length of the (uncompressed) file.

    Args:
        head: At least the first 16 bytes of the file (fewer if the file is shorter).
        total: Total length of the uncompressed file in bytes.
        description: Name of the source, for error messages.

    Returns:
        The dimensions and the header length in bytes.

    Raises:
        DataError: On a wrong magic number, a short header, or a payload size mismatch.
    """
    if total < 4 or len(head) < 4:
        raise DataError(f"{description}: too short to be an IDX file ({total} bytes)")
    magic = int.from_bytes(bytes(head[:4]), "big")
    ndim = _IDX_NDIM.get(magic)
    if ndim is None:
        raise DataError(
            f"{description}: bad IDX magic number 0x{magic:08x} "
            f"(expected 0x{IDX_LABELS_MAGIC:08x} for labels or 0x{IDX_IMAGES_MAGIC:08x} for images)"
        )
    header_len = 4 + 4 * ndim
    if total < header_len or len(head) < header_len:
        raise DataError(f"{description}: truncated IDX header ({total} bytes)")
    dims = tuple(int.from_bytes(bytes(head[4 + 4 * i : 8 + 4 * i]), "big") for i in range(ndim))
    expected = header_len + prod(dims)
    if expected != total:
        kind = "truncated" if total < expected else "oversized"
        raise DataError(
            f"{description}: {kind} IDX file: header declares shape {dims} "
            f"({expected} bytes) but the data is {total} bytes"
        )
    return dims, header_len


def _idx_from_buffer(buffer: bytearray, description: str) -> np.ndarray:
    """Parse a complete, uncompressed IDX file held in memory."""
    dims, header_len = _parse_idx_header(buffer[:_IDX_MAX_HEADER], len(buffer), description)
    return np.frombuffer(buffer, dtype=np.uint8, offset=header_len).reshape(dims)


def read_idx(source: Source, *, max_decompressed: int = MAX_DECOMPRESSED_BYTES) -> np.ndarray:
    """Read an unsigned-byte IDX file (labels ``0x801`` or images ``0x803``), gzipped or not.

    Args:
        source: A path, or the file's bytes. Gzip input is recognised by its magic bytes; a
            path ending in ``.gz`` must be gzip.
        max_decompressed: Cap on the decompressed size of gzip input, in bytes.

    Returns:
        A writable ``uint8`` array: shape ``(N,)`` for labels, ``(N, rows, cols)`` for images.

    Raises:
        DataError: If the file cannot be read, is not gzip although named ``.gz``, is corrupt
            gzip, has a wrong magic number, or its size does not match its header exactly.
    """
    description = _describe(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = memoryview(source)
        if bytes(data[:2]) == GZIP_MAGIC:
            return _idx_from_buffer(gunzip_capped(data, description, max_decompressed), description)
        return _idx_from_buffer(bytearray(data), description)

    path = Path(source)
    head, size = _peek(path, _IDX_MAX_HEADER, description)
    if head[:2] == GZIP_MAGIC:
        compressed = _read_file(path, description)
        return _idx_from_buffer(
            gunzip_capped(compressed, description, max_decompressed), description
        )
    if path.suffix == ".gz":
        raise DataError(f"{description}: named .gz but is not gzip-compressed")
    # Validate the header against the file size before reading (allocating) the payload.
    _parse_idx_header(head, size, description)
    return _idx_from_buffer(_read_file(path, description), description)


def read_cifar_binary(
    source: Source, *, label_bytes: int = 1, fine: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Read an official CIFAR-10/100 binary batch file.

    Args:
        source: A path, or the file's bytes.
        label_bytes: 1 for CIFAR-10 (one label byte per record), 2 for CIFAR-100 (a coarse and
            a fine label byte per record).
        fine: For CIFAR-100 (``label_bytes=2``), return the fine (100-class) labels if true,
            else the coarse (20-class) labels. Ignored for CIFAR-10.

    Returns:
        ``(images, labels)``: ``uint8`` images of shape ``(N, 3, 32, 32)`` (a writable,
        possibly non-contiguous view) and ``int64`` labels of shape ``(N,)``.

    Raises:
        ValueError: If ``label_bytes`` is not 1 or 2.
        DataError: If the file cannot be read, is empty, or its size is not a multiple of the
            record size.
    """
    if label_bytes not in (1, 2):
        raise ValueError(f"label_bytes must be 1 or 2, got {label_bytes!r}")
    description = _describe(source)
    record = label_bytes + CIFAR_IMAGE_BYTES
    if isinstance(source, (bytes, bytearray, memoryview)):
        _check_cifar_size(len(source), record, description)
        buffer = bytearray(source)
    else:
        path = Path(source)
        _, size = _peek(path, 0, description)
        _check_cifar_size(size, record, description)
        buffer = _read_file(path, description)
        _check_cifar_size(len(buffer), record, description)
    records = np.frombuffer(buffer, dtype=np.uint8).reshape(-1, record)
    label_column = 1 if (label_bytes == 2 and fine) else 0
    labels = records[:, label_column].astype(np.int64)
    images = records[:, label_bytes:].reshape((-1, *CIFAR_IMAGE_SHAPE))
    return images, labels


def _check_cifar_size(size: int, record: int, description: str) -> None:
    """Raise :class:`DataError` unless ``size`` is a non-zero multiple of ``record``."""
    if size == 0:
        raise DataError(f"{description}: empty CIFAR binary file")
    if size % record:
        raise DataError(
            f"{description}: size {size} bytes is not a multiple of the {record}-byte CIFAR "
            f"record (truncated or wrong file)"
        )


_NPY_HEADERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
}


def _npy_header(handle: BinaryIO, description: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of an open ``.npy`` file, checked before any payload is read:
    numbers only (no pickled objects), and shape × item size equal to the bytes that follow."""
    size = os.fstat(handle.fileno()).st_size
    version = np.lib.format.read_magic(handle)
    if version not in _NPY_HEADERS:
        raise DataError(f"{description}: unsupported .npy format version {version}")
    shape, fortran, dtype = _NPY_HEADERS[version](handle)
    if dtype.hasobject:
        raise DataError(f"{description} holds Python objects (a pickle); refusing to load it")
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise DataError(f"{description}: a .npy array of {dtype} is not numbers")
    expected = prod(shape) * dtype.itemsize
    if size - handle.tell() != expected:
        raise DataError(
            f"{description}: header declares shape {shape} of {dtype} ({expected} bytes) "
            f"but {size - handle.tell()} bytes follow; truncated or forged"
        )
    return shape, fortran, dtype


def read_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a ``.npy`` array of numbers, its header checked before its payload is read.

    Nothing is unpickled: an object array is refused, as is any dtype but bool, integers and
    floats. The header's shape × item size must equal the bytes after it, so a lying header cannot
    make us allocate more than the file occupies.

    Raises:
        DataError: one line naming the file, whatever is wrong with it.
    """
    description = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            shape, fortran, dtype = _npy_header(handle, description)
            array = np.fromfile(handle, dtype=dtype, count=prod(shape))
        return array.reshape(shape, order="F" if fortran else "C")
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is one line naming the file
        detail = " ".join(str(exc).split())[:160]
        raise DataError(f"cannot read {description} as a .npy array: {detail}") from None


def open_npy(path: str | os.PathLike[str]) -> np.ndarray:
    """A ``.npy`` array of numbers opened memory-mapped (read-only; nothing is read until indexed),
    its header checked first as by :func:`read_npy`, then ``np.load(mmap_mode="r",
    allow_pickle=False)`` (``--dataset npy``: arrays larger than memory).

    Raises:
        DataError: one line naming the file, whatever is wrong with it.
    """
    description = os.fspath(path)
    try:
        with open(path, "rb") as handle:
            shape, _, dtype = _npy_header(handle, description)
        if prod(shape) == 0:  # nothing to map (an empty file region cannot be memory-mapped)
            return np.empty(shape, dtype)
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure is one line naming the file
        detail = " ".join(str(exc).split())[:160]
        raise DataError(f"cannot read {description} as a .npy array: {detail}") from None


#: the dtype the models compute in; an input value must be finite once converted to it
MODEL_DTYPE = np.dtype(np.float32)
_CHECK_ROWS = 8192  # images checked per step: bounded temporary memory, memory maps read in order


def native_order(array: np.ndarray) -> np.ndarray:
    """``array`` in this machine's byte order: itself when it already is (one-byte items always
    are), else a converted copy. Torch refuses other byte orders, and a ``.npy`` saved on a
    big-endian machine or as ``'>f4'`` has one; a memory map is read whole by this, so gather the
    rows first (:func:`~noprop.data.datasets.normalise` converts each batch it is given)."""
    if array.dtype.isnative:
        return array
    return array.astype(array.dtype.newbyteorder("="))


def checked_images(array: np.ndarray, where: str) -> np.ndarray:
    """Images from a user's file, checked once at load, whatever reads them (train, eval, predict).

    uint8 (raw pixels) or floats (taken as already normalised) only; float values must be finite
    *after* conversion to :data:`MODEL_DTYPE`: a float64 1e300 passes a float64 finiteness check,
    becomes inf in float32 and would only show up later as a "diverged" run blaming ``--lr``.
    Checked over chunks of images, so a memory-mapped array is read once, in order, never whole.

    Returns:
        ``array`` in native byte order: an in-memory array converted (one copy, only when it is
        not native); a memory map as it is (converting would read the whole file into memory):
        its rows are converted as they are gathered, by :func:`native_order` in ``normalise``.

    Raises:
        DataError: one line naming ``where`` and the problem (dtype, NaN/inf, overflow).
    """
    if array.dtype != np.uint8 and array.dtype.kind != "f":
        raise DataError(
            f"{where}: images must be uint8 pixels (0-255) or floats (already normalised), "
            f"not {array.dtype}; convert them first"
        )
    if array.dtype.kind == "f":
        _check_finite_as_model_dtype(np.atleast_1d(array), where)
    return array if isinstance(array, np.memmap) else native_order(array)


def _check_finite_as_model_dtype(array: np.ndarray, where: str) -> None:
    """Raise unless every value of the float ``array`` is finite once cast to MODEL_DTYPE."""
    counts = {"nonfinite": 0, "overflow": 0}
    first: dict[str, int] = {}
    largest = 0.0
    widening = array.dtype.itemsize <= MODEL_DTYPE.itemsize  # float16/32: no cast can overflow
    for start in range(0, len(array), _CHECK_ROWS):
        block = array[start : start + _CHECK_ROWS]
        with np.errstate(over="ignore", invalid="ignore"):  # the overflow is counted, not warned
            bad = ~np.isfinite(block if widening else block.astype(MODEL_DTYPE))
        if not bad.any():
            continue
        was_bad = ~np.isfinite(block)
        over = bad & ~was_bad
        for kind, mask in (("nonfinite", was_bad), ("overflow", over)):
            rows = mask.reshape(len(block), -1).any(axis=1)
            if rows.any():
                counts[kind] += int(mask.sum())
                first.setdefault(kind, start + int(np.argmax(rows)))
        if over.any():
            largest = max(largest, float(np.abs(block[over]).max()))
    if counts["nonfinite"]:
        raise DataError(
            f"{where}: {_values(counts['nonfinite'], 'is', 'are')} NaN or infinite (the first in "
            f"image {first['nonfinite']}); remove or replace them"
        )
    if counts["overflow"]:
        raise DataError(
            f"{where}: {_values(counts['overflow'], 'overflows', 'overflow')} {MODEL_DTYPE}, the "
            f"dtype the models compute in (largest magnitude {largest:.3g}, the first in image "
            f"{first['overflow']}); scale the data"
        )


def _values(count: int, one: str, many: str) -> str:
    """``1 value is`` / ``3 values are``: the count and its verb, for the messages above."""
    return f"1 value {one}" if count == 1 else f"{count} values {many}"
