"""The data-source seam (issue 20, point 3): sources, your own data (folder, npy) and --augment.

Everything is built here in ``tmp_path`` (PNG folders with Pillow, ``.npy`` arrays) and tiny (MLP
blocks, T = 2, one or a few epochs, one thread), so each test takes seconds.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import noprop
from noprop import Trainer, build_method, make_config
from noprop.cli import main
from noprop.data.augment import augment_batch, draws, parse_augment
from noprop.data.datasets import normalise
from noprop.data.sources import (
    ArraySource,
    Augmented,
    TensorSource,
    as_source,
    class_examples,
    split_tensors,
)
from noprop.data.user import load_user_dataset, spec_from_record
from noprop.errors import ConfigError, DataError
from noprop.models.embeddings import prototype_init
from noprop.training.order import Step

from .test_reliability import assert_one_line_error, cli, metrics, weights, without_timing

Image = pytest.importorskip("PIL.Image")  # the extra [image]; in [test]

SMALL = ["--T", "2", "--epochs", "1", "--block", "mlp", "--no-progress", "--threads", "1"]
CLASSES = ("ant", "bee", "cow")


def write_folder(root: Path, *, per_class: int = 8, size=(8, 8), mode: str = "L", seed=0) -> Path:
    """``root/CLASS/i.png``: class k's pixels are brighter with k, so a tiny model learns them."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = (rng.integers(0, 50, shape) + 90 * k).astype(np.uint8)
            Image.fromarray(pixels, mode).save(root / name / f"{i}.png")
    return root


def write_npy(root: Path, n: int = 60, *, test: int = 0, dtype=np.uint8, hw=(8, 8)) -> Path:
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)

    def images(count: int, labels: np.ndarray) -> np.ndarray:
        base = rng.integers(0, 50, (count, *hw)) + 90 * labels[:, None, None]
        return base.astype(np.uint8) if dtype == np.uint8 else (base / 255.0).astype(dtype)

    y = np.arange(n) % 3
    np.save(root / "x_train.npy", images(n, y))  # (N, H, W): one channel
    np.save(root / "y_train.npy", y)
    if test:
        yt = np.arange(test) % 3
        np.save(root / "x_test.npy", images(test, yt))
        np.save(root / "y_test.npy", yt)
    return root


def train(out: Path, *args: str) -> dict:
    assert main(["train", "--out", str(out), *SMALL, *args]) == 0
    return json.loads((out / "summary.json").read_text())


# ----------------------------------------------------------------------------- the seam
def _fit(split, cfg, x_shape, val, *, epochs_seed=0):
    """A trainer fitted on ``split`` (weights and the per-epoch losses)."""
    torch.manual_seed(epochs_seed)
    method = build_method(cfg, x_shape, 3)
    trainer = Trainer(method, cfg, torch.device("cpu"), progress=False)
    records = []
    trainer.fit(split, val, on_epoch=lambda t, r: records.append(r["block_loss"]))
    return trainer.method.state_dict(), records


