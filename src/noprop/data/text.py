"""Byte-level text corpora for next-byte prediction (vocabulary: the 256 byte values).

Corpora (:data:`TEXT_DATASETS`), each loaded by :func:`load_text` as one ``uint8`` tensor per
split (train / val / test) in a :class:`TextCorpus`:

* ``stdlib`` (the default; bundled and offline): the ``.py`` files of the running Python's
  standard library, ``sysconfig.get_paths()["stdlib"]``.
* ``text``: your own bytes: ``--data-dir`` names one file, or a directory whose ``*.txt`` files
  (recursively) are used.
* ``tiny-shakespeare``: the char-rnn ``input.txt`` (1,115,394 bytes, SHA-256
  :data:`TINY_SHAKESPEARE_SHA256`), read from the data directory or downloaded there.

Choices:

* **Bytes, not characters.** Files are read as raw bytes; no decoding, no UTF-8 requirement and
  no newline translation. The model sees exactly the bytes on disk.
* **File order.** Wherever several files make up a corpus they are listed recursively and sorted
  by their relative path written with ``/`` separators (plain string order, so upper case sorts
  before lower case). Directories are not followed through symbolic links. For ``stdlib`` the
  directories named ``site-packages``, ``dist-packages`` and ``__pycache__`` are skipped (at any
  depth), so installed third-party packages and byte code are never included.
* **The stdlib cap.** ``stdlib`` is the longest *prefix* of that sorted file list whose total
  size stays within ``max_bytes`` (default :data:`STDLIB_MAX_BYTES`, 4 MiB): files are taken in
  order while the running total is ``<= max_bytes`` and the first file that does not fit ends the
  list. No file is skipped in the middle, so a smaller cap always selects a prefix of a larger
  cap's files. (The sorted prefix is alphabetical, hence not a uniform sample of the library.)
* **Split by file** (``stdlib``, and ``text`` directories): a file goes to a split by a hash of its
  relative path, independent of its contents, of the cap and of the other files::

      h = int.from_bytes(sha256(relpath.encode()).digest()[:8], "big") % 100
      train if h < 90, val if h < 95, else test

  Each split's bytes are its files' bytes concatenated in the sorted order. No file contributes to
  two splits, so validation and test text is never seen in training, and adding a file never
  moves another one between splits (see :func:`file_split`, :func:`stdlib_files`).
* **Contiguous split** (a single ``text`` file, ``tiny-shakespeare``, and the fallback below):
  with ``n`` bytes, train is ``[0, int(n*0.9))``, val ``[int(n*0.9), int(n*0.95))``, test
  ``[int(n*0.95), n)``. A ``text`` directory whose by-file split leaves a split below
  :data:`MIN_SPLIT_BYTES` (typically fewer than ~3 files) falls back to this split over the
  concatenation of its files; :attr:`TextCorpus.split` then says so.
* **Minimum size.** Every split must hold at least :data:`MIN_SPLIT_BYTES` (64) bytes, else
  :class:`~noprop.errors.DataError` (for ``stdlib`` this only fires for a tiny ``max_bytes``).
* **Identity.** :attr:`TextCorpus.sha256` is the SHA-256 of all bytes of the corpus as read, in
  read order, before splitting. The ``stdlib`` corpus depends on the Python version (and its
  distribution's packaging), so it is identified by this digest; :attr:`TextCorpus.source` names
  the version and directory.
* **max_bytes for the other corpora.** ``None`` (the default) reads everything. Given, a ``text``
  directory applies the same prefix-of-files rule as ``stdlib``, and a single file (``text`` or
  ``tiny-shakespeare``) is cut to its first ``max_bytes`` bytes before the contiguous split.
  ``tiny-shakespeare`` is verified against its published digest over the whole file first;
  the corpus ``sha256`` is then that of the bytes kept.
* **Downloads** (``tiny-shakespeare`` only) go through :func:`noprop.data.download.fetch_dataset`
  (the ``"tiny-shakespeare"`` entry of :data:`~noprop.data.download.SOURCES`): atomic, verified,
  with ``base_url`` or ``$NOPROP_DATA_MIRROR`` overriding the canonical URL. A local
  ``input.txt`` with another digest is an error, never silently replaced.
* Every error is a :class:`~noprop.errors.DataError` with a one-line message naming the path.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sysconfig
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from noprop.data import download as _download
from noprop.data.datasets import default_data_dir
from noprop.errors import DataError, DataNotFound

__all__ = [
    "MIN_SPLIT_BYTES",
    "STDLIB_MAX_BYTES",
    "TEXT_DATASETS",
    "TINY_SHAKESPEARE_BYTES",
    "TINY_SHAKESPEARE_SHA256",
    "TextCorpus",
    "file_split",
    "load_text",
    "stdlib_files",
]

TEXT_DATASETS: tuple[str, ...] = ("stdlib", "text", "tiny-shakespeare")
STDLIB_MAX_BYTES: int = 4 * 1024 * 1024
"""Cap of the bundled ``stdlib`` corpus (a prefix of the sorted ``.py`` files; see above)."""
MIN_SPLIT_BYTES: int = 64
"""Fewest bytes any split may hold."""
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TINY_SHAKESPEARE_BYTES = 1115394
TINY_SHAKESPEARE_FILE = "input.txt"

SPLITS: tuple[str, str, str] = ("train", "val", "test")
CONTIGUOUS = "contiguous-90/5/5"
BY_FILE = "by-file"
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclass(frozen=True)
class TextCorpus:
    """A byte corpus split three ways.

    Attributes:
        name: ``"stdlib"``, ``"text"`` or ``"tiny-shakespeare"``.
        train: Training bytes (1-D ``uint8``).
        val: Validation bytes (1-D ``uint8``).
        test: Test bytes (1-D ``uint8``).
        sha256: SHA-256 (hex) of all bytes of the corpus, in read order, before splitting.
        source: Human description of where the bytes came from.
        split: ``"by-file"`` or ``"contiguous-90/5/5"`` (the latter with a note in parentheses
            when a ``text`` directory fell back to it).
        files: Number of files contributing bytes to each split.
    """

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    sha256: str
    source: str
    split: str
    files: dict[str, int]

    def info(self) -> dict:
        """JSON-able summary: name, digest, source, split rule, bytes and files per split."""
        sizes = {s: int(getattr(self, s).numel()) for s in SPLITS}
        return {
            "name": self.name,
            "sha256": self.sha256,
            "source": self.source,
            "split": self.split,
            "bytes": sizes,
            "files": {s: int(self.files.get(s, 0)) for s in SPLITS},
            "total_bytes": sum(sizes.values()),
        }


def file_split(relpath: str) -> str:
    """Return the split (``"train"``, ``"val"`` or ``"test"``) of a file by its relative path."""
    h = int.from_bytes(hashlib.sha256(relpath.encode()).digest()[:8], "big") % 100
    return "train" if h < 90 else "val" if h < 95 else "test"


# ----------------------------------------------------------------------------- helpers


def _check_max_bytes(max_bytes: int | None) -> None:
    if max_bytes is None:
        return
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise DataError(f"max_bytes must be a positive integer, got {max_bytes!r}")


def _list_files(root: Path, suffix: str, skip_dirs: frozenset[str] = frozenset()) -> list[str]:
    """Relative POSIX paths of the files under ``root`` ending in ``suffix``, sorted."""
    found: list[str] = []
    errors: list[OSError] = []
    for directory, dirs, names in os.walk(root, onerror=errors.append):
        dirs[:] = [d for d in dirs if d not in skip_dirs]
        base = Path(directory)
        for name in names:
            if name.endswith(suffix) and (base / name).is_file():
                found.append((base / name).relative_to(root).as_posix())
    if errors:
        raise DataError(f"{root}: cannot list directory ({_one_line(errors[0])})")
    return sorted(found)


def _sizes(root: Path, relpaths: Iterable[str]) -> list[tuple[str, int]]:
    out = []
    for rel in relpaths:
        try:
            out.append((rel, (root / rel).stat().st_size))
        except OSError as exc:
            raise DataError(f"{root / rel}: cannot read ({_one_line(exc)})") from None
    return out


def _prefix_within(sized: list[tuple[str, int]], cap: int | None) -> list[tuple[str, int]]:
    """The longest prefix of ``sized`` whose total size is ``<= cap`` (all of it if no cap)."""
    if cap is None:
        return sized
    total = 0
    for i, (_, size) in enumerate(sized):
        if total + size > cap:
            return sized[:i]
        total += size
    return sized


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({_one_line(exc)})") from None


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _tensor(buffer: bytearray) -> torch.Tensor:
    """A 1-D uint8 tensor over ``buffer`` (no copy)."""
    if not buffer:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(buffer, dtype=torch.uint8)


def _bounds(n: int) -> tuple[int, int]:
    return int(n * 0.9), int(n * 0.95)


def _small_split(sizes: dict[str, int]) -> str | None:
    """The first split holding fewer than :data:`MIN_SPLIT_BYTES` bytes, if any."""
    return next((s for s in SPLITS if sizes[s] < MIN_SPLIT_BYTES), None)


def _check_sizes(where: object, sizes: dict[str, int], what: str) -> None:
    small = _small_split(sizes)
    if small is not None:
        raise DataError(
            f"{where}: corpus too small: the {small} split ({what}) has {sizes[small]} bytes, "
            f"need at least {MIN_SPLIT_BYTES} ({sum(sizes.values())} bytes in all)"
        )


@dataclass(frozen=True)
class _Parts:
    """Files read in order: their bytes concatenated, and where each one starts."""

    data: bytearray
    relpaths: list[str]
    starts: list[int]
    sha256: str


def _read_files(root: Path, relpaths: list[str]) -> _Parts:
    data = bytearray()
    starts = []
    for rel in relpaths:
        starts.append(len(data))
        data += _read(root / rel)
    return _Parts(data, relpaths, starts, hashlib.sha256(data).hexdigest())


def _by_file(parts: _Parts) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Split ``parts`` by the hash of each file's relative path."""
    buffers = {s: bytearray() for s in SPLITS}
    files = dict.fromkeys(SPLITS, 0)
    ends = parts.starts[1:] + [len(parts.data)]
    view = memoryview(parts.data)
    for rel, start, end in zip(parts.relpaths, parts.starts, ends, strict=True):
        split = file_split(rel)
        buffers[split] += view[start:end]
        files[split] += 1
    view.release()
    return {s: _tensor(buffers[s]) for s in SPLITS}, files


