"""Tests of noprop.data: parsers, downloads, splits, normalisation and error handling.

Everything here runs offline on tiny synthetic files written to ``tmp_path``; downloads are
served by a local HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import socket
import tarfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from noprop.data import DATASETS, DataSplits, load_dataset
from noprop.data import datasets as ds
from noprop.data import download as dl
from noprop.data.formats import read_cifar_binary, read_idx
from noprop.errors import DataError

from .problems import poison_digits

IDX_NAMES = ds.IDX_FILES

#: keep every test away from the user's cache, mirrors and proxies (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("isolated_download_env")


# ----------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as an IDX file."""
    if magic is None:
        magic = 0x801 if array.ndim == 1 else 0x803
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def tiny_images(n: int, offset: int = 0, shape: tuple[int, ...] = (28, 28)) -> np.ndarray:
    """Random-looking images whose first pixel is a unique id (``offset + i``)."""
    rng = np.random.default_rng(offset + 1)
    images = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    if n:
        images.reshape(n, -1)[:, 0] = np.arange(offset, offset + n) % 256
    return images


def write_idx_set(
    directory: Path,
    *,
    n_train: int = 40,
    n_test: int = 10,
    gz: bool = True,
    train_labels: np.ndarray | None = None,
) -> dict[str, Path]:
    """Write the four MNIST-format files into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    if train_labels is None:
        train_labels = np.arange(n_train, dtype=np.uint8) % 10
    arrays = {
        IDX_NAMES[0]: tiny_images(n_train),
        IDX_NAMES[1]: train_labels,
        IDX_NAMES[2]: tiny_images(n_test, offset=200),
        IDX_NAMES[3]: np.arange(n_test, dtype=np.uint8) % 10,
    }
    paths = {}
    for stem, array in arrays.items():
        data = idx_bytes(array)
        path = directory / (f"{stem}.gz" if gz else stem)
        path.write_bytes(gzip.compress(data) if gz else data)
        paths[stem] = path
    return paths


def cifar_bytes(n: int, label_bytes: int, num_classes: int, offset: int = 0) -> bytes:
    """Encode ``n`` CIFAR records; labels cycle through the classes, coarse = fine // 5."""
    fine = (np.arange(offset, offset + n) % num_classes).astype(np.uint8)
    pixels = tiny_images(n, offset, shape=(3072,))
    labels = np.stack([fine // 5, fine], axis=1) if label_bytes == 2 else fine[:, None]
    return np.concatenate([labels, pixels], axis=1).tobytes()


def write_cifar(directory: Path, name: str, per_file: int = 4) -> Path:
    """Write a tiny extracted CIFAR-10/100 folder under ``directory``; return the folder."""
    folder_name, files = ds._cifar_layout(name)
    folder = directory / folder_name
    folder.mkdir(parents=True, exist_ok=True)
    label_bytes, classes = (1, 10) if name == "cifar10" else (2, 100)
    for i, file in enumerate(files):
        count = per_file * (5 if name == "cifar100" and file == "train.bin" else 1)
        (folder / file).write_bytes(cifar_bytes(count, label_bytes, classes, offset=i * 50))
    return folder


def one_line_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    """Return the error message after checking it is a single line."""
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# ----------------------------------------------------------------------------- formats


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip_bytes_and_path(tmp_path: Path, gz: bool) -> None:
    images = tiny_images(3, shape=(5, 4))
    data = idx_bytes(images)
    payload = gzip.compress(data) if gz else data
    path = tmp_path / ("x.gz" if gz else "x")
    path.write_bytes(payload)
    for source in (payload, path, str(path)):
        out = read_idx(source)
        assert out.dtype == np.uint8 and out.shape == (3, 5, 4)
        np.testing.assert_array_equal(out, images)
        assert out.flags.writeable
    labels = np.array([0, 9, 3], dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(idx_bytes(labels)), labels)


def test_read_idx_wrong_magic() -> None:
    with pytest.raises(DataError, match="magic"):
        read_idx(idx_bytes(np.zeros((2, 3, 3), np.uint8), magic=0x00000D03))
    with pytest.raises(DataError, match="magic"):
        read_idx(b"PK\x03\x04" + bytes(20))


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_truncated_and_oversized(tmp_path: Path, gz: bool) -> None:
    data = idx_bytes(tiny_images(4, shape=(6, 6)))
    cases = ((data[:-1], "truncated"), (data + b"\0", "oversized"), (data[:10], "truncated"))
    for bad, word in cases:
        path = tmp_path / ("bad.gz" if gz else "bad")
        path.write_bytes(gzip.compress(bad) if gz else bad)
        with pytest.raises(DataError, match=word) as excinfo:
            read_idx(path)
        assert str(path) in one_line_error(excinfo)


def test_read_idx_lying_header_does_not_allocate(tmp_path: Path) -> None:
    # Header claims 2**32-1 x 2**32-1 x 2**32-1 images: must fail on the size check, instantly.
    path = tmp_path / "huge"
    path.write_bytes((0x803).to_bytes(4, "big") + b"\xff" * 12 + bytes(100))
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)


def test_read_idx_gz_that_is_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(idx_bytes(tiny_images(2)))
    with pytest.raises(DataError, match="not gzip") as excinfo:
        read_idx(path)
    assert str(path) in one_line_error(excinfo)


def test_read_idx_corrupt_and_truncated_gzip() -> None:
    compressed = gzip.compress(idx_bytes(tiny_images(5)))
    with pytest.raises(DataError, match="gzip"):
        read_idx(compressed[: len(compressed) // 2])
    corrupted = bytearray(compressed)
    corrupted[len(corrupted) // 2] ^= 0xFF
    with pytest.raises(DataError):
        read_idx(bytes(corrupted))
    with pytest.raises(DataError, match="after the end"):
        read_idx(compressed + b"garbage")


def test_read_idx_concatenated_gzip_members_and_padding() -> None:
    data = idx_bytes(tiny_images(3))
    two_members = gzip.compress(data[:100]) + gzip.compress(data[100:]) + bytes(8)
    np.testing.assert_array_equal(read_idx(two_members), tiny_images(3))


def test_read_idx_gzip_bomb_is_capped() -> None:
    bomb = gzip.compress(
        (0x801).to_bytes(4, "big") + (2_000_000).to_bytes(4, "big") + bytes(2_000_000)
    )
    assert len(bomb) < 10_000
    with pytest.raises(DataError, match="more than"):
        read_idx(bomb, max_decompressed=1_000_000)
    assert read_idx(bomb).shape == (2_000_000,)


@pytest.mark.parametrize("label_bytes", [1, 2])
def test_read_cifar_binary_parses_records(tmp_path: Path, label_bytes: int) -> None:
    data = cifar_bytes(6, label_bytes, 100 if label_bytes == 2 else 10, offset=7)
    path = tmp_path / "batch.bin"
    path.write_bytes(data)
    for source in (data, path):
        images, labels = read_cifar_binary(source, label_bytes=label_bytes)
        assert images.shape == (6, 3, 32, 32) and images.dtype == np.uint8
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(images.reshape(6, -1), tiny_images(6, 7, shape=(3072,)))
    expected_fine = np.arange(7, 13) % (100 if label_bytes == 2 else 10)
    np.testing.assert_array_equal(labels, expected_fine)
    if label_bytes == 2:
        _, coarse = read_cifar_binary(data, label_bytes=2, fine=False)
        np.testing.assert_array_equal(coarse, expected_fine // 5)


def test_read_cifar_binary_rejects_bad_sizes(tmp_path: Path) -> None:
    data = cifar_bytes(2, 1, 10)
    for bad, word in ((data[:-1], "multiple"), (b"", "empty"), (data + b"\0", "multiple")):
        path = tmp_path / "bad.bin"
        path.write_bytes(bad)
        for source in (bad, path):
            with pytest.raises(DataError, match=word):
                read_cifar_binary(source)
    with pytest.raises(ValueError, match="label_bytes"):
        read_cifar_binary(data, label_bytes=3)


def test_unreadable_path_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "does-not-exist")
    with pytest.raises(DataError, match="cannot read"):
        read_cifar_binary(tmp_path)


# ----------------------------------------------------------------------------- fuzzing

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _only_array_or_data_error(call: Callable[[], object]) -> None:
    try:
        result = call()
    except DataError:
        return
    assert isinstance(result, (np.ndarray, tuple))


@st.composite
def near_idx(draw: st.DrawFn) -> bytes:
    """Plausible IDX headers with random dims and a payload of random length."""
    magic = draw(st.sampled_from([0x801, 0x803, 0x802, 0x808, 0x0803_0000]))
    ndim = 1 if magic == 0x801 else 3
    dims = draw(st.lists(st.integers(0, 20), min_size=ndim, max_size=ndim))
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    payload = draw(st.binary(max_size=4096))
    data = header + payload
    return gzip.compress(data) if draw(st.booleans()) else data


@FUZZ
@given(st.binary(max_size=4096))
def test_fuzz_read_idx_random_bytes(data: bytes) -> None:
    _only_array_or_data_error(lambda: read_idx(data))


@FUZZ
@given(near_idx())
def test_fuzz_read_idx_near_valid(data: bytes) -> None:
    _only_array_or_data_error(lambda: read_idx(data))


@FUZZ
@given(st.binary(max_size=4096).map(lambda b: b"\x1f\x8b" + b))
def test_fuzz_read_idx_fake_gzip(data: bytes) -> None:
    _only_array_or_data_error(lambda: read_idx(data))


@FUZZ
@given(
    st.binary(max_size=4096) | st.binary(min_size=3073, max_size=3074),
    st.sampled_from([1, 2]),
    st.booleans(),
)
def test_fuzz_read_cifar_binary(data: bytes, label_bytes: int, fine: bool) -> None:
    _only_array_or_data_error(lambda: read_cifar_binary(data, label_bytes=label_bytes, fine=fine))


# ----------------------------------------------------------------------------- validation


def test_validate_arrays_rejects_nan_inf_and_bad_labels() -> None:
    x = np.zeros((3, 1, 2, 2), np.float32)
    y = np.array([0, 1, 2])
    ds.validate_arrays(x, y, 3, "ok")
    for bad_value in (np.nan, np.inf):
        bad = x.copy()
        bad[1, 0, 1, 1] = bad_value
        with pytest.raises(DataError, match="NaN or infinite"):
            ds.validate_arrays(bad, y, 3, "src")
    with pytest.raises(DataError, match=r"\[0, 2\)"):
        ds.validate_arrays(x, y, 2, "src")
    with pytest.raises(DataError, match="from -1"):
        ds.validate_arrays(x, np.array([0, -1, 1]), 3, "src")
    with pytest.raises(DataError, match="integers"):
        ds.validate_arrays(x, y.astype(np.float32), 3, "src")
    with pytest.raises(DataError, match="3 images but 2 labels"):
        ds.validate_arrays(x, y[:2], 3, "src")
    with pytest.raises(DataError, match="empty"):
        ds.validate_arrays(x[:0], y[:0], 3, "src")
    with pytest.raises(DataError, match="expected"):
        ds.validate_arrays(x, y, 3, "src", in_shape=(1, 3, 3))


def test_digits_nan_is_rejected(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    poison_digits(monkeypatch, tmp_path, {(5, 3 * 8 + 3): np.nan})
    with pytest.raises(DataError, match="NaN"):
        load_dataset("digits")


# ----------------------------------------------------------------------------- digits


def _unnormalise(s: DataSplits, x: torch.Tensor) -> torch.Tensor:
    """Map normalised images back to [0, 1] pixel units."""
    return x * torch.tensor(s.std).view(1, -1, 1, 1) + torch.tensor(s.mean).view(1, -1, 1, 1)


def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(row.numpy().tobytes() for row in x.reshape(len(x), -1))


def test_digits_shapes_and_fixed_test_split() -> None:
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1, val_fraction=0.2)
    assert isinstance(a, DataSplits) and a.name == "digits"
    assert a.num_classes == 10 and a.in_shape == (1, 8, 8)
    x, y = a.train
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 8, 8)
    assert len(a.test[0]) == 360 and len(a.train[0]) + len(a.val[0]) == 1437
    assert len(a.val[0]) == round(0.1 * 1437)
    assert torch.equal(a.test[1], b.test[1])
    # Same raw test images; normalisation differs with the training part, so undo it first.
    torch.testing.assert_close(
        _unnormalise(a, a.test[0]), _unnormalise(b, b.test[0]), atol=1e-5, rtol=0
    )
    assert set(a.test[1].tolist()) == set(range(10))
    assert torch.bincount(a.test[1]).min() >= 35  # stratified


def test_digits_val_split_depends_on_seed_and_is_disjoint() -> None:
    a, b = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    assert _rows(a.val[0]) != _rows(b.val[0])
    again = load_dataset("digits", seed=0)
    assert torch.equal(a.val[0], again.val[0]) and torch.equal(a.train[1], again.train[1])
    # train + val of either seed is the same multiset of training images (in raw units).
    rows = [
        _rows(torch.round(_unnormalise(s, torch.cat([s.train[0], s.val[0]])) * 16)) for s in (a, b)
    ]
    assert rows[0] == rows[1]


def test_digits_normalised_with_train_stats() -> None:
    s = load_dataset("digits")
    x = s.train[0]
    assert abs(x.mean().item()) < 1e-4 and abs(x.std(correction=0).item() - 1) < 1e-3


# ----------------------------------------------------------------------------- IDX loading


def _ids(s: DataSplits, x: torch.Tensor) -> list[int]:
    """Recover the unique id stored in the first pixel of each image."""
    raw = (x[:, 0, 0, 0] * s.std[0] + s.mean[0]) * 255
    return torch.round(raw).to(torch.int64).tolist()


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("name", ["mnist", "fashion-mnist", "kmnist"])
def test_load_idx_dataset(tmp_path: Path, gz: bool, name: str) -> None:
    write_idx_set(tmp_path, n_train=40, n_test=10, gz=gz)
    s = load_dataset(name, tmp_path, download=False)
    assert s.name == name and s.num_classes == 10 and s.in_shape == (1, 28, 28)
    assert [len(s.train[0]), len(s.val[0]), len(s.test[0])] == [36, 4, 10]
    assert s.train[0].shape[1:] == (1, 28, 28) and s.train[0].dtype == torch.float32
    ids_train, ids_val = _ids(s, s.train[0]), _ids(s, s.val[0])
    assert sorted(ids_train + ids_val) == list(range(40))
    assert _ids(s, s.test[0]) == list(range(200, 210))
    # labels travel with their images
    assert s.train[1].tolist() == [i % 10 for i in ids_train]
    all_train = torch.cat([s.train[0]])
    assert abs(all_train.mean().item()) < 1e-4


def test_load_idx_split_and_truncation_rules(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=50)
    full = load_dataset("mnist", tmp_path, download=False, val_fraction=0.2, seed=3)
    small = load_dataset(
        "mnist", tmp_path, download=False, val_fraction=0.2, seed=3, max_train_samples=7
    )
    assert len(full.val[0]) == 10 and len(small.val[0]) == 10 and len(small.train[0]) == 7
    assert torch.equal(full.val[0], small.val[0])
    assert torch.equal(full.train[0][:7], small.train[0])
    assert full.mean == small.mean and full.std == small.std
    other = load_dataset("mnist", tmp_path, download=False, val_fraction=0.2, seed=4)
    assert _ids(other, other.val[0]) != _ids(full, full.val[0])
    none = load_dataset("mnist", tmp_path, download=False, val_fraction=0.0)
    assert len(none.val[0]) == 0 and none.val[0].shape[1:] == (1, 28, 28)
    assert len(none.train[0]) == 50


def test_default_data_dir_from_env(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "default-cache" / "kmnist")
    assert ds.default_data_dir("kmnist") == tmp_path / "default-cache" / "kmnist"
    assert len(load_dataset("kmnist", download=False).test[0]) == 10


def test_missing_files_offline_names_files_and_flag(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", tmp_path / "nothing", download=False)
    message = one_line_error(excinfo)
    assert all(stem in message for stem in IDX_NAMES)
    assert "--data-dir" in message and "download disabled" in message


def test_missing_files_download_fails_cleanly(tmp_path: Path) -> None:
    target = tmp_path / "dl"
    for name, expected in (
        ("fashion-mnist", "t10k-labels-idx1-ubyte"),
        ("cifar10", "data_batch_5.bin"),
    ):
        with pytest.raises(DataError) as excinfo:
            load_dataset(name, target, base_url=closed_port_url())
        message = one_line_error(excinfo)
        assert expected in message and "--data-dir" in message
        assert "download failed" in message
        assert excinfo.value.__cause__ is None and excinfo.value.__context__ is None
    assert not any(p.name.endswith(".part") for p in target.rglob("*"))


def test_partially_missing_files(tmp_path: Path) -> None:
    paths = write_idx_set(tmp_path)
    paths[IDX_NAMES[3]].unlink()
    with pytest.raises(DataError, match="not found"):
        load_dataset("mnist", tmp_path, download=False)


def test_idx_content_errors(tmp_path: Path) -> None:
    bad_labels = write_idx_set(tmp_path / "a", train_labels=np.full(40, 10, np.uint8))
    with pytest.raises(DataError, match=r"labels must lie in \[0, 10\)"):
        load_dataset("mnist", tmp_path / "a", download=False)
    assert bad_labels

    write_idx_set(tmp_path / "b", train_labels=np.zeros(39, np.uint8))
    with pytest.raises(DataError, match="40 images but 39 labels"):
        load_dataset("mnist", tmp_path / "b", download=False)

    paths = write_idx_set(tmp_path / "c", gz=False)
    data = paths[IDX_NAMES[0]].read_bytes()
    paths[IDX_NAMES[0]].write_bytes(data[:-100])
    with pytest.raises(DataError, match="truncated") as excinfo:
        load_dataset("mnist", tmp_path / "c", download=False)
    assert IDX_NAMES[0] in one_line_error(excinfo)

    paths = write_idx_set(tmp_path / "d")
    paths[IDX_NAMES[2]].write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="not gzip"):
        load_dataset("mnist", tmp_path / "d", download=False)

    paths = write_idx_set(tmp_path / "e")
    paths[IDX_NAMES[0]].write_bytes(gzip.compress(idx_bytes(np.zeros(40, np.uint8))))
    with pytest.raises(DataError, match="expected an IDX images file"):
        load_dataset("mnist", tmp_path / "e", download=False)

    paths = write_idx_set(tmp_path / "f")
    paths[IDX_NAMES[0]].write_bytes(gzip.compress(idx_bytes(tiny_images(40, shape=(8, 8)))))
    with pytest.raises(DataError, match=r"expected \(1, 28, 28\)"):
        load_dataset("mnist", tmp_path / "f", download=False)


def test_empty_dataset(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=0, train_labels=np.zeros(0, np.uint8))
    with pytest.raises(DataError, match="empty"):
        load_dataset("mnist", tmp_path, download=False)


def test_option_errors(tmp_path: Path) -> None:
    write_idx_set(tmp_path, n_train=20)
    with pytest.raises(DataError, match="exceeds the 18 training samples"):
        load_dataset("mnist", tmp_path, download=False, max_train_samples=19)
    for bad in (0, -3, True, 2.5):
        with pytest.raises(DataError, match="max_train_samples"):
            load_dataset("mnist", tmp_path, download=False, max_train_samples=bad)
    for bad in (1.0, -0.1, float("nan"), 1.5):
        with pytest.raises(DataError, match="val_fraction"):
            load_dataset("mnist", tmp_path, download=False, val_fraction=bad)
    with pytest.raises(DataError, match="leaves no training samples"):
        load_dataset("mnist", tmp_path, download=False, val_fraction=0.99)
    for bad_seed in (-1, 1.5, None):
        with pytest.raises(DataError, match="seed"):
            load_dataset("mnist", tmp_path, download=False, seed=bad_seed)
    with pytest.raises(DataError, match="unknown data set 'svhn'"):
        load_dataset("svhn", tmp_path)
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "kmnist", "cifar10", "cifar100")


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_load_cifar_from_folder_or_parent(tmp_path: Path, name: str) -> None:
    folder = write_cifar(tmp_path, name, per_file=4)
    a = load_dataset(name, tmp_path, download=False, val_fraction=0.25)
    b = load_dataset(name, folder, download=False, val_fraction=0.25)
    assert a.in_shape == (3, 32, 32) and len(a.mean) == 3 and len(a.std) == 3
    assert a.num_classes == (10 if name == "cifar10" else 100)
    assert [len(a.train[0]), len(a.val[0]), len(a.test[0])] == [15, 5, 4]
    assert torch.equal(a.train[0], b.train[0]) and torch.equal(a.test[1], b.test[1])
    assert a.train[0].shape[1:] == (3, 32, 32)
    per_channel_mean = a.train[0].mean(dim=(0, 2, 3))
    assert per_channel_mean.abs().max().item() < 0.2  # train part incl. truncation = stats part
    if name == "cifar100":  # fine labels, not coarse
        assert a.test[1].tolist() == [50, 51, 52, 53]


def test_cifar_truncated_and_bad_labels(tmp_path: Path) -> None:
    folder = write_cifar(tmp_path / "t", "cifar10")
    batch = folder / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-5])
    with pytest.raises(DataError, match="multiple") as excinfo:
        load_dataset("cifar10", tmp_path / "t", download=False)
    assert "data_batch_3.bin" in one_line_error(excinfo)

    folder = write_cifar(tmp_path / "l", "cifar10")
    (folder / "test_batch.bin").write_bytes(cifar_bytes(3, 2, 100, offset=20))
    with pytest.raises(DataError):  # CIFAR-100 records in a CIFAR-10 file
        load_dataset("cifar10", tmp_path / "l", download=False)

    folder = write_cifar(tmp_path / "m", "cifar10")
    bad = bytearray(cifar_bytes(2, 1, 10))
    bad[0] = 10
    (folder / "test_batch.bin").write_bytes(bytes(bad))
    with pytest.raises(DataError, match=r"\[0, 10\)"):
        load_dataset("cifar10", tmp_path / "m", download=False)


