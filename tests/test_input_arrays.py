"""Input arrays normalised or refused at load (issue 28): any byte order, values finite *as float32*.

One function, :func:`noprop.data.formats.checked_images`, decides what an array of images may hold
for ``noprop train --dataset npy`` (hence ``eval`` of such a run) and ``noprop predict``: a
big-endian ``.npy`` trains and predicts exactly as the native-order file (it used to end in a
traceback), and float64 values that overflow float32 are refused in one line naming the file (they
used to pass a float64 finiteness check and "diverge", blaming ``--lr``). Everything is tiny (MLP
blocks, T = 2, one epoch, one thread).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import noprop
from noprop import make_config
from noprop.cli import main
from noprop.data import formats
from noprop.data.formats import checked_images
from noprop.data.sources import ArraySource
from noprop.data.user import load_user_dataset
from noprop.errors import DataError

from .test_reliability import assert_one_line_error, metrics, weights, without_timing

SMALL = ["--T", "2", "--epochs", "1", "--block", "mlp", "--no-progress", "--threads", "1"]
#: the byte order that is not this machine's ('>' big-endian, on the usual little-endian machines)
FOREIGN = ">" if sys.byteorder == "little" else "<"


def native_arrays(n: int = 60, test: int = 12) -> dict[str, np.ndarray]:
    """Float images (already normalised) that a tiny model learns: class k is brighter with k."""
    rng = np.random.default_rng(1)

    def images(labels: np.ndarray) -> np.ndarray:
        base = rng.integers(0, 50, (len(labels), 8, 8)) + 90 * labels[:, None, None]
        return (base / 255.0).astype(np.float32)

    y, yt = np.arange(n) % 3, np.arange(test) % 3
    return {"x_train.npy": images(y), "y_train.npy": y, "x_test.npy": images(yt), "y_test.npy": yt}


def save(root: Path, arrays: dict[str, np.ndarray], order: str = "=") -> Path:
    """The arrays as ``.npy`` files in byte order ``order`` (the values unchanged)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, a in arrays.items():
        np.save(root / name, a.astype(a.dtype.newbyteorder(order)))
    return root


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the CLI run in-process."""
    capsys.readouterr()
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse errors
        rc = int(e.code or 0)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def train(out: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    argv = ["train", "--dataset", "npy", "--data-dir", str(data), "--out", str(out), *SMALL]
    return run_cli(argv, capsys)


def predict(run: Path, path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return run_cli(["predict", str(run), str(path), "--deterministic", "--threads", "1"], capsys)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run trained on native-order float arrays."""
    root = tmp_path_factory.mktemp("arrays")
    data = save(root / "data", native_arrays())
    argv = ["train", "--dataset", "npy", "--data-dir", str(data), "--out", str(root / "run")]
    assert main([*argv, *SMALL]) == 0
    return root / "run"


# ------------------------------------------------------------------------------ byte order
def test_foreign_byte_order_trains_exactly_as_native(tmp_path, capsys):
    arrays = native_arrays()
    native = save(tmp_path / "native", arrays)
    foreign = save(tmp_path / "foreign", arrays, FOREIGN)  # images '>f4', labels '>i8'
    assert not np.load(foreign / "x_train.npy", mmap_mode="r").dtype.isnative
    for data, out in ((native, tmp_path / "a"), (foreign, tmp_path / "b")):
        rc, _, err = train(out, data, capsys)
        assert rc == 0, err  # the old code: a traceback (torch refuses a big-endian array)
        assert "Traceback" not in err
    assert without_timing(metrics(tmp_path / "a")) == without_timing(metrics(tmp_path / "b"))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k][n], b[k][n]) for k in a for n in a[k])


def test_foreign_memory_map_is_converted_per_batch_not_loaded_whole(tmp_path):
    arrays = native_arrays()
    loaded = {}
    for order in ("=", FOREIGN):
        data = save(tmp_path / f"d{order}", arrays, order)
        cfg = make_config(dataset="npy", data_dir=str(data)).data
        loaded[order] = load_user_dataset(cfg, seed=0).splits
    source = loaded[FOREIGN].train
    assert isinstance(source, ArraySource) and isinstance(source.x, np.memmap)
    assert not source.x.dtype.isnative  # still the file, mapped: not converted as a whole
    idx = torch.tensor([5, 0, 17, 3])
    pairs = [
        (source.gather(idx), loaded["="].train.gather(idx)),
        (loaded[FOREIGN].test, loaded["="].test),
    ]
    assert all(torch.equal(p, q) for a, b in pairs for p, q in zip(a, b, strict=True))


def test_foreign_byte_order_predicts_as_native(run, tmp_path, capsys):
    x = native_arrays()["x_test.npy"]
    outputs = []
    for name, dtype in (("native", "=f4"), ("big32", f"{FOREIGN}f4"), ("big64", f"{FOREIGN}f8")):
        np.save(tmp_path / f"{name}.npy", x.astype(dtype))
        rc, out, err = predict(run, tmp_path / f"{name}.npy", capsys)
        assert rc == 0 and "Traceback" not in err, err
        outputs.append(out)
    assert len(outputs[0].splitlines()) == len(x)
    assert outputs[1] == outputs[0] and outputs[2] == outputs[0]
    model = noprop.load(run, device="cpu")
    want = model.predict(x, deterministic=True)
    assert torch.equal(model.predict(x.astype(f"{FOREIGN}f4"), deterministic=True), want)


