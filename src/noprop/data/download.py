"""Verified, atomic downloads of the raw data-set files.

:data:`SOURCES` maps each downloadable data set to its canonical base URL and the files to
fetch, each with the checksums it may match. Where a SHA-256 is known it is listed; the CIFAR
archives, Fashion-MNIST and KMNIST only have published MD5s (from the data sets' home pages and
torchvision), so those are what is checked. A file is accepted if it matches *any* listed
checksum: MNIST lists the MD5s of the canonical gzip files served at the S3 mirror as well as the
SHA-256s of the project's copy (``SHA256SUMS``), which holds the same IDX content re-compressed.

Rules:

* A download streams into a temporary file in the target directory, is hashed on the fly,
  verified, and only then moved into place with :func:`os.replace`. On any failure (network,
  size cap, checksum mismatch) the temporary file is removed and :class:`DataError` is raised;
  a partial or unverified file is never left under its final name.
* The base URL can be overridden, per call (``base_url``) or with the ``NOPROP_DATA_MIRROR``
  environment variable; a mirror must serve the files under the same names directly below the
  given URL. Only ``http``, ``https`` and ``file`` URLs are used.
* CIFAR archives are extracted safely: only the expected member names, only regular files,
  through ``tarfile``'s ``"data"`` filter, into a temporary directory first and then moved into
  place. The archive is deleted after a successful extraction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noprop.errors import DataError

__all__ = [
    "MIRROR_ENV",
    "SOURCES",
    "Checksum",
    "RemoteFile",
    "RemoteSource",
    "download_file",
    "extract_members",
    "fetch_dataset",
    "resolve_base_url",
]

logger = logging.getLogger(__name__)

MIRROR_ENV = "NOPROP_DATA_MIRROR"
MAX_DOWNLOAD_BYTES = 512 * 1024 * 1024
MAX_MEMBER_BYTES = 256 * 1024 * 1024
_ALLOWED_SCHEMES = ("http", "https", "file")
_CHUNK = 1024 * 1024


@dataclass(frozen=True)
class Checksum:
    """An expected digest of a file.

    Attributes:
        algorithm: ``"sha256"`` or ``"md5"`` (any name :func:`hashlib.new` accepts).
        hexdigest: The expected digest, lowercase hex.
    """

    algorithm: str
    hexdigest: str


@dataclass(frozen=True)
class RemoteFile:
    """A file to download and the checksums it may match (any one suffices)."""

    filename: str
    checksums: tuple[Checksum, ...]


@dataclass(frozen=True)
class RemoteSource:
    """Where a data set is downloaded from.

    Attributes:
        base_url: Canonical URL of the directory holding ``files``.
        files: The files to download.
        extract: For archives: tar member names to extract next to the archive (empty if the
            downloaded files are used as they are).
    """

    base_url: str
    files: tuple[RemoteFile, ...]
    extract: tuple[str, ...] = field(default=())


def _md5(hexdigest: str) -> tuple[Checksum, ...]:
    return (Checksum("md5", hexdigest),)


# Verbatim from the SHA256SUMS beside the shared MNIST files (../shared/data/mnist/): the
# project's copy of MNIST (the same IDX content as the canonical files, re-compressed).
_MNIST_SHA256SUMS = """
1a1a05eab793c14bb050b398624a11b0ffd1a2953baed553b1b9bd079e2a20be  t10k-images-idx3-ubyte.gz
b91679a0acfe4ba0e50a2437a903084cba1f5f92592b016a25a7dfd00455798b  t10k-labels-idx1-ubyte.gz
0b367032e93c5d0cea0925647cfdb18614af8ee15f83e6f2fc2ad904a6835971  train-images-idx3-ubyte.gz
1787548bbe0bff1ec2ecdc0ef292b02df999e2d1a6002d27500982c652b17203  train-labels-idx1-ubyte.gz
"""
_MNIST_SHA256 = dict(line.split()[::-1] for line in _MNIST_SHA256SUMS.strip().splitlines())
_MNIST_MD5 = {  # canonical files at ossci-datasets (as published by torchvision)
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
_FASHION_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_KMNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
    "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
    "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
    "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
}

CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR100_DIR = "cifar-100-binary"
CIFAR10_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)
CIFAR100_FILES = ("train.bin", "test.bin")

SOURCES: dict[str, RemoteSource] = {
    "mnist": RemoteSource(
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        tuple(
            RemoteFile(
                name, (Checksum("sha256", _MNIST_SHA256[name]), Checksum("md5", _MNIST_MD5[name]))
            )
            for name in _MNIST_MD5
        ),
    ),
    "fashion-mnist": RemoteSource(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        tuple(RemoteFile(name, _md5(digest)) for name, digest in _FASHION_MD5.items()),
    ),
    "kmnist": RemoteSource(
        "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
        tuple(RemoteFile(name, _md5(digest)) for name, digest in _KMNIST_MD5.items()),
    ),
    "cifar10": RemoteSource(
        "https://www.cs.toronto.edu/~kriz/",
        (RemoteFile("cifar-10-binary.tar.gz", _md5("c32a1d4ab5d03f1284b67883e8d87530")),),
        extract=tuple(f"{CIFAR10_DIR}/{name}" for name in CIFAR10_FILES),
    ),
    "cifar100": RemoteSource(
        "https://www.cs.toronto.edu/~kriz/",
        (RemoteFile("cifar-100-binary.tar.gz", _md5("03b5dce01913d631647c71ecec9e9cb8")),),
        extract=tuple(f"{CIFAR100_DIR}/{name}" for name in CIFAR100_FILES),
    ),
    "tiny-shakespeare": RemoteSource(
        "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/",
        (
            RemoteFile(
                "input.txt",
                (
                    Checksum(
                        "sha256", "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
                    ),
                ),
            ),
        ),
    ),
}


def _one_line(text: object) -> str:
    """Collapse an exception message (which may span lines) onto one line."""
    return " ".join(str(text).split())


def resolve_base_url(name: str, base_url: str | None = None) -> str:
    """Return the base URL to download ``name`` from, ending in ``/``.

    Args:
        name: A key of :data:`SOURCES`.
        base_url: Explicit override; else ``$NOPROP_DATA_MIRROR``; else the canonical URL.

    Raises:
        DataError: If the data set is not downloadable or the URL scheme is not allowed.
    """
    if name not in SOURCES:
        raise DataError(f"{name}: no download source is known for this data set")
    url = base_url or os.environ.get(MIRROR_ENV) or SOURCES[name].base_url
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in _ALLOWED_SCHEMES:
        raise DataError(f"{url}: unsupported URL scheme {scheme!r} (use http, https or file)")
    return url if url.endswith("/") else url + "/"


def _hashers(checksums: tuple[Checksum, ...]) -> dict[str, Any]:
    """Return one fresh hasher per distinct algorithm in ``checksums``."""
    return {c.algorithm: hashlib.new(c.algorithm, usedforsecurity=False) for c in checksums}


def file_matches(path: Path, checksums: tuple[Checksum, ...]) -> bool:
    """Return whether the file at ``path`` matches any of ``checksums``."""
    hashers = _hashers(checksums)
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            for hasher in hashers.values():
                hasher.update(block)
    return any(hashers[c.algorithm].hexdigest() == c.hexdigest.lower() for c in checksums)


def _stream_to(
    response: object, handle: object, checksums: tuple[Checksum, ...], url: str, max_bytes: int
) -> dict[str, str]:
    """Copy an HTTP response into ``handle``, hashing it; return hex digests by algorithm."""
    hashers = _hashers(checksums)
    total = 0
    while block := response.read(_CHUNK):  # type: ignore[attr-defined]
        total += len(block)
        if total > max_bytes:
            raise DataError(f"{url}: download exceeds {max_bytes} bytes; refusing")
        for hasher in hashers.values():
            hasher.update(block)
        handle.write(block)  # type: ignore[attr-defined]
    return {algorithm: hasher.hexdigest() for algorithm, hasher in hashers.items()}


def download_file(
    url: str,
    dest: Path,
    checksums: tuple[Checksum, ...],
    *,
    timeout: float = 30.0,
    max_bytes: int = MAX_DOWNLOAD_BYTES,
) -> Path:
    """Download ``url`` to ``dest`` atomically, verifying it against ``checksums``.

    Args:
        url: What to fetch.
        dest: Final path; its directory is created if needed.
        checksums: The file must match at least one (an empty tuple disables verification).
        timeout: Socket timeout in seconds.
        max_bytes: Refuse downloads larger than this.

    Returns:
        ``dest``.

    Raises:
        DataError: On any network or file-system error, an oversized download or a checksum
            mismatch. No file is left behind in that case.
    """
    dest = Path(dest)
    tmp = dest.parent / f".{dest.name}.{secrets.token_hex(8)}.part"
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        # Like mkstemp, but honouring the umask so the final file gets the usual permissions.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    except OSError as exc:
        raise DataError(f"{dest.parent}: cannot create download directory/file ({exc})") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
                digests = _stream_to(response, handle, checksums, url, max_bytes)
        if checksums and not any(digests[c.algorithm] == c.hexdigest.lower() for c in checksums):
            expected = ", ".join(f"{c.algorithm} {c.hexdigest}" for c in checksums)
            got = ", ".join(f"{alg} {dig}" for alg, dig in digests.items())
            raise DataError(f"{url}: checksum mismatch (expected {expected}; got {got})")
        os.replace(tmp, dest)
    except DataError:
        tmp.unlink(missing_ok=True)
        raise
    except (urllib.error.URLError, OSError, ValueError) as exc:
        tmp.unlink(missing_ok=True)
        reason = exc if isinstance(exc, urllib.error.HTTPError) else getattr(exc, "reason", exc)
        raise DataError(f"{url}: download failed ({_one_line(reason)})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


def extract_members(archive: Path, dest_dir: Path, members: tuple[str, ...]) -> None:
    """Extract exactly ``members`` (regular files) from a ``.tar.gz`` into ``dest_dir``.

    Member names are matched exactly, so nothing outside ``dest_dir`` can be written; the
    ``"data"`` extraction filter additionally rejects absolute paths, ``..`` and special files.
    Files are extracted into a temporary directory and moved into place only when all succeeded.

    Raises:
        DataError: If the archive is corrupt, lacks a member, or a member is not a regular file
            or is implausibly large.
    """
    dest_dir = Path(dest_dir)
    try:
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_dir))
    except OSError as exc:
        raise DataError(f"{dest_dir}: cannot create extraction directory ({exc})") from None
    try:
        _extract_to(archive, staging, members)
        for name in members:
            target = dest_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise DataError(f"{archive}: cannot extract archive ({_one_line(exc)})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract_to(archive: Path, staging: Path, members: tuple[str, ...]) -> None:
    """Validate and extract ``members`` of ``archive`` into ``staging``."""
    with tarfile.open(archive, "r:gz") as tar:
        for name in members:
            try:
                member = tar.getmember(name)
            except KeyError:
                raise DataError(f"{archive}: archive lacks expected member {name}") from None
            if not member.isreg():
                raise DataError(f"{archive}: member {name} is not a regular file")
            if member.size > MAX_MEMBER_BYTES:
                raise DataError(f"{archive}: member {name} is implausibly large ({member.size} B)")
            if hasattr(tarfile, "data_filter"):
                tar.extract(member, path=staging, filter="data")
            else:  # Python < 3.10.12 / 3.11.4: safe anyway (exact name, regular file only)
                tar.extract(member, path=staging)


def fetch_dataset(name: str, data_dir: Path, *, base_url: str | None = None) -> None:
    """Download (and for archives, extract) the raw files of ``name`` into ``data_dir``.

    Files already present under their final name that match a checksum are not downloaded
    again.

    Args:
        name: A key of :data:`SOURCES`.
        data_dir: Directory to download into.
        base_url: Mirror override (see :func:`resolve_base_url`).

    Raises:
        DataError: On any failure; the message is one line.
    """
    source = SOURCES.get(name)
    if source is None:
        raise DataError(f"{name}: no download source is known for this data set")
    root = resolve_base_url(name, base_url)
    data_dir = Path(data_dir)
    for remote in source.files:
        dest = data_dir / remote.filename
        if dest.is_file() and file_matches(dest, remote.checksums):
            logger.info("using verified %s", dest)
        else:
            url = urllib.parse.urljoin(root, remote.filename)
            logger.info("downloading %s", url)
            download_file(url, dest, remote.checksums)
        if source.extract:
            extract_members(dest, data_dir, source.extract)
            dest.unlink(missing_ok=True)