def test_cifar_missing_offline(tmp_path: Path) -> None:
    with pytest.raises(DataError) as excinfo:
        load_dataset("cifar100", tmp_path, download=False)
    message = one_line_error(excinfo)
    assert "cifar-100-binary/" in message and "train.bin" in message and "--data-dir" in message


# ----------------------------------------------------------------------------- downloads


def _serve_idx_set(root: Path) -> dl.RemoteSource:
    """Write a gzipped IDX set into the served directory; return a matching source entry."""
    paths = write_idx_set(root, n_train=30, n_test=10, gz=True)
    files = tuple(
        dl.RemoteFile(p.name, (dl.Checksum("sha256", sha256(p)),)) for p in paths.values()
    )
    return dl.RemoteSource("http://invalid.example/", files)


def test_download_idx_from_local_server(
    tmp_path: Path, http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, url = http_root
    monkeypatch.setitem(dl.SOURCES, "mnist", _serve_idx_set(root))
    target = tmp_path / "downloaded"
    s = load_dataset("mnist", target, base_url=url)
    assert len(s.train[0]) + len(s.val[0]) == 30 and len(s.test[0]) == 10
    assert sorted(p.name for p in target.iterdir()) == sorted(f"{n}.gz" for n in IDX_NAMES)
    # Second load uses the files on disk even with the server unreachable.
    assert len(load_dataset("mnist", target, base_url=closed_port_url()).test[0]) == 10


def test_download_uses_mirror_env(
    tmp_path: Path, http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, url = http_root
    monkeypatch.setitem(dl.SOURCES, "kmnist", _serve_idx_set(root))
    monkeypatch.setenv(dl.MIRROR_ENV, url.rstrip("/"))
    assert len(load_dataset("kmnist", tmp_path / "k").test[0]) == 10


def test_download_checksum_mismatch_leaves_nothing(
    tmp_path: Path, http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, url = http_root
    source = _serve_idx_set(root)
    wrong = dl.RemoteFile(
        source.files[2].filename, (dl.Checksum("sha256", "0" * 64), dl.Checksum("md5", "0" * 32))
    )
    files = source.files[:2] + (wrong,) + source.files[3:]
    monkeypatch.setitem(dl.SOURCES, "mnist", dl.RemoteSource(url, files))
    target = tmp_path / "dl"
    with pytest.raises(DataError) as excinfo:
        load_dataset("mnist", target, base_url=url)
    message = one_line_error(excinfo)
    assert "checksum mismatch" in message and "--data-dir" in message
    assert not (target / wrong.filename).exists()
    assert not any(p.name.endswith(".part") for p in target.iterdir())

    with pytest.raises(DataError, match="checksum mismatch"):
        dl.download_file(url + wrong.filename, tmp_path / "x" / "f.gz", wrong.checksums)
    assert list((tmp_path / "x").iterdir()) == []


def test_download_http_404(tmp_path: Path, http_root: tuple[Path, str]) -> None:
    _, url = http_root
    with pytest.raises(DataError, match="404") as excinfo:
        dl.download_file(url + "missing.gz", tmp_path / "missing.gz", ())
    one_line_error(excinfo)
    assert list(tmp_path.glob("*missing*")) == []


def test_download_rejects_odd_scheme(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="scheme"):
        load_dataset("mnist", tmp_path, base_url="ftp://example.org/mnist/")


def _tar_gz(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file_info(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _cifar10_archive(extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    entries = [
        _file_info(f"{dl.CIFAR10_DIR}/{file}", cifar_bytes(3, 1, 10, offset=i * 10))
        for i, file in enumerate(dl.CIFAR10_FILES)
    ]
    return _tar_gz(entries + extra)


def _serve_archive(root: Path, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "cifar-10-binary.tar.gz").write_bytes(data)
    checksum = dl.Checksum("md5", hashlib.md5(data).hexdigest())
    source = dl.SOURCES["cifar10"]
    monkeypatch.setitem(
        dl.SOURCES,
        "cifar10",
        dl.RemoteSource(
            source.base_url, (dl.RemoteFile("cifar-10-binary.tar.gz", (checksum,)),), source.extract
        ),
    )


def test_download_and_extract_cifar10(
    tmp_path: Path, http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, url = http_root
    evil = [
        _file_info("../evil.txt", b"x"),
        _file_info("/tmp/abs-evil.txt", b"x"),
        _file_info(f"{dl.CIFAR10_DIR}/readme.html", b"<html>"),
    ]
    _serve_archive(root, _cifar10_archive(evil), monkeypatch)
    target = tmp_path / "c10"
    s = load_dataset("cifar10", target, base_url=url, val_fraction=0.0)
    assert len(s.train[0]) == 15 and len(s.test[0]) == 3
    assert sorted(p.name for p in (target / dl.CIFAR10_DIR).iterdir()) == sorted(dl.CIFAR10_FILES)
    assert not (tmp_path / "evil.txt").exists()
    assert [p.name for p in target.iterdir()] == [dl.CIFAR10_DIR]  # archive and staging gone


def test_cifar_archive_with_unsafe_member(
    tmp_path: Path, http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, url = http_root
    link = tarfile.TarInfo(f"{dl.CIFAR10_DIR}/test_batch.bin")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    entries = [
        _file_info(f"{dl.CIFAR10_DIR}/{file}", cifar_bytes(3, 1, 10))
        for file in dl.CIFAR10_FILES[:-1]
    ]
    _serve_archive(root, _tar_gz([*entries, (link, None)]), monkeypatch)
    target = tmp_path / "c10"
    with pytest.raises(DataError, match="not a regular file") as excinfo:
        load_dataset("cifar10", target, base_url=url)
    assert "--data-dir" in one_line_error(excinfo)
    assert not (target / dl.CIFAR10_DIR).exists()

    _serve_archive(root, _tar_gz(entries), monkeypatch)
    with pytest.raises(DataError, match="lacks expected member"):
        load_dataset("cifar10", tmp_path / "c10b", base_url=url)


def test_source_table_is_complete() -> None:
    assert set(dl.SOURCES) == set(DATASETS) - {"digits"} | {"tiny-shakespeare"}
    for source in dl.SOURCES.values():
        for remote in source.files:
            assert remote.checksums
            for checksum in remote.checksums:
                length = {"md5": 32, "sha256": 64}[checksum.algorithm]
                assert len(checksum.hexdigest) == length
                int(checksum.hexdigest, 16)


def test_stored_digits_split_is_scikit_learns_and_loads_without_it():
    """The stored test mask is scikit-learn's stratified split (random_state 0); loading digits reads
    the bundled file directly and imports no scikit-learn (~2 s of every run's start)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from noprop.data.datasets import _load_digits, digits_test_mask

    bunch = load_digits()
    _, test = train_test_split(
        np.arange(1797), test_size=0.2, stratify=bunch.target, random_state=0
    )
    assert np.array_equal(np.flatnonzero(digits_test_mask()), np.sort(test))
    raw = _load_digits()
    assert np.array_equal(raw.x_test[:, 0], bunch.images[np.sort(test)])
    assert np.array_equal(raw.y_test, bunch.target[np.sort(test)])
    code = ("import sys; from noprop.data.datasets import load_dataset; load_dataset('digits'); "
            "print('sklearn' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_one_registry_decides_the_task_of_every_data_set():
    """``noprop.data.registry``: every --dataset has one task kind, and the config, the task
    builder and --augment follow it."""
    from noprop.config import make_config
    from noprop.data import ALL_DATASETS, DATASET_TASKS, TEXT_DATASETS, task_kind
    from noprop.errors import ConfigError
    from noprop.tasks import TASKS, task_for

    assert set(ALL_DATASETS) == set(DATASETS) | {"folder", "npy"} | set(TEXT_DATASETS)
    assert set(DATASET_TASKS.values()) <= set(TASKS)
    assert {task_kind(n) for n in TEXT_DATASETS} == {"language"}
    assert task_for("digits").name == "classification" and task_for("stdlib").name == "language"
    with pytest.raises(ConfigError, match="unknown --dataset 'nope'; choose one of digits"):
        task_kind("nope")
    with pytest.raises(ConfigError, match="transforms images"):
        make_config(dataset="stdlib", augment="flip")
