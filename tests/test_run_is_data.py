"""A run directory is data, not instructions (issue 28, point 5; noprop/runs/reading.py).

A run copied from someone else names a ``data_dir`` on the reader's machine. Reading the run
(``eval`` in every mode, ``predict``, ``export``) must not create that directory or download into
it, even online with downloads on in the run's config: it says in one line that the data are not
there and asks for ``--data-dir``; with ``--data-dir`` it reads them there. The data are served by a
local HTTP server on 127.0.0.1 whose files match the checksums, so the old behaviour (create the
directory, download, evaluate) would succeed: the tests fail on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from noprop.cli import main
from noprop.data import download as dl
from noprop.data.text import load_text
from noprop.errors import DataError, DataNotFound
from tests.test_data import sha256, write_idx_set

pytestmark = pytest.mark.usefixtures("isolated_download_env")

TINY = ["--epochs", "1", "--block", "mlp", "--width", "16", "--no-progress", "--threads", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Fake MNIST files and two tiny runs trained on them (dt; ct, whose inference has steps)."""
    root = tmp_path_factory.mktemp("trained")
    data = root / "mnist"
    write_idx_set(data, n_train=40, n_test=10)
    runs = {"data": data}
    for method in ("dt", "ct"):
        out = root / method
        args = ["train", "--method", method, "--dataset", "mnist", "--data-dir", str(data)]
        steps = ["--T", "2"] if method == "dt" else ["--inference-steps", "2"]
        assert main([*args, "--out", str(out), *TINY, *steps, "--no-download"]) == 0
        runs[method] = out
    return runs


