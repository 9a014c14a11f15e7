"""``noprop bench reproduce`` on digits: the Table-1 grid, its statistics, caching and resume."""

import json
import math

import pytest
import torch

from noprop import runs as run_mod
from noprop.cli import main
from noprop.errors import ConfigError
from noprop_lab.bench import cell, grid, paper
from noprop_lab.bench import table as tbl

FLAGS = ["--epochs", "1", "--T", "2", "--max-train-samples", "200", "--inference-steps", "5"]
GRID = ["--methods", "dt,fm", "--embeddings", "one-hot,prototype", "--seeds", "0,1"]
CELLS = [f"{m}-{e}-s{s}" for m in ("dt", "fm") for e in ("one-hot", "prototype") for s in (0, 1)]


def _bench(out, *extra):
    return main(["bench", "reproduce", "--out", str(out), "--no-progress", *GRID, *FLAGS, *extra])


def _stamps(out):
    names = ("summary.json", "eval5.json", "checkpoint.pt", "metrics.jsonl")
    return {
        (c, n): (out / "cells" / c / n).stat().st_mtime_ns
        for c in CELLS
        for n in names
        if (out / "cells" / c / n).exists()
    }


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest, and far faster than two on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def counters(monkeypatch):
    calls = {"train": [], "evaluate_run": 0}
    real_train, real_eval = run_mod.train, run_mod.evaluate_run

    def train(cfg, out, **kw):
        calls["train"].append((out.name, kw.get("resume", False)))
        return real_train(cfg, out, **kw)

    def evaluate_run(*a, **kw):
        calls["evaluate_run"] += 1
        return real_eval(*a, **kw)

    monkeypatch.setattr(cell, "train", train)  # where the grid's cells call them
    monkeypatch.setattr(cell, "evaluate_run", evaluate_run)
    return calls


def test_grid_table_cache_and_resume(tmp_path, counters, capsys):
    out = tmp_path / "bench"
    assert _bench(out) == 0
    assert sorted(counters["train"]) == sorted((c, False) for c in CELLS)
    assert counters["evaluate_run"] == len(CELLS)

    # every cell is a normal run directory plus eval5.json with 5 inference runs
    for c in CELLS:
        ev = json.loads((out / "cells" / c / "eval5.json").read_text())
        assert len(ev["test_accuracies"]) == 5 and len(ev["train_accuracies"]) == 5
        assert ev["train_accuracy_samples"] == 200  # the whole (tiny) training split
        assert (out / "cells" / c / "summary.json").is_file()

    table = json.loads((out / "table.json").read_text())
    assert table["dataset"] == "digits" and table["paper_column"] is None
    assert [(r["method"], r["embedding"]) for r in table["rows"]] == [
        ("dt", "one-hot"),
        ("dt", "prototype"),
        ("fm", "one-hot"),
        ("fm", "prototype"),
    ]
    for r in table["rows"]:
        assert r["seeds"] == [0, 1] and r["paper"] is None
        for key in ("train_accuracy", "test_accuracy"):
            stat = r[key]
            assert stat["n"] == 10  # 2 seeds x 5 inference runs
            assert 0 <= stat["mean"] <= 100 and 0 <= stat["stderr"] < 50
            assert math.isfinite(stat["stderr"])
        assert r["data_passes"]["mean"] == (2.0 if r["method"] == "dt" else 1.0)
        assert r["train_seconds"]["mean"] > 0
    md = (out / "table.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| NoProp-")]
    assert len(rows) == 4
    for line in rows:
        assert line.count("±") >= 4 and "n/a" in line  # train, test, deterministic, passes, time
    assert "NoProp-DT (prototype)" in md and "NoProp-FM (one-hot)" in md
    assert "| NoProp-DT (one-hot) | 0,1 |" in capsys.readouterr().out

    # re-running recomputes nothing
    before = _stamps(out)
    n_train = len(counters["train"])
    assert _bench(out) == 0
    assert len(counters["train"]) == n_train and counters["evaluate_run"] == len(CELLS)
    assert _stamps(out) == before
    assert json.loads((out / "table.json").read_text()) == table

    # an interrupted cell (no summary.json) resumes from its checkpoint; the others stay cached
    cell = out / "cells" / "dt-prototype-s1"
    (cell / "summary.json").unlink()
    assert _bench(out) == 0
    assert counters["train"][n_train:] == [("dt-prototype-s1", True)]
    assert counters["evaluate_run"] == len(CELLS) + 1
    assert (cell / "summary.json").is_file()
    assert len((cell / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 was not redone
    after = _stamps(out)
    assert (
        after[("dt-prototype-s1", "checkpoint.pt")] == before[("dt-prototype-s1", "checkpoint.pt")]
    )
    assert {k: v for k, v in after.items() if k[0] != "dt-prototype-s1"} == {
        k: v for k, v in before.items() if k[0] != "dt-prototype-s1"
    }

    # a cell killed before its first checkpoint starts over from its config
    cell = out / "cells" / "fm-one-hot-s0"
    for name in ("summary.json", "checkpoint.pt", "metrics.jsonl", "eval5.json"):
        (cell / name).unlink()
    assert _bench(out) == 0
    assert counters["train"][-1] == ("fm-one-hot-s0", True)
    assert len((cell / "metrics.jsonl").read_text().splitlines()) == 1

    # a different experiment in the same --out is refused before anything is trained
    n_train = len(counters["train"])
    capsys.readouterr()
    assert main(["bench", "reproduce", "--out", str(out), *GRID, *FLAGS[:-2]]) == 2
    assert "--inference-steps 5 (now 1000)" in capsys.readouterr().err
    assert len(counters["train"]) == n_train


def test_grid_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--seeds"):
        grid.build_grid(["dt"], ["one-hot"], [0], {"seed": 1})
    with pytest.raises(ConfigError, match="not available"):
        grid.build_grid(["dt", "nope"], ["one-hot"], [0])
    # a method named by --methods but (not yet) registered is a one-line error, not an ImportError
    monkeypatch.setattr(grid, "METHODS", {"dt": grid.METHODS["dt"]})
    with pytest.raises(ConfigError, match="'fm' is not available; choose from dt"):
        grid.build_grid(["dt", "fm"], ["one-hot"], [0])
    with pytest.raises(ConfigError, match="twice"):
        grid.parse_list("--seeds", "0,0", int)
    with pytest.raises(SystemExit) as e:  # argparse: --seeds takes whole numbers (its type)
        main(["bench", "reproduce", "--out", str(tmp_path / "x"), "--seeds", "a"])
    assert e.value.code == 2
    assert not (tmp_path / "x").exists()


def test_paper_numbers_and_stats():
    assert paper.paper_numbers("dt", "prototype", "mnist") == {
        "train": "99.97±0.0",
        "test": "99.54±0.04",
    }
    assert paper.paper_numbers("fm", "one-hot", "cifar100") == {
        "train": "12.69±10.4",
        "test": "6.38±4.9",
    }
    assert paper.paper_numbers("backprop", "learned", "cifar10")["test"] == "79.3±0.52"
    assert paper.paper_numbers("backprop", "learned", "cifar10", embed_dim=10) is None
    assert paper.paper_numbers("adjoint", "prototype", "mnist") is None
    assert paper.paper_numbers("dt", "one-hot", "digits") is None
    assert len(paper.PAPER_TABLE1) == 13
    mean, se = tbl.mean_stderr([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx((5 / 3) ** 0.5 / 2)
    assert tbl.mean_stderr([7.0]) == (7.0, 0.0)