def test_foreign_byte_order_labels_are_read_as_values(tmp_path):
    arrays = native_arrays()
    arrays["y_train.npy"] = arrays["y_train.npy"].astype(np.uint16)
    data = save(tmp_path / "d", arrays, FOREIGN)
    cfg = make_config(dataset="npy", data_dir=str(data)).data
    splits = load_user_dataset(cfg, seed=0).splits
    assert splits.num_classes == 3 and splits.train.labels.dtype == torch.int64
    assert set(splits.train.labels.tolist()) == {0, 1, 2}


def test_labels_are_range_checked_before_the_int64_cast(tmp_path, capsys):
    arrays = native_arrays()
    y = arrays["y_train.npy"].astype(np.uint64)
    y[7] = 2**64 - 1  # as int64 it is -1: the old code's "max label" then said 3 classes
    arrays["y_train.npy"] = y
    data = save(tmp_path / "d", arrays)
    rc, _, err = train(tmp_path / "run", data, capsys)
    assert_one_line_error(rc, err, "y_train.npy", "exceeds")
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------ values finite as float32
def _overflowing() -> dict[str, np.ndarray]:
    arrays = native_arrays()
    x = arrays["x_train.npy"].astype(np.float64)
    x[3, 2, 1], x[40, 0, 0] = 1e300, -2e39  # finite in float64, inf in float32
    arrays["x_train.npy"] = x
    return arrays


def test_float64_overflow_is_refused_at_load_in_train(tmp_path, capsys):
    data = save(tmp_path / "d", _overflowing())
    rc, _, err = train(tmp_path / "run", data, capsys)
    line = assert_one_line_error(rc, err, str(data / "x_train.npy"), "2 values overflow float32")
    assert "1e+300" in line and "image 3" in line and "--lr" not in line  # not "diverged"
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def test_float64_overflow_in_the_test_file_is_refused(tmp_path, capsys):
    arrays = native_arrays()
    arrays["x_test.npy"] = arrays["x_test.npy"] * np.float64(1e300)
    data = save(tmp_path / "d", arrays, FOREIGN)  # big-endian float64, too
    rc, _, err = train(tmp_path / "run", data, capsys)
    assert_one_line_error(rc, err, "x_test.npy", "overflow float32")


def test_float64_overflow_is_refused_in_predict(run, tmp_path, capsys):
    x = native_arrays()["x_test.npy"].astype(np.float64)
    x[2, 0, 5] = 1e300
    for order in ("=", FOREIGN):
        path = tmp_path / f"x{order}.npy"
        np.save(path, x.astype(x.dtype.newbyteorder(order)))
        rc, out, err = predict(run, path, capsys)
        assert_one_line_error(rc, err, str(path), "1 value overflows float32", "image 2")
        assert out == ""
    model = noprop.load(run, device="cpu")
    with pytest.raises(DataError, match="1 value overflows float32"):
        model.predict(torch.from_numpy(x))  # a float64 tensor: checked before the cast


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_in_train_and_predict(run, tmp_path, capsys, bad):
    arrays = native_arrays()
    arrays["x_train.npy"][9, 0, 0] = bad
    data = save(tmp_path / "d", arrays)
    rc, _, err = train(tmp_path / "run", data, capsys)
    assert_one_line_error(rc, err, "x_train.npy", "1 value is NaN or infinite", "image 9")
    path = tmp_path / "p.npy"
    np.save(path, arrays["x_train.npy"][:12])
    rc, out, err = predict(run, path, capsys)
    assert_one_line_error(rc, err, str(path), "NaN or infinite", "image 9")
    assert out == ""


# ----------------------------------------------------------------------- the one function
def test_checked_images_unit(tmp_path, monkeypatch):
    x = np.arange(24, dtype=np.float64).reshape(6, 1, 2, 2) / 10
    big = x.astype(">f8")
    got = checked_images(big, "x")
    assert got.dtype.isnative and np.array_equal(got, x)
    assert checked_images(x, "x") is x  # native and in memory: no copy
    u8 = np.zeros((2, 1, 2, 2), np.uint8)
    assert checked_images(u8, "x") is u8
    for dtype in (np.int32, np.bool_, np.uint16):
        with pytest.raises(DataError, match="uint8 pixels"):
            checked_images(np.zeros((2, 1, 2, 2), dtype), "x")
    monkeypatch.setattr(formats, "_CHECK_ROWS", 2)  # chunk boundaries: counts and first image
    bad = x.copy()
    bad[3, 0, 0, 0], bad[5, 0, 1, 1], bad[4, 0, 0, 1] = 1e40, -1e300, np.nan
    with pytest.raises(DataError, match=r"x: 1 value is NaN or infinite \(the first in image 4"):
        checked_images(bad, "x")
    bad[4, 0, 0, 1] = 0
    with pytest.raises(
        DataError, match=r"2 values overflow float32.*1e\+300, the first in image 3"
    ):
        checked_images(bad.astype(">f8"), "x")
    path = tmp_path / "m.npy"
    np.save(path, big)
    mapped = formats.open_npy(path)
    assert checked_images(mapped, "m") is mapped  # a memory map is not read whole into memory
    np.save(path, bad.astype(">f8"))
    with pytest.raises(DataError, match="m: 2 values overflow"):
        checked_images(formats.open_npy(path), "m")
    half = np.full((2, 1, 2, 2), 60000, np.float16)  # float16: always representable
    assert checked_images(half, "h") is half
