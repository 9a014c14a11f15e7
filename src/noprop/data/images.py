"""Bounded decoding of PNG/JPEG files from anyone (``noprop predict``; ``--dataset folder``).

An image is checked before it is decoded: its size on disk against the byte limit, then the width
× height in its header against the pixel limit (:func:`noprop.limits.image_limits`: 16.7 MP and
64 MiB by default, ``NOPROP_MAX_IMAGE_PIXELS`` / ``NOPROP_MAX_IMAGE_BYTES`` to change them; above
~179 MP Pillow's own decompression-bomb guard refuses as well). Only the PNG and JPEG decoders are
enabled, whatever the file's name. Any failure is a one-line :class:`~noprop.errors.DataError`
naming the file.

In a folder, the policy depends on the caller (SECURITY.md): ``predict`` fails on the first bad
file, naming it (a prediction per input was asked for); a training data set skips bad files with
one warning that counts them and names the first (``skip_bad=True``), and fails only when no
image is left.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..limits import IMAGE_BYTES_ENV, IMAGE_PIXELS_ENV, image_limits
from ..untrusted import guard

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DECODERS = ("PNG", "JPEG")


def _pillow():  # type: ignore[no-untyped-def]
    try:
        from PIL import Image  # optional dependency (extra "image")
    except ImportError:
        raise ConfigError("reading PNG/JPEG needs Pillow: pip install 'noprop[image]'") from None
    return Image


@contextlib.contextmanager
def _opened(path: Path) -> Iterator[Any]:
    """The image at ``path`` opened (header read, pixels not yet), within the limits, PNG/JPEG only."""
    Image = _pillow()
    max_pixels, max_bytes = image_limits()
    with guard(path, "image", DataError):
        nbytes = os.stat(path).st_size
        if nbytes > max_bytes:
            raise DataError(
                f"image {path} is {nbytes} bytes, more than {max_bytes} ({IMAGE_BYTES_ENV})"
            )
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            try:
                img = Image.open(path, formats=DECODERS)
            except Image.DecompressionBombError as e:  # above Pillow's own limit (~179 MP)
                raise DataError(f"image {path} refused as a decompression bomb: {e}") from None
            with img:
                width, height = img.size
                if width * height > max_pixels:
                    raise DataError(
                        f"image {path} is {width}×{height} pixels, more than {max_pixels} "
                        f"({IMAGE_PIXELS_ENV}); a decompression bomb?"
                    )
                yield img


def image_header(path: Path) -> tuple[tuple[int, int], str]:
    """((width, height), Pillow mode) of an image from its header (no pixels decoded); a DataError
    naming ``path`` as :func:`read_image` gives."""
    with _opened(path) as img:
        return img.size, img.mode


def read_image(
    path: Path, mode: str, size: tuple[int, int] | None = None
) -> tuple[np.ndarray, bool]:
    """(uint8 array (H, W) for mode "L" or (H, W, 3) for "RGB", whether it was resized to ``size``
    = (width, height)); a DataError naming ``path`` if it is too large, not PNG/JPEG or corrupt."""
    Image = _pillow()
    with _opened(path) as img:  # a decoding failure inside is a DataError too
        out = img.convert(mode)
        resized = size is not None and out.size != size
        if resized:
            out = out.resize(size, Image.Resampling.BILINEAR)
        return np.asarray(out, dtype=np.uint8), resized


def read_images(
    paths: list[Path],
    mode: str,
    size: tuple[int, int] | None = None,
    *,
    skip_bad: bool = False,
    check: Callable[[list[Path]], None] | None = None,
) -> tuple[list[np.ndarray], list[Path], int]:
    """(arrays, their paths, how many were resized) of ``paths`` (module docstring for the policy).

    ``check(paths read)`` runs before the skip warning is printed: a caller's own policy (a data
    set's: every class keeps an image) fails with its one-line error alone."""
    arrays, kept, resized, bad = [], [], 0, []
    for p in paths:
        try:
            array, was_resized = read_image(p, mode, size)
        except DataError as e:
            if not skip_bad:
                raise
            bad.append(str(e))
            continue
        arrays.append(array)
        kept.append(p)
        resized += was_resized
    if not arrays and paths:
        raise DataError(f"none of the {len(paths)} images could be read (first: {bad[0]})")
    if check is not None:
        check(kept)
    if bad:
        print(
            f"noprop: warning: skipped {len(bad)} of {len(paths)} images that cannot be read "
            f"(first: {bad[0]})",
            file=sys.stderr,
        )
    return arrays, kept, resized