def _old_loop(cfg, x, y, x_shape):
    """The trainer's epoch loop as it was before the seam (``x[idx]`` on the device tensors)."""
    method = build_method(cfg, x_shape, 3)
    trainer = Trainer(method, cfg, torch.device("cpu"), progress=False)
    xd, yd = trainer.to_device(x), trainer.to_device(y)
    n = xd.shape[0]
    trainer.opt.set_horizon(
        cfg.train.epochs * -(-n // 16), cfg.train.epochs * trainer.order.num_steps(n)
    )
    for epoch in range(cfg.train.epochs):
        trainer.method.train()
        for step in trainer.order(n, epoch):
            idx = step.idx.to(trainer.device)
            list(trainer.step_fn(xd[idx], yd[idx], step, epoch))
        trainer.step_fn.sync_modules()
    return trainer.method.state_dict()


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_tensor_and_array_sources_train_bit_identically_to_the_loop_before(one_thread):
    rng = np.random.default_rng(0)
    raw = rng.integers(0, 256, (90, 1, 8, 8), dtype=np.uint8)
    y = torch.arange(90) % 3
    mean, std = (0.4,), (0.3,)
    x = normalise(raw, 1 / 255, mean, std)
    cfg = make_config(T=2, block="mlp", batch_size=16, epochs=2, seed=4, embedding="learned")
    val = (x[:10], y[:10])
    before = _old_loop(cfg, x, y, (1, 8, 8))
    tensors, rec_t = _fit((x, y), cfg, (1, 8, 8), val)
    source, rec_s = _fit(TensorSource(x, y), cfg, (1, 8, 8), val)
    arrays = ArraySource(raw, y, np.arange(90), scale=1 / 255, mean=mean, std=std)
    mapped, rec_a = _fit(arrays, cfg, (1, 8, 8), val)
    assert _same(before, tensors) and _same(tensors, source) and _same(tensors, mapped)
    assert rec_t == rec_s == rec_a


def test_array_source_gathers_rows_as_the_in_memory_split():
    raw = np.random.default_rng(0).integers(0, 256, (20, 3, 4, 4), dtype=np.uint8)
    y = torch.arange(20) % 4
    rows = np.array([5, 2, 19, 0, 7])
    src = ArraySource(raw, y, rows, scale=1 / 255, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    xb, yb = src.gather(torch.tensor([4, 0, 2]))
    full = normalise(raw, 1 / 255, (0.1, 0.2, 0.3), (0.5, 0.6, 0.7))
    assert torch.equal(xb, full[[7, 5, 19]]) and torch.equal(yb, y[[7, 5, 19]])
    assert len(src) == 5 and torch.equal(src.labels, y[rows])
    assert torch.equal(split_tensors(src)[0], full[rows])
    placed = src.placed(lambda t: t + 1 if t.is_floating_point() else t)
    assert torch.equal(placed.gather(torch.tensor([1]))[0], full[[2]] + 1)


def test_prototypes_of_a_source_equal_those_of_the_tensors():
    raw = np.random.default_rng(2).integers(0, 256, (60, 1, 4, 4), dtype=np.uint8)
    y = torch.arange(60) % 3
    x = normalise(raw, 1 / 255, (0.5,), (0.2,))
    src = ArraySource(raw, y, np.arange(60), scale=1 / 255, mean=(0.5,), std=(0.2,))
    for cap in (100, 7):  # all examples, and a seeded subsample of each class
        expected = prototype_init(x, y, 3, max_per_class=cap, seed=3)
        xs, ys = class_examples(src, 3, max_per_class=cap, seed=3)
        assert torch.equal(prototype_init(xs, ys, 3, max_per_class=cap, seed=3), expected)
    assert class_examples((x, y), 3, max_per_class=7, seed=3)[0] is x  # tensors pass unchanged


# --------------------------------------------------------------------------- augmentation
def test_augment_is_crop_with_zero_padding_then_flip_per_example():
    x = torch.randn(32, 3, 6, 7)
    idx = torch.randperm(500)[:32]
    out = augment_batch(x, idx, ("crop", "flip"), seed=3, epoch=2)
    r = draws(idx, 3, 2)
    for k in range(32):
        dy, dx, flip = int(r[k] % 9) - 4, int(r[k] // 9 % 9) - 4, int(r[k] // 81 % 2)
        ref = F.pad(x[k], (4, 4, 4, 4))[:, 4 + dy : 4 + dy + 6, 4 + dx : 4 + dx + 7]
        assert torch.equal(out[k], ref.flip(-1) if flip else ref)
    flips = augment_batch(x, idx, ("flip",), 3, 2)
    assert all(
        torch.equal(flips[k], x[k].flip(-1) if int(r[k] // 81 % 2) else x[k]) for k in range(32)
    )
    # channels-last stays channels-last, with the same values; a shard of a batch (data
    # parallel) or a later batch holding the same example gets the same image
    last = augment_batch(
        x.contiguous(memory_format=torch.channels_last), idx, ("crop", "flip"), 3, 2
    )
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, out)
    half = augment_batch(x[16:], idx[16:], ("crop", "flip"), 3, 2)
    assert torch.equal(half, out[16:])
    assert not torch.equal(augment_batch(x, idx, ("crop", "flip"), 3, 3), out)  # next epoch
    counts = (draws(torch.arange(90_000), 0, 0) % 9).bincount()
    assert counts.min() > 9_000 and counts.max() < 11_000  # offsets about uniform


def test_parse_augment_canonical_and_refusals():
    assert parse_augment("none") == () and parse_augment("flip,crop") == ("crop", "flip")
    assert make_config(augment="flip, crop").data.augment == "crop,flip"
    with pytest.raises(ConfigError, match="unknown --augment 'rotate'"):
        parse_augment("crop,rotate")
    with pytest.raises(ConfigError, match="transforms images; --dataset stdlib is text"):
        make_config(dataset="stdlib", method="dt", augment="crop", block="transformer")


def test_augmented_source_augments_training_batches_only():
    x, y = torch.randn(10, 1, 8, 8), torch.arange(10) % 2
    src = Augmented(as_source((x, y)), ("crop", "flip"), seed=1)
    idx = torch.tensor([3, 1, 4])
    xb, yb = src.batch(idx, epoch=0)
    assert torch.equal(xb, augment_batch(x[idx], idx, ("crop", "flip"), 1, 0))
    assert torch.equal(yb, y[idx]) and torch.equal(src.gather(idx)[0], x[idx])
    assert torch.equal(src.tensors()[0], x)  # validation/test: never augmented


def test_augment_resume_is_bit_exact(tmp_path, capsys):
    args = ["--dataset", "digits", "--max-train-samples", "200", "--T", "2", "--block", "mlp",
            "--seed", "3", "--no-progress", "--threads", "1", "--augment", "crop,flip"]  # fmt: skip
    straight, part = tmp_path / "straight", tmp_path / "part"
    assert main(["train", *args, "--epochs", "3", "--out", str(straight)]) == 0
    assert main(["train", *args, "--epochs", "2", "--out", str(part)]) == 0
    assert main(["train", "--resume", str(part), "--epochs", "3", "--no-progress",
                 "--threads", "1"]) == 0  # fmt: skip
    assert without_timing(metrics(part)) == without_timing(metrics(straight))
    a, b = weights(part), weights(straight)
    assert all(_same(a[k], b[k]) for k in a)
    assert json.loads((part / "config.json").read_text())["data"]["augment"] == "crop,flip"
    # augmentation changes the training (it is not silently off)
    plain = [a for a in args if a not in ("--augment", "crop,flip")]
    assert main(["train", *plain, "--epochs", "1", "--out", str(tmp_path / "plain")]) == 0
    assert metrics(tmp_path / "plain")[0]["block_loss"] != metrics(straight)[0]["block_loss"]
    # --augment is part of the experiment: --resume may not change it
    rc, err = cli(["train", "--resume", str(part), "--augment", "none", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "--augment none conflicts")


# --------------------------------------------------------------------------- your own data
def test_folder_trains_resumes_evaluates_and_predicts(tmp_path, capsys):
    data = write_folder(tmp_path / "pets", mode="RGB")
    Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(data / "ant" / "big.png")  # resized
    (data / "bee" / "broken.png").write_bytes(b"not a png")  # skipped
    (data / "cow" / "notes.txt").write_text("ignored")
    out = tmp_path / "run"
    summary = train(out, "--dataset", "folder", "--data-dir", str(data), "--embedding", "prototype")
    err = capsys.readouterr().err
    assert "skipped 1 of 26 images" in err and "1 of 25 images resized to 8×8 (RGB)" in err
    assert summary["num_train"] + summary["num_val"] + summary["num_test"] == 25
    info = json.loads((out / "data.json").read_text())
    assert info["class_names"] == list(CLASSES) and info["in_shape"] == [3, 8, 8]
    assert info["images"] == {"files": 26, "read": 25, "resized": 1, "size": [8, 8], "mode": "RGB"}
    cached = np.load(out / "data" / "x_train.npy", allow_pickle=False)
    assert cached.dtype == np.uint8 and cached.shape == (25, 3, 8, 8)
    # --resume reads the cache (nothing decoded again), checks it, and continues exactly
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert "resized" not in capsys.readouterr().err
    straight = tmp_path / "straight"
    train(straight, "--dataset", "folder", "--data-dir", str(data), "--embedding", "prototype",
          "--epochs", "2")  # fmt: skip
    a, b = weights(out), weights(straight)
    assert all(_same(a[k], b[k]) for k in a)
    assert main(["eval", str(out)]) == 0
    assert main(["predict", str(out), str(data / "cow" / "0.png")]) == 0
    assert capsys.readouterr().out.split("\t")[2] in CLASSES  # input, class, its name, p
    exported = tmp_path / "exported"  # an export knows the shape and classes without the data
    assert main(["export", str(out), "--out", str(exported)]) == 0
    model = noprop.load(exported)
    assert model.class_names == CLASSES and model.in_shape == (3, 8, 8)
    np.save(out / "data" / "y_train.npy", np.zeros(25, dtype=np.int64))  # tampered
    rc, err = cli(["eval", str(out)], capsys)
    assert_one_line_error(rc, err, "does not match the SHA-256")


def test_folder_with_train_and_test_folders_and_greyscale(tmp_path):
    write_folder(tmp_path / "d" / "train", per_class=6)
    write_folder(tmp_path / "d" / "test", per_class=2, seed=1)
    out = tmp_path / "run"
    summary = train(out, "--dataset", "folder", "--data-dir", str(tmp_path / "d"))
    assert summary["num_test"] == 6 and summary["num_train"] + summary["num_val"] == 18
    info = json.loads((out / "data.json").read_text())
    assert info["in_shape"] == [1, 8, 8] and info["test_split"] == "test files"
    assert sorted(p.name for p in (out / "data").iterdir()) == [
        "x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"
    ]  # fmt: skip


def test_npy_memory_mapped_trains_and_resumes(tmp_path, capsys):
    data = write_npy(tmp_path / "arrays", test=12)
    loaded = load_user_dataset(make_config(dataset="npy", data_dir=str(data)).data, seed=0)
    assert isinstance(loaded.splits.train, ArraySource)
    assert isinstance(loaded.splits.train.x, np.memmap)  # read by index, never whole
    out, straight = tmp_path / "run", tmp_path / "straight"
    args = ["--dataset", "npy", "--data-dir", str(data), "--batch-size", "16",
            "--embedding", "prototype", "--augment", "crop,flip"]  # fmt: skip
    summary = train(out, *args, "--epochs", "2")
    assert summary["num_test"] == 12 and summary["test_accuracy"] > 0.5
    info = json.loads((out / "data.json").read_text())
    assert info["max_value"] == 255.0 and info["class_names"] == ["0", "1", "2"]
    assert not (out / "data").exists()  # npy is read in place
    assert main(["train", "--resume", str(out), "--epochs", "3", "--no-progress"]) == 0
    train(straight, *args, "--epochs", "3")  # resumed == uninterrupted, bit for bit
    assert without_timing(metrics(out)) == without_timing(metrics(straight))
    a, b = weights(out), weights(straight)
    assert all(_same(a[k], b[k]) for k in a)
    np.save(data / "y_train.npy", (np.arange(60) + 1) % 3)  # other labels: not the same data
    rc, err = cli(["train", "--resume", str(out), "--epochs", "4", "--no-progress"], capsys)
    assert_one_line_error(rc, err, "not those the run was trained on")


def test_npy_float_arrays_are_used_as_given(tmp_path):
    data = write_npy(tmp_path / "f", dtype=np.float32)
    loaded = load_user_dataset(make_config(dataset="npy", data_dir=str(data)).data, seed=0)
    x = np.load(data / "x_train.npy")
    xb, _ = loaded.splits.train.gather(torch.tensor([0]))
    row = loaded.splits.train.rows[0]
    assert torch.equal(xb[0, 0], torch.from_numpy(x[row]))
    assert loaded.info["mean"] == [0.0] and loaded.info["std"] == [1.0]
    assert loaded.info["test_split"].startswith("held out")
    train(tmp_path / "run", "--dataset", "npy", "--data-dir", str(data))


# --------------------------------------------------------------------------------- errors
def _pickled(d: Path) -> None:
    write_npy(d)
    np.save(d / "y_train.npy", np.array([{"a": 1}] * 60, dtype=object), allow_pickle=True)


def _npy_case(edit):
    def make(d: Path) -> Path:
        write_npy(d)
        edit(d)
        return d

    return make


def _folder_case(edit):
    def make(d: Path) -> Path:
        write_folder(d)
        edit(d)
        return d

    return make


def _unreadable_class(d: Path) -> None:
    for p in (d / "bee").iterdir():
        p.write_bytes(b"garbage")


ERRORS = {
    "folder missing": ("folder", lambda d: d / "nowhere", "is not a directory"),
    "folder without classes": ("folder", lambda d: d, "has no class sub-directories"),
    "empty class": ("folder", _folder_case(lambda d: (d / "dog").mkdir()), "'dog'"),
    "unreadable class": ("folder", _folder_case(_unreadable_class), "could be read"),
    "npy missing": ("npy", lambda d: d, "x_train.npy not found"),
    "pickled labels": ("npy", lambda d: (_pickled(d), d)[1], "Python objects"),
    "length mismatch": (
        "npy",
        _npy_case(lambda d: np.save(d / "y_train.npy", np.arange(59) % 3)),
        "60 images but 59 labels",
    ),
    "float labels": (
        "npy",
        _npy_case(lambda d: np.save(d / "y_train.npy", np.ones(60))),
        "labels must be integers",
    ),
    "negative labels": (
        "npy",
        _npy_case(lambda d: np.save(d / "y_train.npy", -np.ones(60, dtype=np.int64))),
        "labels must be >= 0",
    ),
    "wrong shape": (
        "npy",
        _npy_case(lambda d: np.save(d / "x_train.npy", np.zeros((60, 64), np.uint8))),
        "must have shape (N, C, H, W)",
    ),
    "channels last": (
        "npy",
        _npy_case(lambda d: np.save(d / "x_train.npy", np.zeros((60, 8, 8, 3), np.uint8))),
        "looks channels-last",
    ),
    "int32 pixels": (
        "npy",
        _npy_case(lambda d: np.save(d / "x_train.npy", np.zeros((60, 8, 8), np.int32))),
        "uint8 pixels (0-255) or floats",
    ),
    "nan pixels": (
        "npy",
        _npy_case(lambda d: np.save(d / "x_train.npy", np.full((60, 8, 8), np.nan, np.float32))),
        "NaN or infinite",
    ),
    "half a test split": (
        "npy",
        _npy_case(lambda d: np.save(d / "x_test.npy", np.zeros((4, 8, 8), np.uint8))),
        "only one of x_test.npy and y_test.npy",
    ),
    "truncated array": (
        "npy",
        _npy_case(lambda d: (d / "x_train.npy").write_bytes((d / "x_train.npy").read_bytes()[:-9])),
        "truncated or forged",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_data_is_one_line_and_writes_nothing(tmp_path, capsys, case):
    dataset, make, fragment = ERRORS[case]
    (tmp_path / "d").mkdir()
    data = make(tmp_path / "d")
    out = tmp_path / "out"
    argv = ["train", "--dataset", dataset, "--data-dir", str(data), "--out", str(out), *SMALL]
    rc, err = cli(argv, capsys)
    assert_one_line_error(rc, err, fragment)
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,fragment",
    [
        (["--dataset", "npy"], "--dataset npy reads your own data: give --data-dir DIR"),
        (["--dataset", "stdlib", "--augment", "crop,flip"], "transforms images"),
        (["--augment", "mixup"], "unknown --augment 'mixup'"),
    ],
)
def test_bad_flags_are_one_line_and_write_nothing(tmp_path, capsys, argv, fragment):
    out = tmp_path / "out"
    rc, err = cli(["train", *argv, "--out", str(out), *SMALL], capsys)
    assert_one_line_error(rc, err, fragment)
    assert not out.exists()


def test_pickle_is_never_loaded(tmp_path, monkeypatch, capsys):
    (tmp_path / "d").mkdir()
    _pickled(tmp_path / "d")
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: pytest.fail("unpickled"))
    rc, err = cli(["train", "--dataset", "npy", "--data-dir", str(tmp_path / "d"),
                   "--out", str(tmp_path / "out"), *SMALL], capsys)  # fmt: skip
    assert_one_line_error(rc, err, "refusing to load it")


def test_fit_accepts_a_source_for_every_split():
    x, y = torch.randn(40, 1, 8, 8), torch.arange(40) % 3
    cfg = make_config(T=2, block="mlp", batch_size=16, epochs=1)
    trainer = Trainer(build_method(cfg, (1, 8, 8), 3), cfg, torch.device("cpu"), progress=False)
    records = []
    trainer.fit(TensorSource(x, y), TensorSource(x[:8], y[:8]), test=TensorSource(x[:8], y[:8]),
                on_epoch=lambda t, r: records.append(r))  # fmt: skip
    assert "val_accuracy" in records[0] and "test_accuracy" in records[0]
    step = trainer.step(x[:4], y[:4], 0)  # the single-step API is untouched
    assert "loss" in step and isinstance(Step((0,), torch.arange(2)), Step)


@pytest.mark.parametrize(
    "record",
    [
        {},
        {"in_shape": [3, 8], "class_names": ["a"], "max_value": 255},
        {"in_shape": [3, 1 << 20, 1 << 20], "class_names": ["a"], "max_value": 255},
        {"in_shape": [1000, 8, 8], "class_names": ["a"], "max_value": 255},
        {"in_shape": [1, 8, 8], "class_names": [], "max_value": 255},
        {"in_shape": [1, 8, 8], "class_names": ["a"] * 70_000, "max_value": 255},
        {"in_shape": [1, 8, 8], "class_names": [1, 2], "max_value": 255},
        {"in_shape": [1, 8, 8], "class_names": ["a"], "max_value": float("nan")},
        {"in_shape": "x", "class_names": ["a"], "max_value": 1},
    ],
)
def test_a_hostile_data_json_is_refused_before_anything_is_built(record):
    with pytest.raises(DataError):
        spec_from_record(record, "data.json")
    good = {"in_shape": [1, 8, 8], "class_names": ["a", "b"], "max_value": 255}
    assert spec_from_record(good, "data.json").num_classes == 2
