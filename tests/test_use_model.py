"""Using a trained model: noprop.load / predict / predict_proba, noprop predict, noprop export,
noprop runs, the end-of-run line, and the README's Python snippet (issue 13)."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import noprop
from noprop.cli import main
from noprop.data.datasets import _load_digits
from noprop.runs import load_run

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("use") / "run"
    args = ["train", "--T", "3", "--epochs", "3", "--max-train-samples", "400", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def raw_test() -> tuple[np.ndarray, np.ndarray]:
    raw = _load_digits()  # the digits test split as raw pixels 0..16
    return raw.x_test.astype(np.uint8), raw.y_test


def eval_predictions(run_dir: Path, deterministic: bool) -> torch.Tensor:
    """What `noprop eval` computes: the selected model's prediction on the normalised test split."""
    method, cfg, data, _ = load_run(run_dir, "cpu")
    x = data.test[0]
    torch.manual_seed(cfg.train.seed)
    return method.eval().predict_steps(x, deterministic=deterministic)[-1].argmax(-1)


def test_predict_agrees_with_eval(run, raw_test, tmp_path, capsys):
    x_raw, y = raw_test
    np.save(tmp_path / "digits.npy", x_raw)
    want = eval_predictions(run, deterministic=True)
    model = noprop.load(run, device="cpu")
    assert torch.equal(model.predict(x_raw, deterministic=True), want)  # raw uint8 in
    _, _, data, _ = load_run(run, "cpu")
    assert torch.equal(model.predict(data.test[0], deterministic=True), want)  # normalised floats
    out = tmp_path / "p.json"
    assert (
        main(
            [
                "predict",
                str(run),
                str(tmp_path / "digits.npy"),
                "--deterministic",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = json.loads(out.read_text())
    assert [r["class"] for r in rows] == want.tolist()
    assert all(r["name"] == str(r["class"]) and 0 < r["probability"] <= 1 for r in rows)
    capsys.readouterr()
    assert main(["eval", str(run), "--deterministic"]) == 0
    acc = float(
        re.search(r"test accuracy \(deterministic, 1 runs\): ([0-9.]+)", capsys.readouterr().out)[1]
    )
    assert acc == pytest.approx(float((want == torch.as_tensor(y)).double().mean()), abs=5e-5)


def test_stochastic_predict_repeats_and_chains_average(run, raw_test):
    x_raw, _ = raw_test
    model = noprop.load(run, device="cpu")
    a = model.predict_proba(x_raw[:50], chains=4)
    assert torch.equal(a, model.predict_proba(x_raw[:50], chains=4))  # seeded: repeats exactly
    assert a.shape == (50, 10) and torch.allclose(a.sum(-1), torch.ones(50))
    one = model.predict_proba(x_raw[:50], chains=1, seed=1)
    assert not torch.equal(one, model.predict_proba(x_raw[:50], chains=1, seed=2))
    det = model.predict_proba(x_raw[:50], deterministic=True, chains=16)  # one chain: no noise
    assert torch.equal(det, model.predict_proba(x_raw[:50], deterministic=True))
    assert model.predict(x_raw[0]).shape == (1,)  # one image without the batch dimension


def test_export_round_trip_is_identical_and_holds_no_pickle(run, raw_test, tmp_path):
    x_raw, _ = raw_test
    exported = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(exported)]) == 0
    assert sorted(p.name for p in exported.iterdir()) == [
        "config.json", "model.safetensors", "normalisation.json",
    ]  # fmt: skip
    for p in exported.iterdir():  # neither a pickle nor a torch zip archive
        head = p.read_bytes()[:2]
        assert head[:1] != b"\x80" and head != b"PK", p.name
    from safetensors.torch import load_file

    assert "head.f_out.weight" in load_file(exported / "model.safetensors")
    a, b = noprop.load(run, device="cpu"), noprop.load(exported, device="cpu")
    for kw in ({"deterministic": True}, {"chains": 3}):
        assert torch.equal(a.predict_proba(x_raw, **kw), b.predict_proba(x_raw, **kw))
    assert a.class_names == b.class_names and b.normalisation == a.normalisation
    before = (exported / "model.safetensors").read_bytes()
    assert main(["export", str(run), "--out", str(exported)]) == 2  # refuses to overwrite
    assert (exported / "model.safetensors").read_bytes() == before


def test_predict_reads_idx_and_images(run, raw_test, tmp_path, capsys):
    Image = pytest.importorskip("PIL.Image")
    x_raw, _ = raw_test
    want = noprop.load(run, device="cpu").predict(x_raw[:6], deterministic=True).tolist()
    idx = tmp_path / "t10k-images-idx3-ubyte"
    idx.write_bytes(struct.pack(">IIII", 0x803, 6, 8, 8) + x_raw[:6].tobytes())
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        Image.fromarray(x_raw[i, 0]).save(images / f"img{i}.png")
    for source in (idx, images):
        out = tmp_path / f"{source.name}.csv"
        assert main(["predict", str(run), str(source), "--deterministic", "--out", str(out)]) == 0
        classes = [int(line.split(",")[1]) for line in out.read_text().splitlines()[1:]]
        assert classes == want, source
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(images / "big.png")
    capsys.readouterr()
    assert main(["predict", str(run), str(images / "big.png")]) == 0
    assert "resized to 8×8" in capsys.readouterr().err


def exit_code(argv: list[str]) -> int:
    """``main``'s status, also when argparse refuses a flag's value (it exits)."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize(
    "case",
    ["wrong-shape", "missing", "bad-suffix", "chains", "not-a-run", "pickle-npy"],
)
def test_predict_errors_are_one_line(run, tmp_path, capsys, case):
    bad = tmp_path / "bad.npy"
    args = {
        "wrong-shape": lambda: (np.save(bad, np.zeros((2, 3, 5, 5), np.uint8)), [str(run), str(bad)])[1],
        "missing": lambda: [str(run), str(tmp_path / "nope.npy")],
        "bad-suffix": lambda: (np.save(bad, np.zeros((2, 8, 8), np.uint8)),
                               [str(run), str(bad), "--out", str(tmp_path / "p.txt")])[1],
        "chains": lambda: (np.save(bad, np.zeros((2, 8, 8), np.uint8)), [str(run), str(bad), "--chains", "0"])[1],
        "not-a-run": lambda: (np.save(bad, np.zeros((2, 8, 8), np.uint8)), [str(tmp_path), str(bad)])[1],
        "pickle-npy": lambda: (np.save(bad, np.array([{"a": 1}], dtype=object)), [str(run), str(bad)])[1],
    }[case]()  # fmt: skip
    capsys.readouterr()
    assert exit_code(["predict", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("noprop: error:"), err
    assert not (tmp_path / "p.txt").exists()


def test_runs_lists_status(run, tmp_path, capsys):
    import shutil

    root = tmp_path / "runs"
    (root / "a").mkdir(parents=True)  # stopped before its first checkpoint
    (root / "a" / "config.json").write_text((run / "config.json").read_text())
    shutil.copytree(run, root / "done")
    shutil.copytree(run, root / "nested" / "half")
    (root / "nested" / "half" / "summary.json").unlink()  # a checkpoint, no summary
    capsys.readouterr()
    assert main(["runs", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["status", "method", "dataset"]
    status = {line.split()[-1]: line.split()[0] for line in out[1:]}
    assert status == {
        str(root / "a"): "failed",
        str(root / "done"): "finished",
        str(root / "nested" / "half"): "resumable",
    }
    assert main(["runs", str(tmp_path / "nowhere")]) == 2


def test_end_of_run_line(tmp_path, capsys):
    out = tmp_path / "r"
    assert (
        main(
            [
                "train",
                "--T",
                "2",
                "--epochs",
                "1",
                "--max-train-samples",
                "100",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"val [0-9.]+ · test [0-9.]+ \(deterministic [0-9.]+\) · 1 epochs · [0-9.]+ s · "
        rf"{torch.get_num_threads()} threads? · {re.escape(str(out))}",
        line,
    ), line


def test_export_never_replaces_anything_but_an_export(run, tmp_path, monkeypatch):
    import shutil

    copy = shutil.copytree(run, tmp_path / "copy")
    before = sorted(p.name for p in copy.iterdir())
    for out in (copy, copy / "inner"):  # the run itself, or a directory inside it
        assert main(["export", str(copy), "--out", str(out), "--overwrite"]) == 2
    assert sorted(p.name for p in copy.iterdir()) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["export", str(run), "--out", str(other), "--overwrite"]) == 2
    assert (other / "notes.txt").read_text() == "mine"
    assert main(["export", str(run), "--out", str(tmp_path / "e")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "e"), "--overwrite"]) == 0  # an export
    empty = tmp_path / "here"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert main(["export", str(run), "--out", "."]) == 0  # '.' resolves to the directory
    assert (empty / "model.safetensors").is_file()


def test_exported_directories_are_listed_and_not_resumable(run, tmp_path, capsys):
    out = tmp_path / "runs" / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["runs", str(tmp_path / "runs")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "exported"
    assert main(["train", "--resume", str(out)]) == 2
    assert "holds no training state" in capsys.readouterr().err


def test_predict_refuses_an_existing_out_file_before_inference(run, raw_test, tmp_path):
    x_raw, _ = raw_test
    np.save(tmp_path / "d.npy", x_raw[:4])
    target = tmp_path / "config.json"
    target.write_text("{}")
    assert main(["predict", str(run), str(tmp_path / "d.npy"), "--out", str(target)]) == 2
    assert target.read_text() == "{}"
    assert (
        main(["predict", str(run), str(tmp_path / "d.npy"), "--out", str(target), "--overwrite"])
        == 0
    )
    assert len(json.loads(target.read_text())) == 4


def test_odd_inputs_are_one_line_errors(run, tmp_path):
    model = noprop.load(run, device="cpu")
    from noprop.errors import ConfigError

    for bad in (np.zeros((0, 1, 8, 8), np.uint8), np.zeros((3, 5), np.float32)):
        with pytest.raises(ConfigError, match="do not fit this model"):
            model.predict(bad)
    np.save(tmp_path / "scalar.npy", np.array(3.0))
    assert main(["predict", str(run), str(tmp_path / "scalar.npy")]) == 2
    # any tensor dtype or device: bfloat16 is converted, not a traceback
    assert model.predict(torch.zeros(2, 1, 8, 8, dtype=torch.bfloat16)).shape == (2,)


def test_eval_chains_prints_accuracy_and_seconds_per_chain_count(run, capsys):
    from noprop import evaluate_run

    capsys.readouterr()
    assert main(["eval", str(run), "--chains", "1,4"]) == 0
    printed = capsys.readouterr().out
    assert "deterministic" in printed and "eval_chains.json" in printed
    written = json.loads((run / "eval_chains.json").read_text())
    rows = written["rows"]
    assert [r["chains"] for r in rows] == [0, 1, 4]
    # the FLOPs of one chain travel with the result (the figure reads them without a checkpoint)
    assert written["gflop_per_chain_per_image"] > 0 and "other_busy_cores" in written
    assert all(0 <= r["test_accuracy"] <= 1 and r["seconds"] > 0 for r in rows)
    # one chain is `noprop eval`'s stochastic inference (same seed, batches and draws)
    assert (
        rows[0]["test_accuracy"]
        == evaluate_run(run, deterministic=True, device="cpu")["test_accuracy"]
    )
    assert rows[1]["test_accuracy"] == evaluate_run(run, device="cpu")["test_accuracy"]
    assert exit_code(["eval", str(run), "--chains", "0"]) == 2
