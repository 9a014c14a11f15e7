"""``noprop lm compare`` end to end at toy scale: the report, its accounting, reuse, and bad input."""

from __future__ import annotations

import json
import math

import pytest

from noprop.bench import lm as lm_compare
from noprop.cli import main

from .test_language import _write_corpus
from .test_reliability import assert_one_line_error

TINY = ["--layers", "2", "--width", "32", "--heads", "2", "--context", "16", "--batch-size", "8",
        "--minutes", "0.03", "--eval-windows", "6", "--sample-bytes", "12", "--chains", "2",
        "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    corpus = _write_corpus(root / "corpus.txt", 12_000)
    out = root / "cmp"
    argv = ["lm", "compare", "--dataset", "text", "--data-dir", str(corpus), "--out", str(out)]
    assert main([*argv, *TINY]) == 0
    return argv, out


def test_the_report_is_written_and_consistent(compared):
    _, out = compared
    for name in ("report.md", "report.json", "trajectory.png", "plan.json"):
        assert (out / name).is_file()
    for name in lm_compare.NAMES:  # two ordinary run directories
        assert (out / name / "summary.json").is_file() and (out / name / "config.json").is_file()
    r = json.loads((out / "report.json").read_text())
    plan = r["plan"]
    for name in lm_compare.NAMES:
        run = r["runs"][name]
        # the FLOPs trained are the tokens trained times the counted FLOPs per token
        assert run["train_flops"] == pytest.approx(
            run["train_tokens"] * plan["runs"][name]["flops_per_token"]
        )
        assert run["train_seconds"] > 0 and run["peak_rss_mib"] > 0
        assert math.isfinite(run["test"]["bits_per_byte"])
        # one read-out per depth: the embedding / z_0 plus one per layer / block
        assert len(r["trajectory"][name]) == 2 + 1
        assert isinstance(r["samples"][name], str)
    # the equal budget: both models' planned FLOPs are the budget within one step of windows
    for name in lm_compare.NAMES:
        assert plan["runs"][name]["planned_flops"] == pytest.approx(plan["budget_flops"], rel=0.2)
    noprop = r["runs"]["noprop"]["test"]
    assert noprop["chains"] == 2 and {"deterministic", "one_chain"} <= set(noprop)
    assert r["unigram_bits_per_byte"] > 0
    md = (out / "report.md").read_text()
    assert "## Discussion" in md and "What this does not show" in md


def test_a_rerun_reuses_the_finished_runs(compared):
    argv, out = compared
    before = {n: (out / n / "checkpoint.pt").stat().st_mtime_ns for n in lm_compare.NAMES}
    assert main([*argv, *TINY]) == 0
    r = json.loads((out / "report.json").read_text())
    assert all(r["runs"][n]["reused"] for n in lm_compare.NAMES)
    assert all(
        r["runs"][n]["peak_rss_mib"] > 0 for n in lm_compare.NAMES
    )  # kept from the first run
    assert before == {n: (out / n / "checkpoint.pt").stat().st_mtime_ns for n in lm_compare.NAMES}


def test_the_parameter_match_is_the_closest_width(compared):
    """At a realistic size the search meets both tolerances (parameters 5%, FLOPs 10%)."""
    _, out = compared
    r = json.loads((out / "report.json").read_text())
    m = r["plan"]["matching"]
    assert m["non_embedding_ratio"] > 0 and m["flops_per_token_ratio"] > 0


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--minutes", "0"], "--minutes must be > 0"),
        (["--layers", "0"], "--layers must be >= 1"),
        (["--dataset", "text"], "--data-dir"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, extra, needle):
    out = tmp_path / "cmp"
    code = main(["lm", "compare", "--out", str(out), *TINY, *extra])
    assert_one_line_error(code, capsys.readouterr().err, needle)
    assert not out.exists()  # nothing written