@pytest.fixture
def served(http_root: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """MNIST online (a local server, checksums matching; ``$NOPROP_DATA_MIRROR``); returns the list
    every download is recorded in."""
    root, url = http_root
    paths = write_idx_set(root, n_train=40, n_test=10)
    files = tuple(
        dl.RemoteFile(p.name, (dl.Checksum("sha256", sha256(p)),)) for p in paths.values()
    )
    monkeypatch.setitem(dl.SOURCES, "mnist", dl.RemoteSource("http://invalid.example/", files))
    monkeypatch.setenv(dl.MIRROR_ENV, url.rstrip("/"))
    fetched: list[str] = []
    real = dl.download_file

    def recorded(url: str, dest: Path, *args: object, **kw: object) -> None:
        fetched.append(url)
        real(url, dest, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(dl, "download_file", recorded)
    return fetched


def copy_naming(run: Path, to: Path, data_dir: str | None) -> Path:
    """A copy of ``run`` whose config names ``data_dir`` (downloads on), as a shared run might."""
    shutil.copytree(run, to)
    cfg = json.loads((to / "config.json").read_text())
    cfg["data"]["data_dir"] = data_dir
    cfg["data"]["download"] = True
    (to / "config.json").write_text(json.dumps(cfg))
    return to


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("noprop: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


ONE = ["--threads", "1"]
READERS = {
    "eval": ("dt", ["eval", "{run}", *ONE]),
    "eval --chains": ("dt", ["eval", "{run}", "--chains", "1", *ONE]),
    "eval --steps": ("ct", ["eval", "{run}", "--steps", "2", "--solver", "euler", *ONE]),
    "predict": ("dt", ["predict", "{run}", "{inputs}", *ONE]),
    "export": ("dt", ["export", "{run}", "--out", "{tmp}/exported"]),
}


def argv(template: list[str], **where: object) -> list[str]:
    return [a.format(**where) for a in template]


@pytest.mark.parametrize("reader", READERS)
def test_reading_a_copied_run_creates_nothing_outside(
    reader: str,
    trained: dict[str, Path],
    served: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    method, template = READERS[reader]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside = elsewhere / "x" / "mnist"
    run = copy_naming(trained[method], tmp_path / "copied", str(outside))
    before = sorted(p.name for p in run.iterdir())
    inputs = next(trained["data"].glob("t10k-images*"))
    capsys.readouterr()
    rc = main(argv(template, run=run, inputs=inputs, tmp=tmp_path))
    line = error_line(capsys)
    assert rc == 2
    assert list(elsewhere.iterdir()) == [] and not outside.exists()
    assert served == []  # nothing downloaded
    assert f"{run}'s data (mnist) are not in {outside}, which its config names" in line
    if reader.startswith("eval"):
        assert line.endswith("give --data-dir DIR holding them")
    else:  # predict and export have no --data-dir: the run's config says where the data are
        assert f"point data_dir in {run / 'config.json'}" in line
        assert not (tmp_path / "exported").exists()
    assert sorted(p.name for p in run.iterdir()) == before  # eval wrote no eval_*.json either


@pytest.mark.parametrize("reader", ["eval", "eval --chains", "eval --steps"])
def test_eval_data_dir_reads_the_data_there(
    reader: str,
    trained: dict[str, Path],
    served: list[str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    method, template = READERS[reader]
    outside = tmp_path / "elsewhere" / "x"
    run = copy_naming(trained[method], tmp_path / "copied", str(outside))
    original = main(argv(template, run=trained[method]))
    assert original == 0  # the run's own data, where its config names them
    expected = capsys.readouterr().out.splitlines()[0]
    rc = main(argv(template, run=run) + ["--data-dir", str(trained["data"])])
    out = capsys.readouterr().out
    assert rc == 0 and not (tmp_path / "elsewhere").exists() and served == []
    if reader == "eval":  # the same data, the same model, the same seed: the same result
        assert out.splitlines()[0].split(" (")[:2] == expected.split(" (")[:2]
    # the config is left as it was: --data-dir is this reading's, not the run's
    assert json.loads((run / "config.json").read_text())["data"]["data_dir"] == str(outside)


def test_eval_data_dir_that_lacks_the_data(
    trained: dict[str, Path], served: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "not-here"
    rc = main(["eval", str(trained["dt"]), "--data-dir", str(missing), "--threads", "1"])
    line = error_line(capsys)
    assert rc == 2 and not missing.exists() and served == []
    assert f"data files not found in {missing}" in line and "download disabled" in line


def test_default_data_directory_is_not_created_either(
    trained: dict[str, Path],
    served: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A config naming no directory reads the default one ($NOPROP_DATA_DIR/mnist), and does not
    create or download into it either."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("NOPROP_DATA_DIR", str(cache))
    run = copy_naming(trained["dt"], tmp_path / "copied", None)
    rc = main(["eval", str(run), "--threads", "1"])
    line = error_line(capsys)
    assert rc == 2 and not cache.exists() and served == []
    assert f"not in {cache / 'mnist'}, which is its default data directory" in line


def test_your_own_data_moved_away(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--dataset npy: the arrays are not in the recorded directory any more; --data-dir finds them
    (and they are checked against the run's data.json as before)."""
    rng = np.random.default_rng(0)
    arrays = tmp_path / "arrays"
    arrays.mkdir()
    np.save(arrays / "x_train.npy", rng.integers(0, 256, (40, 1, 6, 6), dtype=np.uint8))
    np.save(arrays / "y_train.npy", np.arange(40) % 4)
    run = tmp_path / "run"
    args = ["train", "--dataset", "npy", "--data-dir", str(arrays), "--out", str(run), *TINY]
    assert main(args) == 0
    moved = tmp_path / "moved"
    arrays.rename(moved)
    capsys.readouterr()
    assert main(["eval", str(run), "--threads", "1"]) == 2
    line = error_line(capsys)
    assert f"{run}'s data (npy) are not in {arrays}" in line and "--data-dir DIR" in line
    assert not arrays.exists()
    assert main(["eval", str(run), "--data-dir", str(moved), "--threads", "1"]) == 0
    np.save(moved / "y_train.npy", (np.arange(40) + 1) % 4)  # other labels: not the run's data
    assert main(["eval", str(run), "--data-dir", str(moved), "--threads", "1"]) == 2
    assert "not those the run was trained on" in error_line(capsys)


def test_plot_skips_the_prototypes_of_a_run_without_its_data(
    trained: dict[str, Path], served: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    run = tmp_path / "proto"
    args = ["train", "--dataset", "mnist", "--data-dir", str(trained["data"]), "--out", str(run)]
    assert main([*args, *TINY, "--T", "2", "--embedding", "prototype"]) == 0
    outside = tmp_path / "elsewhere" / "x"
    copied = copy_naming(run, tmp_path / "copied", str(outside))
    capsys.readouterr()
    assert main(["plot", str(copied), "--out", str(tmp_path / "figures")]) == 0
    err = capsys.readouterr().err
    assert f"prototypes-copied.png skipped: {copied}'s data are not in {outside}" in err
    assert not (tmp_path / "elsewhere").exists() and served == []
    assert (tmp_path / "figures" / "per_step-copied.png").is_file()  # the others need no data


def test_loaders_say_not_found_with_where(tmp_path: Path) -> None:
    """The loaders' "not there" is its own error type naming the place (what readers turn into a
    request for --data-dir); data that are there but wrong stay plain DataErrors."""
    with pytest.raises(DataNotFound) as e:
        load_text("tiny-shakespeare", tmp_path / "ts", download=False)
    assert e.value.where == str(tmp_path / "ts") and not (tmp_path / "ts").exists()
    with pytest.raises(DataNotFound) as e:
        load_text("text", tmp_path / "none.txt")
    assert e.value.where == str(tmp_path / "none.txt")
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataError) as bad:
        load_text("text", tmp_path / "empty.txt")
    assert not isinstance(bad.value, DataNotFound)