def _contiguous(
    data: bytearray, starts: list[int] | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Split ``data`` 90/5/5 by position; count the files (starting at ``starts``) in each range."""
    n = len(data)
    a, b = _bounds(n)
    whole = _tensor(data)
    tensors = {"train": whole[:a].clone(), "val": whole[a:b].clone(), "test": whole[b:].clone()}
    if starts is None:
        return tensors, dict.fromkeys(SPLITS, 1)
    ends = starts[1:] + [n]
    ranges = {"train": (0, a), "val": (a, b), "test": (b, n)}
    files = {
        s: sum(1 for f0, f1 in zip(starts, ends, strict=True) if f0 < hi and f1 > lo and f1 > f0)
        for s, (lo, hi) in ranges.items()
    }
    return tensors, files


def _split_sizes(tensors: dict[str, torch.Tensor]) -> dict[str, int]:
    return {s: int(t.numel()) for s, t in tensors.items()}


# ----------------------------------------------------------------------------- stdlib


def _stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _stdlib_selection(max_bytes: int | None) -> tuple[Path, list[tuple[str, int]], int]:
    """The stdlib root, the selected ``(relpath, size)`` files, and how many ``.py`` files exist."""
    _check_max_bytes(max_bytes)
    root = _stdlib_root()
    if not root.is_dir():
        raise DataError(f"{root}: the Python standard library directory does not exist")
    sized = _sizes(root, _list_files(root, ".py", _SKIP_DIRS))
    cap = STDLIB_MAX_BYTES if max_bytes is None else max_bytes
    return root, _prefix_within(sized, cap), len(sized)


def stdlib_files(max_bytes: int | None = None) -> list[tuple[str, str]]:
    """The files of the ``stdlib`` corpus as ``(relpath, split)``, in corpus (sorted) order.

    Args:
        max_bytes: The cap (default :data:`STDLIB_MAX_BYTES`); see the module notes.
    """
    _, selected, _ = _stdlib_selection(max_bytes)
    return [(rel, file_split(rel)) for rel, _ in selected]


def _load_stdlib(max_bytes: int | None) -> TextCorpus:
    root, selected, available = _stdlib_selection(max_bytes)
    cap = STDLIB_MAX_BYTES if max_bytes is None else max_bytes
    if not selected:
        raise DataError(f"{root}: no .py files fit within max_bytes={cap}")
    parts = _read_files(root, [rel for rel, _ in selected])
    if len(parts.data) > cap:  # a file grew between listing and reading
        raise DataError(f"{root}: files changed while reading the stdlib corpus; try again")
    tensors, files = _by_file(parts)
    _check_sizes(root, _split_sizes(tensors), f"by-file, max_bytes={cap}")
    source = (
        f"Python {platform.python_version()} standard library ({root}), {len(selected)} files "
        f"(the first {len(selected)} of {available} .py files in sorted order, cap {cap} bytes)"
    )
    return TextCorpus(
        "stdlib", **tensors, sha256=parts.sha256, source=source, split=BY_FILE, files=files
    )


# ----------------------------------------------------------------------------- text


def _load_text_dir(path: Path, max_bytes: int | None) -> TextCorpus:
    relpaths = _list_files(path, ".txt")
    if not relpaths:
        raise DataError(f"{path}: no .txt files found (searched recursively)")
    selected = [rel for rel, _ in _prefix_within(_sizes(path, relpaths), max_bytes)]
    if not selected:
        raise DataError(f"{path}: no .txt files fit within max_bytes={max_bytes}")
    parts = _read_files(path, selected)
    if not parts.data:
        raise DataError(f"{path}: the corpus is empty ({len(selected)} empty .txt files)")
    tensors, files = _by_file(parts)
    split = BY_FILE
    small = _small_split(_split_sizes(tensors))
    if small is not None:
        tensors, files = _contiguous(parts.data, parts.starts)
        split = (
            f"{CONTIGUOUS} (fallback: the by-file split of {len(selected)} files left {small} "
            f"under {MIN_SPLIT_BYTES} bytes)"
        )
    _check_sizes(path, _split_sizes(tensors), split)
    capped = "" if max_bytes is None else f" of {len(relpaths)}, cap {max_bytes} bytes"
    source = f"{len(selected)} .txt files{capped} under {path}"
    return TextCorpus(
        "text", **tensors, sha256=parts.sha256, source=source, split=split, files=files
    )


def _load_one_file(name: str, path: Path, data: bytes, source: str) -> TextCorpus:
    if not data:
        raise DataError(f"{path}: the file is empty")
    buffer = bytearray(data)
    tensors, files = _contiguous(buffer)
    _check_sizes(path, _split_sizes(tensors), CONTIGUOUS)
    digest = hashlib.sha256(buffer).hexdigest()
    return TextCorpus(name, **tensors, sha256=digest, source=source, split=CONTIGUOUS, files=files)


def _load_text(data_dir: str | os.PathLike[str] | None, max_bytes: int | None) -> TextCorpus:
    if data_dir is None:
        raise DataError(
            "--dataset text needs --data-dir PATH (a file or a directory of .txt files)"
        )
    path = Path(data_dir).expanduser()
    if path.is_dir():
        return _load_text_dir(path, max_bytes)
    if not path.exists():
        raise DataNotFound(
            f"{path}: no such file or directory (--dataset text needs --data-dir PATH, "
            "a file or a directory of .txt files)",
            path,
        )
    if not path.is_file():
        raise DataError(f"{path}: not a regular file or directory")
    data = _read(path)
    size = len(data)
    if max_bytes is not None:
        data = data[:max_bytes]
    capped = "" if len(data) == size else f", first {len(data)} of {size} bytes"
    return _load_one_file("text", path, data, f"file {path}{capped}")


# ----------------------------------------------------------------------------- tiny-shakespeare


def _tiny_shakespeare_digest_error(path: Path, actual: str, size: int) -> DataError:
    return DataError(
        f"{path}: SHA-256 mismatch (expected {TINY_SHAKESPEARE_SHA256}, got {actual}; "
        f"{size} bytes): this is not the char-rnn tiny-shakespeare input.txt "
        f"({TINY_SHAKESPEARE_BYTES} bytes); remove it or point --data-dir elsewhere"
    )


def _load_tiny_shakespeare(
    data_dir: str | os.PathLike[str] | None,
    download: bool,
    base_url: str | None,
    max_bytes: int | None,
) -> TextCorpus:
    name = "tiny-shakespeare"
    directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
    path = directory / TINY_SHAKESPEARE_FILE
    fetched = False
    if not path.is_file():
        hint = f"pass --data-dir DIR pointing at a folder that holds the char-rnn {path.name}"
        if not download:
            raise DataNotFound(
                f"{path}: {name} file not found; download disabled; {hint}", directory
            )
        try:
            _download.fetch_dataset(name, directory, base_url=base_url)
        except DataError as exc:
            raise DataError(
                f"{path}: {name} file not found; download failed: {exc}; {hint}"
            ) from None
        if not path.is_file():
            raise DataError(f"{path}: {name} file still missing after download; {hint}")
        fetched = True
    data = _read(path)
    actual = hashlib.sha256(data).hexdigest()
    if actual != TINY_SHAKESPEARE_SHA256:
        raise _tiny_shakespeare_digest_error(path, actual, len(data))
    size = len(data)
    if max_bytes is not None:
        data = data[:max_bytes]
    how = "downloaded to" if fetched else "read from"
    capped = "" if len(data) == size else f", first {len(data)} of {size} bytes"
    source = f"char-rnn tiny-shakespeare input.txt ({how} {path}{capped})"
    return _load_one_file(name, path, data, source)


# ----------------------------------------------------------------------------- public


def load_text(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    max_bytes: int | None = None,
) -> TextCorpus:
    """Load a byte corpus split into train / val / test.

    Args:
        name: One of :data:`TEXT_DATASETS`.
        data_dir: ``text``: the file or directory (required). ``tiny-shakespeare``: the directory
            holding (or to receive) ``input.txt``; default ``$NOPROP_DATA_DIR/tiny-shakespeare``
            or ``~/.cache/noprop/tiny-shakespeare``. Ignored for ``stdlib``.
        download: ``tiny-shakespeare``: download ``input.txt`` if it is missing.
        base_url: Mirror base URL overriding the canonical one (and ``$NOPROP_DATA_MIRROR``).
        max_bytes: Cap on the corpus size; ``stdlib`` defaults to :data:`STDLIB_MAX_BYTES`, the
            others to no cap (see the module notes for how each applies it).

    Returns:
        The corpus, one 1-D ``uint8`` tensor per split.

    Raises:
        DataError: On an unknown name, a bad option, a missing, unreadable, wrong or too small
            corpus, or a failed download. The message is one line.
    """
    _check_max_bytes(max_bytes)
    if name == "stdlib":
        return _load_stdlib(max_bytes)
    if name == "text":
        return _load_text(data_dir, max_bytes)
    if name == "tiny-shakespeare":
        return _load_tiny_shakespeare(data_dir, download, base_url, max_bytes)
    raise DataError(f"unknown text data set {name!r}; choose one of {', '.join(TEXT_DATASETS)}")
