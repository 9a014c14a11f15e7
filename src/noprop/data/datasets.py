"""Load a named data set as normalised train/validation/test tensors.

Data sets (:data:`DATASETS`; your own data, :data:`USER_DATASETS`, are read by
:mod:`noprop.data.user`):

* ``digits``: scikit-learn's bundled 8x8 digits (offline, 1797 images, 16 grey levels). Its test
  split is a fixed stratified 20% (``random_state=0``), independent of ``seed``, so the test set
  never changes between runs.
* ``mnist``, ``fashion-mnist``, ``kmnist``: the four IDX files (``.gz`` or uncompressed) directly
  in the data directory.
* ``cifar10``, ``cifar100``: the official *binary* releases, extracted (``cifar-10-batches-bin/``
  or ``cifar-100-binary/``); the data directory may be that folder or its parent. CIFAR-100 uses
  the 100 fine labels.

Choices:

* **Validation split.** A ``seed``-ed random permutation of the official training set; the first
  ``round(val_fraction * N)`` indices are validation, the rest training. ``max_train_samples``
  then keeps the first that-many of the (shuffled) training part, so it is a random subset and
  never touches validation or test data.
* **Normalisation.** Pixels are scaled to ``[0, 1]`` (divided by 255, or 16 for ``digits``), then
  standardised per channel with the mean and standard deviation of the *training part after the
  validation split, before* ``max_train_samples`` *truncation*. Computing statistics from the
  training part is data-set agnostic and leaks nothing from validation or test; taking them
  before truncation keeps the normalisation identical across sample budgets and stable for tiny
  budgets. The statistics used are returned in :class:`DataSplits` (``x_raw = x * std + mean``).
  A channel with zero variance gets ``std = 1``.
* **Validation of content.** Image and label counts must agree, sets must be non-empty, labels
  must lie in ``[0, num_classes)``, images must have the data set's shape and finite values.
  Any problem raises :class:`~noprop.errors.DataError` with a one-line message.
* **Missing files.** With ``download=True`` the canonical files (or a mirror: ``base_url`` /
  ``$NOPROP_DATA_MIRROR``) are fetched and verified; if that fails, one :class:`DataError` names
  the expected files and the ``--data-dir`` flag.
* **Default directory.** ``$NOPROP_DATA_DIR/<name>`` if that variable is set, else
  ``~/.cache/noprop/<name>``.
* Everything is vectorised: each split is converted to a tensor in one operation; statistics
  are accumulated over a few large chunks to bound temporary memory.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from noprop.data import download as _download
from noprop.data.formats import native_order, read_cifar_binary, read_idx
from noprop.errors import DataError, DataNotFound

__all__ = [
    "DATASETS",
    "DATA_DIR_ENV",
    "SPECS",
    "USER_DATASETS",
    "DataSplits",
    "DatasetSpec",
    "default_data_dir",
    "load_dataset",
    "normalise",
    "validate_arrays",
]

DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100")
#: your own data, read from --data-dir (noprop.data.user): their shape and classes come from the data
USER_DATASETS: tuple[str, ...] = ("folder", "npy")
DATA_DIR_ENV = "NOPROP_DATA_DIR"

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
_STATS_CHUNK = 8192
_T = TypeVar("_T")


@dataclass(frozen=True)
class DatasetSpec:
    """Static facts about a data set.

    Attributes:
        num_classes: Number of label classes.
        in_shape: Image shape ``(C, H, W)``.
        max_value: Raw pixel value that maps to 1.0 before standardisation.
        title: The data set's name as printed in tables and figures.
        class_names: One name per class (digits when the classes are the digits 0..9).
        task: The name of the task the data set poses (a key of :data:`noprop.tasks.TASKS`).
    """

    num_classes: int
    in_shape: tuple[int, int, int]
    max_value: float
    title: str = ""
    class_names: tuple[str, ...] = ()
    task: str = "classification"

    def class_name(self, k: int) -> str:
        return self.class_names[k] if k < len(self.class_names) else str(k)


DIGIT_NAMES = tuple(str(k) for k in range(10))
KMNIST_NAMES = ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")
CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
FASHION_NAMES = (
    "T-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip

SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(10, (1, 8, 8), 16.0, "digits", DIGIT_NAMES),
    "mnist": DatasetSpec(10, (1, 28, 28), 255.0, "MNIST", DIGIT_NAMES),
    "fashion-mnist": DatasetSpec(10, (1, 28, 28), 255.0, "Fashion-MNIST", FASHION_NAMES),
    "kmnist": DatasetSpec(10, (1, 28, 28), 255.0, "KMNIST", KMNIST_NAMES),
    "cifar10": DatasetSpec(10, (3, 32, 32), 255.0, "CIFAR-10", CIFAR10_NAMES),
    "cifar100": DatasetSpec(100, (3, 32, 32), 255.0, "CIFAR-100"),
}


@dataclass(frozen=True)
class DataSplits:
    """Normalised splits of a data set.

    Attributes:
        train: ``(x, y)``: ``float32`` images ``(N, C, H, W)`` and ``int64`` labels ``(N,)``; for
            your own data (:mod:`noprop.data.user`) a :class:`~noprop.data.sources.DataSource`.
        val: Validation split, same layout (may be empty when ``val_fraction == 0``).
        test: The official test split, same layout.
        num_classes: Number of label classes.
        in_shape: Image shape ``(C, H, W)``.
        name: Data set name.
        mean: Per-channel mean subtracted (in ``[0, 1]`` pixel units).
        std: Per-channel standard deviation divided by (in ``[0, 1]`` pixel units).
    """

    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    num_classes: int
    in_shape: tuple[int, int, int]
    name: str
    mean: tuple[float, ...]
    std: tuple[float, ...]


@dataclass(frozen=True)
class _Raw:
    """Un-normalised arrays straight from the files: images ``(N, C, H, W)``, labels ``(N,)``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def validate_arrays(
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    source: str,
    *,
    in_shape: tuple[int, int, int] | None = None,
) -> None:
    """Check that images and labels form a usable data set.

    Args:
        x: Images, shape ``(N, C, H, W)``, integer or floating dtype.
        y: Integer labels, shape ``(N,)``.
        num_classes: Labels must lie in ``[0, num_classes)``.
        source: What the arrays came from, for error messages.
        in_shape: If given, the required ``(C, H, W)``.

    Raises:
        DataError: On a shape, count, dtype, range or finiteness problem.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise DataError(f"{source}: images must have shape (N, C, H, W), got {x.shape}")
    if in_shape is not None and tuple(x.shape[1:]) != tuple(in_shape):
        raise DataError(f"{source}: images have shape {tuple(x.shape[1:])}, expected {in_shape}")
    if y.ndim != 1:
        raise DataError(f"{source}: labels must be one-dimensional, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{source}: {len(x)} images but {len(y)} labels")
    if len(x) == 0:
        raise DataError(f"{source}: the data set is empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{source}: labels must be integers, got dtype {y.dtype}")
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{source}: images must be numeric, got dtype {x.dtype}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"{source}: labels must lie in [0, {num_classes}), found values from {low} to {high}"
        )
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{source}: images contain NaN or infinite values")


def default_data_dir(name: str) -> Path:
    """Return the default directory for ``name``: ``$NOPROP_DATA_DIR/<name>`` or the cache."""
    root = os.environ.get(DATA_DIR_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "noprop"
    return base / name


def _locate_idx(directory: Path) -> dict[str, Path] | None:
    """Return the paths of the four IDX files (uncompressed preferred) or ``None``."""
    found = {}
    for stem in IDX_FILES:
        for candidate in (directory / stem, directory / f"{stem}.gz"):
            if candidate.is_file():
                found[stem] = candidate
                break
        else:
            return None
    return found


def _cifar_layout(name: str) -> tuple[str, tuple[str, ...]]:
    """Return the extracted folder name and file names of a CIFAR data set."""
    if name == "cifar10":
        return _download.CIFAR10_DIR, _download.CIFAR10_FILES
    return _download.CIFAR100_DIR, _download.CIFAR100_FILES


def _locate_cifar(name: str) -> Callable[[Path], Path | None]:
    """Return a function finding the folder holding the CIFAR files (or its parent's child)."""
    folder, files = _cifar_layout(name)

    def locate(directory: Path) -> Path | None:
        for candidate in (directory / folder, directory):
            if all((candidate / file).is_file() for file in files):
                return candidate
        return None

    return locate


def _expected_files(name: str) -> str:
    """Describe the files a data set needs, for error messages."""
    if name in ("cifar10", "cifar100"):
        folder, files = _cifar_layout(name)
        return f"{folder}/{{{','.join(files)}}}"
    return ", ".join(f"{stem}[.gz]" for stem in IDX_FILES)


def _locate_or_fetch(
    name: str,
    directory: Path,
    locate: Callable[[Path], _T | None],
    download: bool,
    base_url: str | None,
) -> _T:
    """Find the data files, downloading them first if allowed; raise one clear error if not."""
    found = locate(directory)
    if found is not None:
        return found
    note = "download disabled"
    if download:
        try:
            _download.fetch_dataset(name, directory, base_url=base_url)
        except DataError as exc:
            note = f"download failed: {exc}"
        else:
            found = locate(directory)
            if found is not None:
                return found
            note = "files still incomplete after download"
    raise DataNotFound(
        f"{name}: data files not found in {directory} (expected {_expected_files(name)}); "
        f"{note}; pass --data-dir DIR pointing at a folder that holds them",
        directory,
    )


def _read_idx_images(path: Path) -> np.ndarray:
    """Read an IDX images file as ``(N, 1, H, W)``."""
    images = read_idx(path)
    if images.ndim != 3:
        raise DataError(f"{path}: expected an IDX images file (magic 0x00000803), got labels")
    return images[:, None]


def _read_idx_labels(path: Path) -> np.ndarray:
    """Read an IDX labels file as ``(N,)``."""
    labels = read_idx(path)
    if labels.ndim != 1:
        raise DataError(f"{path}: expected an IDX labels file (magic 0x00000801), got images")
    return labels


def _load_idx(name: str, directory: Path, download: bool, base_url: str | None) -> _Raw:
    """Load one of the MNIST-format data sets."""
    paths = _locate_or_fetch(name, directory, _locate_idx, download, base_url)
    x_train, y_train, x_test, y_test = (
        _read_idx_images(paths[IDX_FILES[0]]),
        _read_idx_labels(paths[IDX_FILES[1]]),
        _read_idx_images(paths[IDX_FILES[2]]),
        _read_idx_labels(paths[IDX_FILES[3]]),
    )
    spec = SPECS[name]
    validate_arrays(
        x_train,
        y_train,
        spec.num_classes,
        f"{name} train ({paths[IDX_FILES[0]]})",
        in_shape=spec.in_shape,
    )
    validate_arrays(
        x_test,
        y_test,
        spec.num_classes,
        f"{name} test ({paths[IDX_FILES[2]]})",
        in_shape=spec.in_shape,
    )
    return _Raw(x_train, y_train, x_test, y_test)


def _read_cifar_files(paths: list[Path], label_bytes: int) -> tuple[np.ndarray, np.ndarray]:
    """Read and concatenate CIFAR binary files."""
    parts = [read_cifar_binary(path, label_bytes=label_bytes, fine=True) for path in paths]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _load_cifar(name: str, directory: Path, download: bool, base_url: str | None) -> _Raw:
    """Load CIFAR-10 or CIFAR-100 (fine labels) from the official binary files."""
    folder = _locate_or_fetch(name, directory, _locate_cifar(name), download, base_url)
    _, files = _cifar_layout(name)
    label_bytes = 1 if name == "cifar10" else 2
    x_train, y_train = _read_cifar_files([folder / f for f in files[:-1]], label_bytes)
    x_test, y_test = _read_cifar_files([folder / files[-1]], label_bytes)
    spec = SPECS[name]
    validate_arrays(
        x_train, y_train, spec.num_classes, f"{name} train ({folder})", in_shape=spec.in_shape
    )
    validate_arrays(
        x_test,
        y_test,
        spec.num_classes,
        f"{name} test ({folder / files[-1]})",
        in_shape=spec.in_shape,
    )
    return _Raw(x_train, y_train, x_test, y_test)


#: which of scikit-learn's 1797 digits are the test split (a bit per image, ``np.packbits`` order, hex):
#: ``train_test_split(range(1797), test_size=0.2, stratify=y, random_state=0)`` as scikit-learn 1.x
#: draws it, stored so a run does not import scikit-learn (~2 s) and the split cannot drift with a
#: scikit-learn release (tests/test_datasets.py checks it against scikit-learn)
DIGITS_TEST_SPLIT = (
    "000004883524104000064100934205001a00080100240028062c12001000940a009019120420f8a0028110a0"
    "00080a8820441524494240a00a0000004004d80000818020004805c400104008a0100005404800301000020e"
    "c409000224840083a8013c20a6980a0000000b08400804a0184802024041c1008004404684376a8102160044"
    "80004042a0a4180a5000840b8561c608108008004c80c02004068e00010882008100380803c008190000100e"
    "01008410a0210033282904c044c080680e0102830082008822a6402c24042108a860809081a00c0282024212"
    "0138a41500"
)


def _digits_file() -> Path | None:
    """scikit-learn's bundled ``digits.csv.gz`` (64 pixels and the label per row), found without
    importing scikit-learn; None if this scikit-learn keeps it elsewhere."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec and spec.submodule_search_locations) or ():
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            return path
    return None


def _load_digits() -> _Raw:
    """scikit-learn's digits with a fixed stratified 20% test split (:data:`DIGITS_TEST_SPLIT`)."""
    path = _digits_file()
    if path is not None:
        table = np.loadtxt(path, delimiter=",")
        x, y = table[:, :-1].reshape(-1, 1, 8, 8), table[:, -1].astype(np.int64)
    else:  # pragma: no cover - a scikit-learn that moved the file
        from sklearn.datasets import load_digits

        bunch = load_digits()
        x, y = np.asarray(bunch.images)[:, None], np.asarray(bunch.target, dtype=np.int64)
    spec = SPECS["digits"]
    validate_arrays(x, y, spec.num_classes, "digits (scikit-learn)", in_shape=spec.in_shape)
    test = digits_test_mask(len(y))
    return _Raw(x[~test], y[~test], x[test], y[test])


def digits_test_mask(n: int = 1797) -> np.ndarray:
    """The boolean test mask of :data:`DIGITS_TEST_SPLIT` over ``n`` digits."""
    bits = np.unpackbits(np.frombuffer(bytes.fromhex("".join(DIGITS_TEST_SPLIT)), np.uint8))
    if n != 1797:
        raise DataError(f"scikit-learn's digits have {n} images instead of 1797")
    return bits[:n].astype(bool)


def _is_int(value: object) -> bool:
    """Return whether ``value`` is an integer (and not a bool)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_options(
    name: str, val_fraction: float, seed: int, max_train_samples: int | None
) -> None:
    """Validate the arguments of :func:`load_dataset` that do not depend on the data."""
    if name not in SPECS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")
    if not _is_int(seed) or seed < 0:
        raise DataError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise DataError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if max_train_samples is not None and (not _is_int(max_train_samples) or max_train_samples <= 0):
        raise DataError(f"max_train_samples must be a positive integer, got {max_train_samples!r}")


def _split_indices(
    n: int, val_fraction: float, seed: int, max_train_samples: int | None, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train_idx, val_idx, stats_idx)`` for a training set of ``n`` samples.

    ``stats_idx`` is the training part before ``max_train_samples`` truncation.
    """
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    val_idx, stats_idx = perm[:n_val], perm[n_val:]
    if len(stats_idx) == 0:
        raise DataError(
            f"{name}: val_fraction={val_fraction} leaves no training samples out of {n}"
        )
    train_idx = stats_idx
    if max_train_samples is not None:
        if max_train_samples > len(stats_idx):
            raise DataError(
                f"{name}: max_train_samples={max_train_samples} exceeds the {len(stats_idx)} "
                f"training samples available after the validation split"
            )
        train_idx = stats_idx[:max_train_samples]
    return train_idx, val_idx, stats_idx


def _channel_stats(
    x: np.ndarray, idx: np.ndarray, scale: float
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``x[idx] * scale``, accumulated in float64 over chunks."""
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(idx), _STATS_CHUNK):
        block = torch.from_numpy(x[idx[start : start + _STATS_CHUNK]]).to(torch.float64)
        total += block.sum(dim=(0, 2, 3))
        total_sq += block.square().sum(dim=(0, 2, 3))
    count = len(idx) * x.shape[2] * x.shape[3]
    mean = total / count
    var = (total_sq / count - mean.square()).clamp_min(0.0)
    std = var.sqrt() * scale
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    return tuple((mean * scale).tolist()), tuple(std.tolist())


def normalise(
    x: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Raw images (N, C, H, W) → the standardised ``float32`` tensor the models see, in one pass:
    ``(x · scale − mean) / std`` per channel, ``scale = 1 / max_value`` (what :func:`load_dataset`
    applies; ``noprop.load(...).predict`` applies it to raw uint8 input). Any byte order: a batch
    gathered from a big-endian memory map is converted here, batch by batch, never the whole file."""
    array = np.require(native_order(x), requirements=["C", "W"])
    tensor = torch.from_numpy(array).to(torch.float32, copy=True)
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    gain = (scale / std_t).to(torch.float32).view(shape)
    offset = (-mean_t / std_t).to(torch.float32).view(shape)
    return tensor.mul_(gain).add_(offset)


def _labels(y: np.ndarray) -> torch.Tensor:
    """Convert labels to an ``int64`` tensor."""
    return torch.from_numpy(np.array(y, dtype=np.int64, copy=True))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train_samples: int | None = None,
    download: bool = True,
    base_url: str | None = None,
) -> DataSplits:
    """Load a data set as normalised train/validation/test tensors.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Directory holding the raw files (ignored for ``digits``). Defaults to
            ``$NOPROP_DATA_DIR/<name>`` or ``~/.cache/noprop/<name>``.
        val_fraction: Fraction of the training set held out for validation, in ``[0, 1)``.
        seed: Seed of the validation split (not of the test split, which is fixed).
        max_train_samples: Keep only this many training samples (after the split).
        download: Download missing files from the canonical source (or mirror).
        base_url: Mirror base URL overriding the canonical one (and ``$NOPROP_DATA_MIRROR``).

    Returns:
        The normalised splits and metadata.

    Raises:
        DataError: On an unknown name, invalid option, missing or malformed files.
    """
    _check_options(name, val_fraction, seed, max_train_samples)
    spec = SPECS[name]
    if name == "digits":
        raw = _load_digits()
    else:
        directory = Path(data_dir).expanduser() if data_dir is not None else default_data_dir(name)
        loader = _load_cifar if name.startswith("cifar") else _load_idx
        raw = loader(name, directory, download, base_url)

    train_idx, val_idx, stats_idx = _split_indices(
        len(raw.x_train), val_fraction, seed, max_train_samples, name
    )
    scale = 1.0 / spec.max_value
    mean, std = _channel_stats(raw.x_train, stats_idx, scale)

    def split(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return normalise(x, scale, mean, std), _labels(y)

    return DataSplits(
        train=split(raw.x_train[train_idx], raw.y_train[train_idx]),
        val=split(raw.x_train[val_idx], raw.y_train[val_idx]),
        test=split(raw.x_test, raw.y_test),
        num_classes=spec.num_classes,
        in_shape=spec.in_shape,
        name=name,
        mean=mean,
        std=std,
    )
