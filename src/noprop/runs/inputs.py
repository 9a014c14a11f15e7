r"""Inputs and outputs of ``noprop predict``: read images from files, write predictions.

Inputs: one ``.npy`` array (``allow_pickle=False``; raw uint8 pixels or normalised floats), one IDX
image file (``.gz`` or raw, as the MNIST files), or PNG/JPEG files and directories of them (sorted by
name; needs Pillow, the extra ``[image]``), converted to the data set's channels and, with a warning,
resized to its size; every file is read within the bounds of noprop/limits.py, and a bad one
fails the command naming it (SECURITY.md). Outputs: ``.csv`` or ``.json`` with one row per input (name, class, class name,
probability), written atomically.

Input names (file names) and class names (from the run or export's ``data.json`` /
``normalisation.json``, or a folder's sub-directory names) are untrusted text: a name holding a tab
and a newline must not forge output rows. So the CSV is written by the :mod:`csv` module (such a
field is quoted, and reads back exactly), the JSON by :mod:`json`, and the tab-separated lines on
stdout escape every field (:func:`tsv_field`): ``\\`` ``\t`` ``\n`` ``\r``, other control
characters as ``\xHH``, line/paragraph separators and lone surrogates (undecodable bytes of a file
name) as ``\uHHHH`` — one line of four fields per input, whatever the names hold.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write
from ..data.formats import checked_images, read_idx, read_npy
from ..data.images import IMAGE_SUFFIXES, read_images
from ..errors import ConfigError, DataError


def _warn(message: str) -> None:
    print(f"noprop: warning: {message}", file=sys.stderr)


def read_inputs(paths: list[str], in_shape: tuple[int, ...]) -> tuple[np.ndarray, list[str]]:
    """(images, names) from ``paths`` (module docstring); images are uint8 (N, C, H, W) or floats."""
    files = [Path(p) for p in paths]
    for f in files:
        if not f.exists():
            raise ConfigError(f"{f}: no such file or directory")
    if len(files) == 1 and files[0].is_file() and files[0].suffix == ".npy":
        array = read_npy(files[0])
        if array.ndim < 2 or len(array) == 0:
            raise ConfigError(
                f"{files[0]} holds an array of shape {array.shape}, not a batch of images"
            )
        return checked_images(array, str(files[0])), [str(i) for i in range(len(array))]
    images = [p for f in files for p in (sorted(f.iterdir()) if f.is_dir() else [f])]
    pictures = [p for p in images if p.suffix.lower() in IMAGE_SUFFIXES]
    if len(files) == 1 and files[0].is_file() and not pictures:
        try:
            array = read_idx(files[0])
        except DataError as e:
            raise ConfigError(f"{files[0]} is not a .npy, IDX or PNG/JPEG file ({e})") from None
        if array.ndim != 3:
            raise ConfigError(f"{files[0]} holds IDX labels, not images")
        return array, [str(i) for i in range(len(array))]
    if not pictures:
        raise ConfigError(f"no .npy, IDX, PNG or JPEG input in {', '.join(paths)}")
    return _read_pictures(pictures, in_shape), [str(p) for p in pictures]


def _read_pictures(paths: list[Path], in_shape: tuple[int, ...]) -> np.ndarray:
    """The images, decoded within noprop/limits.py's bounds; the first bad file fails the command."""
    if len(in_shape) != 3 or in_shape[0] not in (1, 3):
        raise ConfigError(f"this model takes inputs of shape {in_shape}, not images")
    channels, height, width = in_shape
    mode = "L" if channels == 1 else "RGB"
    arrays, _, resized = read_images(paths, mode, (width, height))
    out = [a[None] if channels == 1 else a.transpose(2, 0, 1) for a in arrays]
    if resized:
        _warn(
            f"{resized} of {len(paths)} images resized to {width}×{height} ({mode}) for this model"
        )
    return np.stack(out)


def check_predictions_path(path: str | Path, *, overwrite: bool = False) -> None:
    """Before any inference: a .csv/.json name in an existing directory, not an existing file
    (unless ``overwrite``) — so a typo cannot replace a run's config.json."""
    path = Path(path)
    if path.suffix not in (".csv", ".json"):
        raise ConfigError(f"--out {path}: use a .csv or .json file name")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {path}: {path.parent} is not a directory")
    if path.exists() and not overwrite:
        raise ConfigError(f"--out {path} exists; choose another name or add --overwrite")


#: :func:`tsv_field`'s str.translate table (a backslash is escaped too: escapes stay unambiguous)
_TSV_ESCAPES: dict[int, str] = {
    ord("\\"): "\\\\",
    ord("\t"): "\\t",
    ord("\n"): "\\n",
    ord("\r"): "\\r",
}
_TSV_ESCAPES.update(
    {c: f"\\x{c:02x}" for c in (*range(0x20), *range(0x7F, 0xA0)) if c not in _TSV_ESCAPES}
)
_TSV_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *range(0xD800, 0xE000))})


def tsv_field(value: object) -> str:
    r"""``str(value)`` safe as one field of a tab-separated line: a backslash, tab, newline and
    carriage return become ``\\`` ``\t`` ``\n`` ``\r``, other control characters ``\xHH``, line
    and paragraph separators and lone surrogates ``\uHHHH`` (module docstring). Names are
    untrusted: unescaped, a class name holding a tab and a newline would forge output rows."""
    return str(value).translate(_TSV_ESCAPES)


def tsv_line(fields: Iterable[object]) -> str:
    """One tab-separated line (no newline) of escaped fields (:func:`tsv_field`)."""
    return "\t".join(tsv_field(f) for f in fields)


def write_predictions(path: str | Path, rows: list[dict[str, Any]]) -> None:
    r"""``.csv`` (the :mod:`csv` module: a name holding a comma, quote or newline is quoted and reads
    back exactly) or ``.json``, atomically; any other suffix is a one-line error. A character UTF-8
    cannot hold (a lone surrogate: an undecodable byte of a file name) is written ``\udcXX``."""
    path = Path(path)
    if path.suffix == ".json":
        text = json.dumps(rows, indent=1) + "\n"
    elif path.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["input"])
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
    else:
        raise ConfigError(f"--out {path}: use a .csv or .json file name")
    if not path.parent.is_dir():
        raise ConfigError(f"--out {path}: {path.parent} is not a directory")
    data = text.encode("utf-8", "backslashreplace")
    atomic_write(path, lambda f: f.write(data))
