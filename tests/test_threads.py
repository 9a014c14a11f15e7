"""Reproducible by default (issue 20, point 4): the thread count is said, recorded and kept.

The numbers depend on torch's CPU thread count. When the start-up load check (noprop/runtime.py)
caps it, ``noprop train`` says so in one line on stderr; a run records its count in config.json
(``--threads``) and summary.json, prints it in the end-of-run line, and ``--resume`` keeps the
recorded count unless ``--threads`` is given again.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import pytest
import torch

from noprop import runtime
from noprop.cli import main

# the module (``noprop.runs.train`` as an attribute is the function of that name)
train_module = importlib.import_module("noprop.runs.train")

TINY = ["train", "--dataset", "digits", "--max-train-samples", "100", "--T", "2", "--block", "mlp"]
TINY += ["--no-progress"]
CORES = os.cpu_count() or 1


@pytest.fixture(autouse=True)
def _threads_restored():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def capped(monkeypatch):
    """As if other jobs kept 1.2 cores busy at start-up and noprop capped torch to 1 thread."""
    monkeypatch.setattr(runtime, "STARTUP", {"decided_by": "load at start-up",
        "other_busy_cores": 1.2, "set": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}})  # fmt: skip
    monkeypatch.setattr(train_module, "_SAID", set())
    torch.set_num_threads(1)


def config_threads(run: Path) -> int | None:
    return json.loads((run / "config.json").read_text())["train"].get("threads")


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def test_the_note_says_how_many_threads_why_and_how_to_override(capped):
    note = runtime.thread_cap_note(1)
    assert note == (
        f"noprop: other jobs busy 1.2 cores: using 1 torch thread (--threads {CORES} to override; "
        "results depend on the thread count)"
    )
    assert runtime.thread_cap_note(2) is None  # set otherwise since start-up: not the cap
    recorded = runtime.thread_cap_note(2, recorded=True)
    assert recorded is not None and "keeping the run's recorded 2 torch threads" in recorded
    assert "--threads 1 to override" in recorded
    assert runtime.thread_cap_note(1, recorded=True) is None  # the recorded count is the cap


def test_no_note_without_a_cap(monkeypatch):
    monkeypatch.setattr(runtime, "STARTUP", {"decided_by": "load at start-up",
                                             "other_busy_cores": 0.1, "set": {}})  # fmt: skip
    assert runtime.thread_cap() is None and runtime.thread_cap_note(1) is None
    monkeypatch.setattr(
        runtime, "STARTUP", {"decided_by": "user or torch already loaded", "set": {}}
    )
    assert runtime.thread_cap_note(1) is None


def test_train_says_the_cap_once_and_records_the_count(capped, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    notes = [ln for ln in captured.err.splitlines() if ln.startswith("noprop: other jobs busy")]
    assert notes == [runtime.thread_cap_note(1)]
    last = captured.out.strip().splitlines()[-1]
    assert " · 1 thread · " in last, last  # the end-of-run line
    assert config_threads(out) == 1 and summary(out)["num_threads"] == 1


def test_an_explicit_thread_count_is_recorded_without_a_note(capped, tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--threads", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "other jobs busy" not in captured.err
    assert " · 2 threads · " in captured.out
    assert config_threads(out) == 2 and summary(out)["num_threads"] == 2
    assert torch.get_num_threads() == 1  # train() restores the caller's count


def test_resume_keeps_the_recorded_count_unless_given_again(tmp_path, capsys):
    out = tmp_path / "run"
    torch.set_num_threads(1)
    assert main([*TINY, "--epochs", "1", "--out", str(out)]) == 0
    assert config_threads(out) == 1
    torch.set_num_threads(2)  # another process, another default
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert summary(out)["num_threads"] == 1 and summary(out)["epochs"] == 2
    assert " · 1 thread · " in capsys.readouterr().out
    argv = ["train", "--resume", str(out), "--epochs", "3", "--threads", "2", "--no-progress"]
    assert main(argv) == 0
    assert summary(out)["num_threads"] == 2  # the override is used ...
    assert config_threads(out) == 1  # ... and config.json keeps what the run started with
    assert torch.get_num_threads() == 2


def test_resume_on_a_capped_machine_says_it_keeps_the_recorded_count(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--threads", "2", "--out", str(out)]) == 0
    monkeypatch.setattr(runtime, "STARTUP", {"decided_by": "load at start-up",
        "other_busy_cores": 1.2, "set": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}})  # fmt: skip
    monkeypatch.setattr(train_module, "_SAID", set())
    torch.set_num_threads(1)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "keeping the run's recorded 2 torch threads (--threads 1 to override" in err
    assert summary(out)["num_threads"] == 2


def test_a_run_recorded_without_a_thread_count_resumes_with_the_process_count(tmp_path):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--threads", "2", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    del cfg["train"]["threads"]  # as written before the count was recorded
    (out / "config.json").write_text(json.dumps(cfg))
    torch.set_num_threads(1)
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert summary(out)["num_threads"] == 1
