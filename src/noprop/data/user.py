"""Your own data: ``--dataset folder`` (PNG/JPEG files, a sub-directory per class) and ``--dataset npy``.

Both need ``--data-dir DIR`` and give a classification task whose input shape and classes come from
the data; they are recorded in the run's ``data.json`` (:meth:`UserData.info`), which is how a resumed
run, ``noprop eval`` and ``noprop predict`` know the model's shape before reading any data.

``--dataset folder`` (torchvision's ImageFolder layout): ``DIR/CLASS/*.png|jpg|jpeg`` (searched
recursively, sorted; other files ignored; class = sub-directory name, in sorted order, hidden ones
skipped). A ``DIR/train`` + ``DIR/test`` pair of such folders gives the test split. The images are
read within the bounds of :mod:`noprop.data.images` (a bad file is skipped with one warning; a class
left without an image is an error) and decoded **once** into a uint8 array (N, C, H, W):

* [I] size: the most common width × height of the folder (ties: the first file's); other images are
  resized to it (bilinear) with one warning counting them. Channels: 1 if every image is greyscale,
  else 3 (RGB).
* [I] the decoded arrays are cached in the run directory, ``RUN/data/{x,y}_{train,test}.npy``, with
  their SHA-256 in ``RUN/data.json``: ``--resume`` and ``noprop eval`` read the cache (checked) instead
  of decoding again, and refuse a cache or a folder that no longer matches. The cache is per run, so
  a run directory is complete on its own; it is written only once the run directory is created.

``--dataset npy``: ``DIR/x_train.npy`` and ``DIR/y_train.npy`` (and optionally ``x_test.npy`` +
``y_test.npy``), opened memory-mapped (``np.load(mmap_mode="r", allow_pickle=False)``, the header
checked first: an object/pickled array is refused): images (N, C, H, W) or (N, H, W) (one channel),
labels (N,) integers in [0, K) (K = the largest label + 1). Only the training batches are gathered
by index from the file (:class:`~noprop.data.sources.ArraySource`), so a training set larger than
memory trains. [I] The validation and test splits are read into memory as float32 tensors.

[I] Pixels: a **uint8** array holds raw pixels and is normalised like the built-in image sets
(divided by 255, then standardised per channel with the training part's mean and std, computed
over chunks); a **float** array (float16/32/64) is taken as already normalised and used as it is
(mean 0, std 1 recorded). Any other dtype is refused: convert it first. Both pass
:func:`~noprop.data.formats.checked_images`, as ``noprop predict``'s arrays do: any byte order
([I] a big-endian memory map stays mapped, each gathered batch is converted; validation and test are
converted as they are read), values finite *once converted to float32* (a float64 1e300 is refused
at load, not left to diverge). Labels: any integer dtype and byte order, range-checked before the
cast to int64.

Splits: without test files, [I] a fixed 10% of the examples is held out as the test split (a
permutation seeded with 0, so the test set does not change with ``--seed``, as for ``digits``). The
validation split and ``--max-train-samples`` then follow :func:`noprop.data.datasets.load_dataset`'s
rules on the rest. Every problem is a one-line :class:`~noprop.errors.DataError`.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_write
from ..errors import DataError, DataNotFound
from ..limits import MAX_CHANNELS, MAX_CLASSES, image_limits
from .config import DataConfig
from .datasets import (
    USER_DATASETS,
    DatasetSpec,
    DataSplits,
    _channel_stats,
    _split_indices,
    normalise,
)
from .formats import checked_images, open_npy
from .images import IMAGE_SUFFIXES, image_header, read_images
from .sources import ArraySource

__all__ = ["USER_DATASETS", "UserData", "load_user_dataset", "spec_from_record"]

NPY_FILES = ("x_train.npy", "y_train.npy", "x_test.npy", "y_test.npy")
#: fraction of the examples held out as the test split when the data have none (fixed, seed 0)
HELD_OUT_TEST = 0.1
#: Pillow modes decoded as one channel; any other mode (RGB, RGBA, P, CMYK, ...) as RGB
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_CHUNK = 8192


def _warn(message: str) -> None:
    print(f"noprop: warning: {message}", file=sys.stderr)


@dataclass
class UserData:
    """A folder or npy data set, loaded: its splits, spec, the facts ``data.json`` records, and the
    decoded arrays still to be cached in the run directory (empty once cached, and for npy)."""

    splits: DataSplits
    spec: DatasetSpec
    info: dict[str, Any]
    decoded: dict[str, np.ndarray] = field(default_factory=dict)

    def save_cache(self, directory: Path) -> None:
        """Write the decoded arrays (``RUN/data/*.npy``, atomically; ``data.json`` holds their
        SHA-256). Nothing to do for npy or a cache that was read."""
        if not self.decoded:
            return
        directory.mkdir(exist_ok=True)
        for name in NPY_FILES:
            (directory / name).unlink(missing_ok=True)  # an overwritten run's cache
        for name, array in self.decoded.items():
            atomic_write(directory / name, lambda f, a=array: np.save(f, a, allow_pickle=False))
        self.decoded = {}


def sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's bytes in C order (read over chunks: memory-mapped arrays too)."""
    h = hashlib.sha256()
    for start in range(0, len(array), _CHUNK):
        h.update(memoryview(np.ascontiguousarray(array[start : start + _CHUNK])).cast("B"))
    return h.hexdigest()


def _describe(array: np.ndarray) -> dict[str, Any]:
    return {"shape": list(array.shape), "dtype": str(array.dtype)}


# ----------------------------------------------------------------------- the spec, recorded
def spec_from_record(record: Any, where: str) -> DatasetSpec:
    """The spec of a folder/npy data set from what a run recorded (``data.json``, or an export's
    ``normalisation.json``): untrusted, so every field is checked against noprop/limits.py."""
    try:
        shape = [int(v) for v in record["in_shape"]]
        names = record["class_names"]
        max_value = float(record["max_value"])
    except (KeyError, TypeError, ValueError, OverflowError):
        raise DataError(
            f"{where} does not record the data set's in_shape, class_names and max_value"
        ) from None
    if (
        len(shape) != 3
        or min(shape) < 1
        or shape[0] > MAX_CHANNELS
        or shape[1] * shape[2] > image_limits()[0]
    ):
        raise DataError(f"{where}: in_shape {shape} is not an image shape within noprop/limits.py")
    if not isinstance(names, list) or not 1 <= len(names) <= MAX_CLASSES:
        raise DataError(f"{where}: class_names must be a list of 1 to {MAX_CLASSES} names")
    if not all(isinstance(n, str) for n in names) or not math.isfinite(max_value) or max_value <= 0:
        raise DataError(f"{where}: class_names must be strings and max_value a number > 0")
    return DatasetSpec(len(names), tuple(shape), max_value, str(record.get("title", "")),
                       tuple(names))  # type: ignore[arg-type]  # fmt: skip


# ----------------------------------------------------------------------------- arrays → splits
def _image_array(x: np.ndarray, where: str) -> np.ndarray:
    """(N, C, H, W) of uint8 pixels or floats (a view: (N, H, W) gains a channel axis)."""
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(
            f"{where}: images must have shape (N, C, H, W) or (N, H, W), got {tuple(x.shape)}"
        )
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise DataError(
            f"{where}: shape {tuple(x.shape)} looks channels-last (N, H, W, C); save it as "
            "(N, C, H, W), e.g. np.save(path, x.transpose(0, 3, 1, 2))"
        )
    c, h, w = x.shape[1:]
    if c > MAX_CHANNELS or h * w > image_limits()[0] or min(c, h, w) < 1:
        raise DataError(
            f"{where}: images of shape {(c, h, w)} exceed noprop/limits.py ({MAX_CHANNELS} "
            f"channels, {image_limits()[0]} pixels)"
        )
    return checked_images(x, where)  # dtype, byte order, finite as float32: as predict's inputs


def _labels(y: np.ndarray, n: int, where: str) -> np.ndarray:
    """Labels (n,) as native int64, checked: integers, one per image, in [0, MAX_CLASSES) in their
    own dtype *before* the cast (a uint64 2**63 would wrap to a negative int64), any byte order."""
    if y.ndim != 1:
        raise DataError(f"{where}: labels must have shape (N,), got {tuple(y.shape)}")
    if y.dtype.kind not in "iu":
        raise DataError(f"{where}: labels must be integers (class indices), not {y.dtype}")
    if len(y) != n:
        raise DataError(f"{where}: {n} images but {len(y)} labels")
    if len(y) and y.min() < 0:
        raise DataError(f"{where}: labels must be >= 0 (found {int(y.min())})")
    if len(y) and y.max() >= MAX_CLASSES:
        raise DataError(
            f"{where}: label {int(y.max())} exceeds noprop/limits.py's {MAX_CLASSES} classes"
        )
    return np.array(y, dtype=np.int64)  # native order: a copy in memory (labels are small)


def _splits(
    name: str,
    x: np.ndarray,
    y: np.ndarray,
    test: tuple[np.ndarray, np.ndarray] | None,
    num_classes: int,
    data: DataConfig,
    seed: int,
) -> tuple[DataSplits, dict[str, Any]]:
    """Test (given or held out), validation and training splits of uint8/float images ``x``."""
    n = len(x)
    if n == 0:
        raise DataError(f"--dataset {name}: the training set is empty")
    if test is None:
        n_test = max(1, round(HELD_OUT_TEST * n))
        if n - n_test < 2:
            raise DataError(
                f"--dataset {name}: {n} examples are too few to hold out a test split; "
                "add test data (npy: x_test.npy + y_test.npy; folder: DIR/train + DIR/test)"
            )
        perm = np.random.default_rng(0).permutation(n)
        test_rows, pool = np.sort(perm[:n_test]), np.sort(perm[n_test:])
        test = (x[test_rows], y[test_rows])
        test_from = f"held out: a fixed {HELD_OUT_TEST:.0%} of the examples"
    else:
        pool = np.arange(n)
        test_from = "test files"
    train_idx, val_idx, stats_idx = _split_indices(
        len(pool), data.val_fraction, seed, data.max_train_samples, name
    )
    channels = x.shape[1]
    if x.dtype == np.uint8:
        scale, max_value = 1.0 / 255.0, 255.0
        mean, std = _channel_stats(x, np.sort(pool[stats_idx]), scale)  # in file order: fast IO
    else:  # floats: already normalised (module docstring)
        scale, max_value, mean, std = 1.0, 1.0, (0.0,) * channels, (1.0,) * channels
    labels = torch.from_numpy(y)

    def tensors(xs: np.ndarray, ys: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return normalise(xs, scale, mean, std), torch.from_numpy(np.array(ys, dtype=np.int64))

    train = ArraySource(x, labels, pool[train_idx], scale=scale, mean=mean, std=std)
    val_rows = pool[val_idx]
    in_shape = tuple(int(v) for v in x.shape[1:])
    splits = DataSplits(
        train=train,  # type: ignore[arg-type]  # a DataSource (noprop.data.sources.Split)
        val=tensors(x[val_rows], y[val_rows]),
        test=tensors(*test),
        num_classes=num_classes,
        in_shape=in_shape,  # type: ignore[arg-type]
        name=name,
        mean=mean,
        std=std,
    )
    info = {
        "in_shape": list(in_shape),
        "max_value": max_value,
        "mean": list(mean),
        "std": list(std),
        "examples": {"train": len(train_idx), "val": len(val_idx), "test": len(test[0])},
        "test_split": test_from,
    }
    return splits, info


def _check_classes(y: np.ndarray, y_test: np.ndarray | None, where: str) -> int:
    top = max(int(y.max()), int(y_test.max()) if y_test is not None and len(y_test) else 0)
    if top + 1 > MAX_CLASSES:
        raise DataError(f"{where}: label {top} exceeds noprop/limits.py's {MAX_CLASSES} classes")
    return top + 1


# ------------------------------------------------------------------------------------- npy
def _load_npy(
    data: DataConfig, seed: int, recorded: dict[str, Any] | None
) -> tuple[DataSplits, DatasetSpec, dict[str, Any]]:
    directory = _directory(data)
    paths = {name: directory / name for name in NPY_FILES}
    for name in NPY_FILES[:2]:
        if not paths[name].is_file():
            raise DataNotFound(
                f"--dataset npy: {paths[name]} not found (--data-dir needs x_train.npy and "
                "y_train.npy; x_test.npy and y_test.npy are optional)",
                directory,
            )
    has_test = [paths[name].is_file() for name in NPY_FILES[2:]]
    if any(has_test) and not all(has_test):
        raise DataError(f"--dataset npy: {directory} has only one of x_test.npy and y_test.npy")
    arrays = {name: open_npy(p) for name, p in paths.items() if p.is_file()}
    x = _image_array(arrays["x_train.npy"], str(paths["x_train.npy"]))
    y = _labels(arrays["y_train.npy"], len(x), str(paths["y_train.npy"]))
    test = None
    if all(has_test):
        xt = _image_array(arrays["x_test.npy"], str(paths["x_test.npy"]))
        if xt.shape[1:] != x.shape[1:] or (xt.dtype == np.uint8) != (x.dtype == np.uint8):
            raise DataError(
                f"{paths['x_test.npy']}: {xt.dtype} images of shape {tuple(xt.shape[1:])}, but "
                f"the training images are {x.dtype} of shape {tuple(x.shape[1:])}"
            )
        test = (xt, _labels(arrays["y_test.npy"], len(xt), str(paths["y_test.npy"])))
        if len(xt) == 0:
            raise DataError(f"{paths['x_test.npy']}: the test set is empty")
    if len(x) == 0:
        raise DataError(f"{paths['x_train.npy']}: the training set is empty")
    num_classes = _check_classes(y, None if test is None else test[1], str(directory))
    files = {name: _describe(a) for name, a in arrays.items()}
    files["y_train.npy"]["sha256"] = sha256(y)
    if recorded is not None and recorded.get("arrays") != files:
        raise DataError(
            f"--dataset npy: the arrays in {directory} are not those the run was trained on "
            "(shapes, dtypes or labels differ from its data.json)"
        )
    splits, info = _splits("npy", x, y, test, num_classes, data, seed)
    names = tuple(str(k) for k in range(num_classes))
    spec = DatasetSpec(num_classes, splits.in_shape, info["max_value"], directory.name, names)
    return splits, spec, {**info, "class_names": list(names), "arrays": files}


# ----------------------------------------------------------------------------------- folder
def _directory(data: DataConfig) -> Path:
    assert data.data_dir is not None  # DataConfig requires it for folder/npy
    directory = Path(data.data_dir).expanduser()
    if not directory.is_dir():
        raise DataNotFound(
            f"--dataset {data.dataset}: --data-dir {directory} is not a directory", directory
        )
    return directory


def _images(directory: Path) -> list[Path]:
    return sorted(
        p
        for p in directory.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def _classes(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode_folder(directory: Path) -> tuple[dict[str, np.ndarray], list[str], dict[str, Any]]:
    """The folder's images decoded: arrays by cache file name, class names, facts for data.json."""
    roots = {"train": directory / "train", "test": directory / "test"}
    if not all(r.is_dir() and _classes(r) for r in roots.values()):
        roots = {"train": directory}
    classes = _classes(roots["train"])
    if not classes:
        raise DataError(
            f"--dataset folder: {roots['train']} has no class sub-directories (expected one "
            "sub-directory of PNG/JPEG images per class: DIR/CLASS/IMAGE.png)"
        )
    names = [c.name for c in classes]
    files: list[tuple[Path, str, int]] = []  # (path, split, label)
    for split, root in roots.items():
        for cls in _classes(root):
            if cls.name not in names:
                raise DataError(
                    f"--dataset folder: {cls} is a class that {roots['train']} does not have"
                )
            found = _images(cls)
            if not found and split == "train":
                raise DataError(
                    f"--dataset folder: class {cls.name!r} ({cls}) has no PNG/JPEG file"
                )
            files += [(p, split, names.index(cls.name)) for p in found]
    sizes: Counter[tuple[int, int]] = Counter()
    modes = set()
    for path, _, _ in files:
        try:
            size, mode = image_header(path)
        except DataError:
            continue  # decoding it fails too: skipped there, with the warning
        sizes[size] += 1
        modes.add(mode)
    if not sizes:
        read_images([p for p, _, _ in files], "L", skip_bad=True)  # raises, naming the first
    size = sizes.most_common(1)[0][0]
    mode = "L" if modes <= GREY_MODES else "RGB"
    where = {p: (split, label) for p, split, label in files}

    def every_class_kept(kept: list[Path]) -> None:  # before the skip warning: one line only
        labels = {where[p][1] for p in kept if where[p][0] == "train"}
        missing = sorted(set(range(len(names))) - labels)
        if missing:
            raise DataError(
                f"--dataset folder: none of the images of class {names[missing[0]]!r} "
                f"({classes[missing[0]]}) could be read"
            )
        if "test" in roots and not any(where[p][0] == "test" for p in kept):
            raise DataError(
                f"--dataset folder: none of the images in {roots['test']} could be read"
            )

    pixels, kept, resized = read_images(
        [p for p, _, _ in files], mode, size, skip_bad=True, check=every_class_kept
    )
    out: dict[str, np.ndarray] = {}
    for split in roots:
        picked = [i for i, p in enumerate(kept) if where[p][0] == split]
        labels = np.array([where[kept[i]][1] for i in picked], dtype=np.int64)
        stacked = np.stack([pixels[i] for i in picked])
        x = stacked[:, None] if mode == "L" else stacked.transpose(0, 3, 1, 2)
        out[f"x_{split}.npy"] = np.ascontiguousarray(x)
        out[f"y_{split}.npy"] = labels
    if resized:
        _warn(
            f"{resized} of {len(kept)} images resized to {size[0]}×{size[1]} ({mode}), the most "
            f"common size in {directory}"
        )
    facts = {"files": len(files), "read": len(kept), "resized": resized, "size": list(size),
             "mode": mode}  # fmt: skip
    return out, names, facts


def _read_cache(cache: Path, recorded: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The decoded arrays cached in the run directory (memory-mapped), checked against data.json's
    SHA-256; None when the cache is absent (decoded again, then compared)."""
    entries = recorded.get("cache")
    if not isinstance(entries, dict) or not entries or not set(entries) <= set(NPY_FILES):
        return None
    if not all((cache / name).is_file() for name in entries):
        return None
    out = {}
    for name, entry in entries.items():
        array = open_npy(cache / name)
        if not isinstance(entry, dict) or {**_describe(array), "sha256": sha256(array)} != entry:
            raise DataError(
                f"{cache / name} does not match the SHA-256 its run recorded in data.json; "
                f"delete {cache} to decode --data-dir again"
            )
        out[name] = array
    return out


def _load_folder(
    data: DataConfig, seed: int, recorded: dict[str, Any] | None, cache: Path | None
) -> tuple[DataSplits, DatasetSpec, dict[str, Any], dict[str, np.ndarray]]:
    arrays = None
    if recorded is not None and cache is not None:
        arrays = _read_cache(cache, recorded)
    decoded: dict[str, np.ndarray] = {}
    if arrays is not None and recorded is not None:  # checked against the recorded SHA-256
        names = spec_from_record(recorded, "data.json").class_names
        facts, entries = recorded.get("images", {}), recorded["cache"]
    else:
        arrays, names_list, facts = _decode_folder(_directory(data))
        names, decoded = tuple(names_list), arrays
        entries = {k: {**_describe(a), "sha256": sha256(a)} for k, a in arrays.items()}
    if recorded is not None and recorded.get("cache") != entries:
        raise DataError(
            f"--dataset folder: the images in {data.data_dir} are not those the run was trained "
            "on (their decoded SHA-256 differs from its data.json)"
        )
    x = arrays["x_train.npy"]
    y = _labels(arrays["y_train.npy"], len(x), "the decoded training labels")
    test = None
    if "x_test.npy" in arrays:
        xt = arrays["x_test.npy"]
        test = (xt, _labels(arrays["y_test.npy"], len(xt), "the decoded test labels"))
    _check_classes(y, None if test is None else test[1], "--dataset folder")
    splits, info = _splits("folder", x, y, test, len(names), data, seed)
    title = Path(data.data_dir or "folder").name
    spec = DatasetSpec(len(names), splits.in_shape, 255.0, title, names)
    return (
        splits,
        spec,
        {**info, "class_names": list(names), "images": facts, "cache": entries},
        decoded,
    )


def load_user_dataset(
    data: DataConfig,
    seed: int,
    *,
    recorded: dict[str, Any] | None = None,
    cache: Path | None = None,
) -> UserData:
    """Load ``--dataset folder`` or ``npy`` (module docstring).

    ``recorded``: the run's ``data.json`` when it continues or reads a run (the data must be the
    same); ``cache``: the run's ``data/`` directory (a folder's decoded images)."""
    if data.dataset == "npy":
        splits, spec, info = _load_npy(data, seed, recorded)
        decoded: dict[str, np.ndarray] = {}
    else:
        splits, spec, info, decoded = _load_folder(data, seed, recorded, cache)
    where = str(Path(str(data.data_dir)).expanduser().absolute())
    info = {"dataset": data.dataset, "data_dir": where, "title": spec.title, **info}
    return UserData(splits, spec, info, decoded)
