"""Bad input through the real CLI (issue 6): one line on stderr, exit code 2, nothing written.

Each case builds its inputs under ``tmp_path`` and names a path to watch (``--out`` or the run
directory): it must still be absent afterwards, or byte-identical (same names, bytes, inodes and
mtimes) if it existed. Most cases call :func:`noprop.cli.main` in-process (fast); a few run
``python -m noprop`` in a subprocess. Raw IDX/CIFAR files are uint8, so NaN/inf cannot occur in them:
the finiteness check (``validate_arrays``) is exercised by poisoning the bundled digits in-process.
The parsers themselves are fuzzed in ``tests/test_data.py``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from noprop.cli import main
from noprop.data import datasets as ds
from noprop.data import download as dl

from .problems import poison_digits
from .test_reliability import assert_one_line_error, snapshot

SRC = Path(__file__).resolve().parents[1] / "src"
SMALL = ["--T", "2", "--epochs", "2", "--block", "mlp", "--no-progress", "--threads", "1"]
DIGITS = ["--dataset", "digits", "--max-train-samples", "200", *SMALL]


@dataclass
class Ctx:
    tmp: Path
    shared_run: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    def run(self) -> Path:
        """A private copy of a finished run made with ``DIGITS`` flags."""
        dst = self.tmp / "run"
        if not dst.exists():
            shutil.copytree(self.shared_run, dst)
        return dst


@dataclass
class Case:
    argv: list[str]
    watch: Path  # must be unchanged (absent stays absent)
    fragment: str  # must appear in the error line


# ----------------------------------------------------------------------------- data files


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    magic = magic if magic is not None else (0x801 if array.ndim == 1 else 0x803)
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(
    directory: Path,
    *,
    n_train: int = 20,
    n_labels: int | None = None,
    labels: np.ndarray | None = None,
) -> Path:
    """Four tiny uncompressed IDX files; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    n_labels = n_train if n_labels is None else n_labels
    arrays = {
        ds.IDX_FILES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        ds.IDX_FILES[1]: np.arange(n_labels, dtype=np.uint8) % 10 if labels is None else labels,
        ds.IDX_FILES[2]: rng.integers(0, 256, (10, 28, 28), dtype=np.uint8),
        ds.IDX_FILES[3]: np.arange(10, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        (directory / stem).write_bytes(idx_bytes(array))
    return directory


def mnist_argv(c: Ctx, data: Path) -> list[str]:
    return ["train", "--dataset", "mnist", "--data-dir", str(data), "--no-download", *SMALL]


def case_missing_data_offline(c: Ctx) -> Case:
    (c.tmp / "empty").mkdir()
    argv = mnist_argv(c, c.tmp / "empty")
    return Case([*argv, "--out", str(c.out)], c.out, "data files not found")


def case_idx_wrong_magic(c: Ctx) -> Case:
    data = write_mnist(c.tmp / "d")
    images = (data / ds.IDX_FILES[0]).read_bytes()
    (data / ds.IDX_FILES[0]).write_bytes(b"\x00\x00\x08\x04" + images[4:])
    return Case([*mnist_argv(c, data), "--out", str(c.out)], c.out, "bad IDX magic number")


def case_idx_truncated(c: Ctx) -> Case:
    data = write_mnist(c.tmp / "d")
    path = data / ds.IDX_FILES[0]
    path.write_bytes(path.read_bytes()[:-100])
    return Case([*mnist_argv(c, data), "--out", str(c.out)], c.out, "truncated IDX file")


def case_gz_not_gzip(c: Ctx) -> Case:
    data = write_mnist(c.tmp / "d")
    path = data / ds.IDX_FILES[1]
    path.rename(data / f"{ds.IDX_FILES[1]}.gz")  # raw IDX under a .gz name
    return Case([*mnist_argv(c, data), "--out", str(c.out)], c.out, "is not gzip")


def case_gzip_corrupt(c: Ctx) -> Case:
    data = write_mnist(c.tmp / "d")
    path = data / ds.IDX_FILES[1]
    packed = gzip.compress(path.read_bytes())
    path.unlink()
    (data / f"{ds.IDX_FILES[1]}.gz").write_bytes(packed[: len(packed) // 2])
    return Case([*mnist_argv(c, data), "--out", str(c.out)], c.out, "gzip data is truncated")


def case_cifar_truncated(c: Ctx) -> Case:
    folder = c.tmp / "c" / dl.CIFAR10_DIR
    folder.mkdir(parents=True)
    record = np.zeros((4, 1 + 3072), np.uint8)
    for name in dl.CIFAR10_FILES:
        (folder / name).write_bytes(record.tobytes())
    (folder / dl.CIFAR10_FILES[2]).write_bytes(record.tobytes()[:-7])
    argv = ["train", "--dataset", "cifar10", "--data-dir", str(c.tmp / "c"), "--no-download"]
    return Case([*argv, *SMALL, "--out", str(c.out)], c.out, "not a multiple")


def case_labels_out_of_range(c: Ctx) -> Case:
    labels = np.arange(20, dtype=np.uint8) % 10
    labels[7] = 10
    data = write_mnist(c.tmp / "d", labels=labels)
    return Case([*mnist_argv(c, data), "--out", str(c.out)], c.out, "labels must lie in [0, 10)")


def case_count_mismatch(c: Ctx) -> Case:
    data = write_mnist(c.tmp / "d", n_train=20, n_labels=19)
    return Case([*mnist_argv(c, data), "--out", str(c.out)], c.out, "20 images but 19 labels")


def case_empty_dataset(c: Ctx) -> Case:
    data = write_mnist(c.tmp / "d", n_train=0)
    return Case([*mnist_argv(c, data), "--out", str(c.out)], c.out, "the data set is empty")


def case_nan_inputs(c: Ctx) -> Case:
    poison_digits(c.monkeypatch, c.tmp, {(5, 3 * 8 + 3): np.inf, (9, 0): np.nan})
    return Case(["train", *DIGITS, "--out", str(c.out)], c.out, "NaN or infinite")


def case_max_train_samples_too_large(c: Ctx) -> Case:
    argv = ["train", *DIGITS, "--max-train-samples", "100000", "--out", str(c.out)]
    return Case(argv, c.out, "max_train_samples=100000 exceeds")


# ---------------------------------------------------------------------------------- flags


def _flag_case(extra: list[str], fragment: str) -> Callable[[Ctx], Case]:
    def build(c: Ctx) -> Case:
        return Case(["train", *DIGITS, *extra, "--out", str(c.out)], c.out, fragment)

    return build


FLAG_CASES = {
    "unknown-method": (["--method", "nope"], "unknown --method 'nope'"),
    "unknown-embedding": (["--embedding", "nope"], "unknown --embedding 'nope'"),
    "unknown-dataset": (["--dataset", "nope"], "unknown --dataset 'nope'"),
    "unknown-block": (["--block", "nope"], "unknown --block 'nope'"),
    "T-zero": (["--T", "0"], "--T must be >= 1"),
    "T-negative": (["--T", "-3"], "--T must be >= 1"),
    "T-not-an-int": (["--T", "2.5"], "argument --T: must be a whole number (got '2.5')"),
    "lr-zero": (["--lr", "0"], "--lr must be a finite number > 0"),
    "lr-negative": (["--lr", "-0.1"], "--lr must be a finite number > 0"),
    "lr-nan": (["--lr", "nan"], "--lr must be a finite number > 0"),
    "lr-inf": (["--lr", "inf"], "--lr must be a finite number > 0"),
    "batch-size-zero": (["--batch-size", "0"], "--batch-size must be >= 1"),
    "batch-size-negative": (["--batch-size", "-8"], "--batch-size must be >= 1"),
    "epochs-zero": (["--epochs", "0"], "--epochs must be >= 1"),
    "val-fraction-one": (["--val-fraction", "1"], "--val-fraction must be in [0, 1)"),
    "eta-inf": (["--eta", "inf"], "--eta must be a finite number > 0"),
    "seed-negative": (["--seed", "-1"], "--seed must be >= 0"),
    "alpha-bar-order": (["--alpha-bar-min", "0.9", "--alpha-bar-max", "0.5"], "--alpha-bar-min"),
    "unknown-device": (["--device", "mps"], "unknown --device 'mps'"),
    "threads-zero": (["--threads", "0"], "--threads must be >= 1"),
    "unknown-flag": (["--frobnicate"], "unrecognized arguments: --frobnicate"),
}


# ------------------------------------------------------------------------ run directories


def case_resume_not_a_run(c: Ctx) -> Case:
    d = c.tmp / "plain"
    d.mkdir()
    (d / "notes.txt").write_text("hello")
    return Case(["train", "--resume", str(d)], d, "is not a noprop run directory")


def case_resume_missing_dir(c: Ctx) -> Case:
    d = c.tmp / "nowhere"
    return Case(["train", "--resume", str(d)], d, "no such run directory")


def case_resume_conflicting_flag(c: Ctx) -> Case:
    run = c.run()
    return Case(
        ["train", "--resume", str(run), "--T", "3"], run, "--T 3 conflicts with the run's 2"
    )


def case_resume_conflicting_method(c: Ctx) -> Case:
    run = c.run()
    argv = ["train", "--resume", str(run), "--method", "backprop"]
    return Case(argv, run, "--method backprop conflicts with the run's 'dt'")


def case_resume_and_other_out(c: Ctx) -> Case:
    run = c.run()
    argv = ["train", "--resume", str(run), "--out", str(c.out)]
    return Case(argv, run, "either --resume RUN_DIR or --out")


def case_out_holds_different_run(c: Ctx) -> Case:
    run = c.run()
    argv = ["train", *DIGITS, "--T", "3", "--out", str(run)]
    return Case(argv, run, "already holds a different run; use --resume")


def case_out_holds_same_run(c: Ctx) -> Case:
    run = c.run()
    return Case(["train", *DIGITS, "--out", str(run)], run, "already holds a run with the same")


def case_out_holds_files(c: Ctx) -> Case:
    c.out.mkdir()
    (c.out / "thesis.tex").write_text("precious")
    return Case(
        ["train", *DIGITS, "--out", str(c.out)],
        c.out,
        "already holds files that are not a noprop run",
    )


def case_out_is_a_file(c: Ctx) -> Case:
    c.out.write_text("precious")
    return Case(["train", *DIGITS, "--out", str(c.out)], c.out, "exists and is not a directory")


def case_out_under_a_file(c: Ctx) -> Case:
    """Unwritable even for root: a path below a regular file."""
    blocker = c.tmp / "blocker"
    blocker.write_text("a regular file")
    out = blocker / "sub" / "run"
    return Case(["train", *DIGITS, "--out", str(out)], blocker, "cannot write to --out")


def case_out_in_read_only_dir(c: Ctx) -> Case:
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 0o500 does not block writes (see out-under-a-file)")
    ro = c.tmp / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    return Case(["train", *DIGITS, "--out", str(ro / "run")], ro, "permission denied")


def case_overwrite_with_missing_data(c: Ctx) -> Case:
    """--overwrite must not touch the old run when the new one is rejected."""
    run = c.run()
    (c.tmp / "empty").mkdir()
    argv = [*mnist_argv(c, c.tmp / "empty"), "--out", str(run), "--overwrite"]
    return Case(argv, run, "data files not found")


def case_eval_not_a_run(c: Ctx) -> Case:
    (c.tmp / "empty").mkdir()
    return Case(["eval", str(c.tmp / "empty")], c.tmp / "empty", "is not a noprop run directory")


def case_eval_runs_zero(c: Ctx) -> Case:
    run = c.run()
    return Case(["eval", str(run), "--runs", "0"], run, "argument --runs: must be >= 1 (got 0)")


def case_eval_unknown_device(c: Ctx) -> Case:
    run = c.run()
    return Case(["eval", str(run), "--device", "tpu"], run, "unknown --device 'tpu'")


CASES: dict[str, Callable[[Ctx], Case]] = {
    "missing-data-offline": case_missing_data_offline,
    "idx-wrong-magic": case_idx_wrong_magic,
    "idx-truncated": case_idx_truncated,
    "gz-not-gzip": case_gz_not_gzip,
    "gzip-corrupt": case_gzip_corrupt,
    "cifar-truncated": case_cifar_truncated,
    "labels-out-of-range": case_labels_out_of_range,
    "count-mismatch": case_count_mismatch,
    "empty-dataset": case_empty_dataset,
    "nan-inf-inputs": case_nan_inputs,
    "max-train-samples-too-large": case_max_train_samples_too_large,
    **{name: _flag_case(*spec) for name, spec in FLAG_CASES.items()},
    "resume-not-a-run": case_resume_not_a_run,
    "resume-missing-dir": case_resume_missing_dir,
    "resume-conflicting-T": case_resume_conflicting_flag,
    "resume-conflicting-method": case_resume_conflicting_method,
    "resume-and-other-out": case_resume_and_other_out,
    "out-holds-different-run": case_out_holds_different_run,
    "out-holds-same-run": case_out_holds_same_run,
    "out-holds-files": case_out_holds_files,
    "out-is-a-file": case_out_is_a_file,
    "out-under-a-file": case_out_under_a_file,
    "out-in-read-only-dir": case_out_in_read_only_dir,
    "overwrite-with-missing-data": case_overwrite_with_missing_data,
    "eval-not-a-run": case_eval_not_a_run,
    "eval-runs-zero": case_eval_runs_zero,
    "eval-unknown-device": case_eval_unknown_device,
}
SUBPROCESS_CASES = ["missing-data-offline", "unknown-method", "out-under-a-file"]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network, no user cache, no test hooks."""
    monkeypatch.setenv(ds.DATA_DIR_ENV, str(tmp_path / "default-cache"))
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    monkeypatch.delenv("NOPROP_TEST_PAUSE_AT", raising=False)
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shared") / "run"
    assert main(["train", *DIGITS, "--out", str(out)]) == 0
    return out


@pytest.fixture
def ctx(tmp_path: Path, shared_run: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Ctx]:
    monkeypatch.chdir(tmp_path)
    yield Ctx(tmp_path, shared_run, monkeypatch)
    ro = tmp_path / "ro"
    if ro.exists():
        ro.chmod(0o700)  # let pytest clean up


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_in_process(name: str, ctx: Ctx, capsys: pytest.CaptureFixture[str]) -> None:
    case = CASES[name](ctx)
    before = snapshot(case.watch)
    capsys.readouterr()
    try:
        rc = main(case.argv)
    except SystemExit as e:  # argparse
        rc = e.code
    out, err = capsys.readouterr()
    assert_one_line_error(rc, err, case.fragment)
    assert out == ""
    assert snapshot(case.watch) == before
    assert not (ctx.tmp / "runs").exists()  # the default --out (cwd is tmp_path)


@pytest.mark.parametrize("name", SUBPROCESS_CASES)
def test_bad_input_in_a_real_process(name: str, ctx: Ctx) -> None:
    case = CASES[name](ctx)
    before = snapshot(case.watch)
    proc = subprocess.run(
        [sys.executable, "-m", "noprop", *case.argv],
        env={**os.environ, "PYTHONPATH": str(SRC)},
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ctx.tmp,
    )
    assert_one_line_error(proc.returncode, proc.stderr, case.fragment)
    assert proc.stdout == ""
    assert snapshot(case.watch) == before
    assert not (ctx.tmp / "runs").exists()
