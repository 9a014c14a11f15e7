"""``noprop lm compare`` end to end at toy scale: the report, its accounting, reuse, and bad input;
the model registry, the width matching of every entry, the depth sweep, and the report template."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from noprop.cli import build_parser, main
from noprop.config import RunConfig
from noprop.errors import ConfigError
from noprop.flags import given_flags
from noprop.methods import METHODS
from noprop.tasks import task_for
from noprop_lab.bench import lm as lm_compare
from noprop_lab.bench.lm import compare, figures, matching, registry, report

from .test_language import _write_corpus
from .test_reliability import assert_one_line_error

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--layers", "2", "--width", "32", "--heads", "2", "--context", "16", "--batch-size", "8",
        "--minutes", "0.03", "--eval-windows", "6", "--sample-bytes", "12", "--chains", "2",
        "--no-progress"]  # fmt: skip
#: the smallest size found where every entry can meet both tolerances at k = 1 and 2 (narrower
#: models are dominated by the 256-wide label branch and output layer, which no width trades off)
MATCHABLE = ["--layers", "2", "--width", "192", "--heads", "4", "--context", "16",
             "--embedding", "learned", "--embed-dim", "16"]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _write_corpus(tmp_path_factory.mktemp("lm") / "corpus.txt", 12_000)


@pytest.fixture(scope="module")
def compared(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("lm") / "cmp"
    argv = ["lm", "compare", "--dataset", "text", "--data-dir", str(corpus), "--out", str(out)]
    assert main([*argv, *TINY]) == 0
    return argv, out


def test_the_report_is_written_and_consistent(compared):
    _, out = compared
    for name in ("report.md", "report.json", "trajectory.png", "plan.json"):
        assert (out / name).is_file()
    assert not (out / "depth.png").exists()  # one k: no depth sweep
    for name in lm_compare.NAMES:  # two ordinary run directories
        assert (out / name / "summary.json").is_file() and (out / name / "config.json").is_file()
    r = json.loads((out / "report.json").read_text())
    plan = r["plan"]
    assert r["order"] == list(lm_compare.NAMES) == list(plan["runs"])
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
        assert math.isfinite(run["test"]["fair"]["bits_per_byte"])  # the fair read-out
    # the tuned lens of the back-prop model: one row per state; at the last layer the model itself
    lens = r["runs"]["backprop"]["test"]["tuned_lens"]
    assert [t["depth"] for t in lens] == [0, 1, 2]
    assert lens[-1]["tuned_lens_bits_per_byte"] == pytest.approx(
        lens[-1]["logit_lens_bits_per_byte"]
    )
    md = (out / "report.md").read_text()
    assert "## Logit lens and tuned lens (back-prop)" in md and "fair read-out" in md
    # the equal budget: both models' planned FLOPs are the budget within one step of windows
    for name in lm_compare.NAMES:
        assert plan["runs"][name]["planned_flops"] == pytest.approx(plan["budget_flops"], rel=0.2)
    # the default comparison is the first version's: back-prop and DT as "noprop", one layer a block
    assert plan["runs"]["noprop"]["config"] | {"width": None} == {
        "method": "dt", "T": 2, "width": None, "heads": 2, "block_layers": 1,
        "embedding": "one-hot", "context": 16, "embed_dim": 256,
    }  # fmt: skip
    assert plan["matching"] == plan["runs"]["noprop"]["matching"]  # where the first version kept it
    noprop = r["runs"]["noprop"]["test"]
    assert noprop["chains"] == 2 and {"deterministic", "one_chain"} <= set(noprop)
    assert r["unigram_bits_per_byte"] > 0
    md = (out / "report.md").read_text()
    assert "## Discussion" in md and "What this does not show" in md
    assert "$" not in md.split("## Samples")[0]  # every placeholder filled (samples may hold "$")


def test_the_printed_line_reports_the_readout_chosen_on_validation(compared):
    """``lm compare``'s last line: each run's fair read-out (name, S, raw and calibrated bits) and
    the paper's read-out where it differs, not the first version's deterministic chain."""
    from noprop_lab.bench.lm import summary_line

    _, out = compared
    r = json.loads((out / "report.json").read_text())
    line = summary_line(r)
    fair = r["runs"]["noprop"]["test"]["fair"]
    shown = fair["readout"] + (f"×{fair['chains']}" if fair["chains"] > 1 else "")
    assert (
        f"NoProp-LM {shown} {fair['bits_per_byte']:.3f} ({fair['bits_per_byte_calibrated']:.3f}"
        in line
    )
    assert f"the paper's {fair['paper_readout']} {fair['paper']['bits_per_byte']:.3f}" in line
    bp = r["runs"]["backprop"]["test"]["fair"]
    assert f"back-prop transformer output {bp['bits_per_byte']:.3f}" in line
    assert "deterministic" not in line


def test_a_rerun_reuses_the_finished_runs(compared):
    argv, out = compared
    before = {n: (out / n / "checkpoint.pt").stat().st_mtime_ns for n in lm_compare.NAMES}
    evals = {n: (out / "evaluation" / f"{n}.json").stat().st_mtime_ns for n in lm_compare.NAMES}
    assert main([*argv, *TINY]) == 0
    r = json.loads((out / "report.json").read_text())
    assert all(r["runs"][n]["reused"] for n in lm_compare.NAMES)
    assert all(
        r["runs"][n]["peak_rss_mib"] > 0 for n in lm_compare.NAMES
    )  # kept from the first run
    assert before == {n: (out / n / "checkpoint.pt").stat().st_mtime_ns for n in lm_compare.NAMES}
    # and their evaluations: same runs, same evaluation options
    assert evals == {
        n: (out / "evaluation" / f"{n}.json").stat().st_mtime_ns for n in lm_compare.NAMES
    }


def test_the_parameter_match_is_the_closest_width(compared):
    """At this toy size no width meets both tolerances; the report says so."""
    _, out = compared
    r = json.loads((out / "report.json").read_text())
    m = r["plan"]["matching"]
    assert m["non_embedding_ratio"] > 0 and m["flops_per_token_ratio"] > 0
    assert "Parameters matched within 5%: NO" in (out / "report.md").read_text()


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--minutes", "0"], "argument --minutes: must be a number in (0, 527040] (got 0.0)"),
        (["--minutes", "inf"], "argument --minutes: must be a number in (0, 527040]"),
        (["--layers", "0"], "argument --layers: must be >= 1 (got 0)"),
        (["--dataset", "text"], "--data-dir"),
        (["--models", "backprop,gpt"], "--models: unknown model 'gpt'; known: backprop, dt"),
        (["--models", "dt,dt"], "--models lists a model twice"),
        (["--models", ","], "--models needs at least one model"),
        (["--layers-per-block", "3"], "--layers-per-block 3 does not divide --layers 2"),
        (["--layers-per-block", "1,x"], "--layers-per-block: must be a comma-separated list"),
        (["--layers-per-block", "0,1"], "--layers-per-block: values must be >= 1 (got 0)"),
        (["--inference-steps", "0"], "--inference-steps: must be >= 1"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, extra, needle):
    out = tmp_path / "cmp"
    try:
        code = main(["lm", "compare", "--out", str(out), *TINY, *extra])
    except SystemExit as e:  # argparse: a number its type refuses (noprop.arguments)
        code = e.code
    assert_one_line_error(code, capsys.readouterr().err, needle)
    assert not out.exists()  # nothing written


# ------------------------------------------------------------------------------------ registry
def _ns(*argv: str):
    return build_parser().parse_args(["lm", "compare", "--out", "unused", *argv])


@pytest.mark.parametrize("name", ["stdlib", "tiny-shakespeare", "depth-tiny-shakespeare"])
def test_a_committed_plan_is_reused_by_its_own_command(name):
    """A plan is reused while the arguments are the same; options added after it was written count
    as given at their default (the first version's plans predate --models and --precision, the
    depth sweep's records them), and a changed value makes a new plan."""
    d = ROOT / "experiments" / "lm" / name
    recorded = json.loads((d / "plan.json").read_text())["args"]
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in recorded.items() if v is not None]
    ns = _ns(*argv)
    assert compare.same_args(recorded, ns)
    assert compare.same_args({k: v for k, v in recorded.items() if k != "precision"}, ns)
    assert not compare.same_args(recorded, _ns(*argv, "--precision", "bf16-mixed"))
    assert not compare.same_args(recorded, _ns(*argv, "--seed", "7"))


def test_the_registry_has_one_entry_per_model():
    assert {"backprop", "dt", "ct", "fm", "diffusionblocks"} <= set(registry.ENTRIES)
    ns = _ns(*TINY)
    shared = compare.shared_options(ns)
    names = []
    for name, entry in registry.ENTRIES.items():
        assert entry.name == name and entry.method in METHODS
        for k in (1, 2):
            spec = registry.RunSpec(entry, k)
            cfg = entry.config(shared, ns, 8, k)
            assert cfg.method.method == entry.method and cfg.model.width == 8
            if entry.blockwise:  # T = L / k blocks of k layers
                assert (cfg.options.T, cfg.model.block_layers) == (2 // k, k)
            else:  # one network of all L layers (the back-prop transformer: T layers)
                assert (cfg.model.block_layers, getattr(cfg.options, "T", 2)) in ((2, 2), (1, 2))
            names.append(spec.name)
    assert registry.RunSpec(registry.ENTRIES["dt"], 1).name == "noprop"  # the first version's
    assert registry.RunSpec(registry.ENTRIES["dt"], 2).name == "dt-k2"
    specs = registry.run_specs(list(registry.ENTRIES.values()), [1, 2])
    assert len({s.name for s in specs}) == len(specs)  # every run its own directory


def test_models_and_layers_per_block_parse():
    assert [e.name for e in registry.parse_models("backprop,dt")] == ["backprop", "dt"]
    assert [e.name for e in registry.parse_models(" ct, diffusionblocks ")] == [
        "ct",
        "diffusionblocks",
    ]
    assert registry.parse_layers_per_block("6,1,2,3,2", 6) == [1, 2, 3, 6]
    for bad in ("gpt", "dt,gpt", ""):
        with pytest.raises(ConfigError, match="--models"):
            registry.parse_models(bad)
    specs = compare.check_arguments(_ns("--models", "dt,ct,backprop", "--layers-per-block", "1,3"))
    assert [s.name for s in specs] == ["noprop", "dt-k3", "ct", "backprop"]


@pytest.mark.parametrize("entry", list(registry.ENTRIES))
def test_the_child_flags_rebuild_the_config(entry):
    """``noprop train`` with the flags lm compare passes writes exactly the planned config (what
    the reuse check compares)."""
    ns = _ns(*TINY, "--precision", "bf16-mixed", "--embedding", "learned", "--embed-dim", "8")
    e = registry.ENTRIES[entry]
    cfg = e.config(compare.shared_options(ns), ns, 12, 2 if e.blockwise else 1)
    cfg = cfg.replace(epochs=3, max_train_samples=40)
    flags = compare.child_flags(cfg)
    given = given_flags(build_parser().parse_args(["train", *flags]))
    assert RunConfig().replace(**given).to_dict() == cfg.to_dict()


@pytest.fixture(scope="module")
def matchable():
    ns = _ns(*MATCHABLE)
    shared = compare.shared_options(ns)
    task = task_for(matching.reference_config(shared, ns).data)
    task.context = ns.context  # no corpus is loaded: building needs the context only
    return ns, shared, task


@pytest.mark.parametrize(
    "entry, k",
    [(e.name, k) for e in registry.ENTRIES.values() if e.name != "backprop"
     for k in ((1, 2) if e.blockwise else (1,))],
)  # fmt: skip
def test_every_entry_matches_the_transformer(matchable, entry, k):
    """Non-embedding parameters within 5% and training FLOPs per token within 10%, at a small size
    and at 1 and 2 layers per block."""
    ns, shared, task = matchable
    spec = registry.RunSpec(registry.ENTRIES[entry], k)
    width, found = matching.match_width(spec, shared, ns, task)
    assert width % ns.heads == 0
    x, y = matching.probe_batch(ns.context)

    def measure(cfg):
        m = matching.build_method(cfg, task)
        return {
            "parameters": matching.count_parameters(m),
            "flops_per_token": matching.step_flops(m, x, y) / y.numel(),
        }

    ref = measure(matching.reference_config(shared, ns))
    got = matching.ratios(measure(spec.entry.config(shared, ns, width, k)), ref)
    assert matching.within(got) == (True, True), (width, got)
    assert got["non_embedding_ratio"] - 1 == pytest.approx(found["search_params_delta"])
    assert got["flops_per_token_ratio"] - 1 == pytest.approx(found["search_flops_delta"])


# -------------------------------------------------------------------------------------- report
@pytest.mark.parametrize("name", ["stdlib", "tiny-shakespeare"])
def test_committed_reports_render_as_they_were_written(name):
    """The reports committed before the registry (two runs, no ``order``/``model`` keys) are still
    read, and the template renders them word for word."""
    d = ROOT / "experiments" / "lm" / name
    r = json.loads((d / "report.json").read_text())
    assert lm_compare.render_markdown(r) == (d / "report.md").read_text()


def _test(bits: float, chains: bool) -> dict:
    row = {"bits_per_byte": bits, "accuracy": 0.4, "temperature": 1.5,
           "bits_per_byte_calibrated": bits - 0.5}  # fmt: skip
    if chains:
        row = {**row, "chains": 2, "deterministic": dict(row), "one_chain": dict(row)}
    return row


def _fake_report() -> dict:
    """A report of back-prop, DT at k = 1 and 2, CT (not evaluated), DiffusionBlocks at k = 1
    (evaluated, as the coming read-outs will) and k = 2 (not evaluated), 2 layers in all."""
    runs = {"backprop": ("backprop", 1), "noprop": ("dt", 1), "dt-k2": ("dt", 2), "ct": ("ct", 1),
            "diffusionblocks": ("diffusionblocks", 1),
            "diffusionblocks-k2": ("diffusionblocks", 2)}  # fmt: skip
    ns = _ns(*TINY)
    shared = compare.shared_options(ns)
    plan_runs, report_runs, traj = {}, {}, {}
    for i, (name, (model, k)) in enumerate(runs.items()):
        entry = registry.ENTRIES[model]
        flat = entry.config(shared, ns, 16, k).flat()
        plan_runs[name] = {
            "model": model, "layers_per_block": k,
            "config": {f: flat.get(f) for f in compare.PLANNED_FIELDS} | {"embed_dim": 256}
            | {f: flat[f] for f in compare.PLANNED_EXTRA if f in flat},
            "parameters": {"total": 1000 + i, "embedding_tables": 100, "non_embedding": 900 + i},
            "flops_per_token": 1e6 + i,
        }  # fmt: skip
        if model != "backprop":
            plan_runs[name]["matching"] = {"non_embedding_ratio": 1.01, "total_ratio": 1.1,
                                           "flops_per_token_ratio": 0.95 if i % 2 else 1.2}  # fmt: skip
        evaluated = name not in ("ct", "diffusionblocks-k2")
        report_runs[name] = {
            "label": registry.RunSpec(entry, k).label, "reused": False, "peak_rss_mib": 100.0,
            "train_seconds": 60.0, "epochs": 1, "train_tokens": 1000, "train_flops": 1e9,
            "achieved_flops_per_second": 1e7, "val_accuracy": 0.3,
            "test": _test(3.0 + i / 10, model == "dt") if evaluated else None,
        }  # fmt: skip
        if not evaluated:
            report_runs[name] |= {"not_evaluated": "not yet",
                                  "trainer_test": {"accuracy": 0.2, "bits_per_byte": 6.0}}  # fmt: skip
        if model in ("backprop", "dt"):
            report_runs[name]["output_vectors_mean_pairwise_cosine"] = 0.1
            traj[name] = [{"depth": t, "bits_per_byte": 5.0 - t, "accuracy": 0.1 * t,
                           "cosine": 0.2, "cosine_centered": 0.3,
                           **({"alpha_bar": 0.5} if model == "dt" else {})}
                          for t in range(2 // k + 1 if model == "dt" else 3)]  # fmt: skip
    return {
        "dataset": "tiny-shakespeare",
        "machine": {"cpu": "x", "cores": 2, "torch": "2", "torch_threads": 2, "device": "cpu"},
        "plan": {"args": compare.args_dict(ns) | {"layers_per_block": "1,2"},
                 "budget_flops": 1e9, "runs": plan_runs},
        "order": list(runs), "runs": report_runs, "trajectory": traj,
        "samples": {"prompt": "a $dollar", "backprop": "b", "noprop": "c"},
        "anchor_nanogpt": compare.NANOGPT_ANCHOR, "corpus": {"source": "s", "sha256": "h"},
        "unigram_bits_per_byte": 4.5, "test_windows": 6,
    }  # fmt: skip


def test_the_report_template_renders_a_fake_result(tmp_path):
    r = _fake_report()
    md = lm_compare.render_markdown(r)
    assert "$" not in md.replace("a $dollar", "")  # every placeholder filled
    for needle in (
        "## How much depth a block needs", "![depth](depth.png)",
        "| layers per block k | blocks T | NoProp-LM | DiffusionBlocks |",
        "| 1 | 2 | 3.100 (2.600) | 3.400 (2.900) |", "| 2 | 1 | 3.200 (2.700) | – |",
        "NoProp-CT (not evaluated yet)", "Not evaluated here yet: NoProp-CT, DiffusionBlocks, 2 "
        "layers per block (not yet)", "NoProp-CT 6.000 bits per byte",
        "NoProp-LM, 2 layers per block, mixture of 2 stochastic chains",
        "within 10%: NoProp-LM yes / yes; NoProp-LM, 2 layers per block yes / NO",
        "NoProp-LM (DT), 2 layers per block:", "- **Depth per block.**",
        "the depth sweep holds the total depth at 2 layers", "anchor: nanoGPT",
        "- **The other models at equal FLOPs** score", "NoProp-CT not evaluated yet",
    ):  # fmt: skip
        assert needle in md, needle
    assert report.sections()["header"].template.startswith("# NoProp-LM")
    figures.plot_depth(r, tmp_path / "depth.png")
    assert (tmp_path / "depth.png").stat().st_size > 1000
    r["order"] = ["ct"]  # a report without back-prop or a chain still renders
    r["trajectory"] = {}
    assert "NoProp-CT (not evaluated yet)" in lm_compare.render_markdown(r)


# ------------------------------------------------------------------------ the other models
def test_every_text_method_is_trained_matched_and_read_fairly(tmp_path, corpus):
    """CT and DiffusionBlocks at 1 and 2 layers per block: trained, planned, matched, and read with
    the fair read-out (chosen on validation: read-out and S; every per-block read-out on test)."""
    out = tmp_path / "cmp"
    argv = ["lm", "compare", "--dataset", "text", "--data-dir", str(corpus), "--out", str(out),
            "--models", "ct,diffusionblocks", "--layers-per-block", "1,2",
            "--inference-steps", "2"]  # fmt: skip
    assert main([*argv, *TINY]) == 0
    r = json.loads((out / "report.json").read_text())
    names = ["ct", "diffusionblocks", "diffusionblocks-k2"]
    assert r["order"] == names
    for name in names:
        assert (out / name / "summary.json").is_file()
        run, planned = r["runs"][name], r["plan"]["runs"][name]
        fair = run["test"]["fair"]
        assert fair["bits_per_byte"] > 0 and fair["readout"] in {
            x["readout"] for x in fair["readouts"]
        }
        assert fair["chains"] in (1, 2, 4) and fair["temperature"] > 0
        assert run["train_flops"] == pytest.approx(run["train_tokens"] * planned["flops_per_token"])
        assert set(planned["matching"]) >= {"non_embedding_ratio", "flops_per_token_ratio"}
    assert r["plan"]["runs"]["diffusionblocks-k2"]["config"]["block_layers"] == 2
    assert r["plan"]["runs"]["ct"]["config"]["t_samples"] == 1
    md = (out / "report.md").read_text()
    assert "fair read-out" in md and "## Every read-out along the chains" in md
    assert (out / "depth.png").is_file()


def test_trajectory_figure_draws_the_fair_readouts_and_the_tuned_lens(tmp_path):
    """The per-block read-outs (p_t on one stochastic chain) and the tuned lens are drawn when the
    report has them (issue 22), and an older report without them still draws."""
    from noprop_lab.plots import _fair_series, plot_lm_trajectory

    rows = [{"depth": d, "bits_per_byte": 5.0 - d / 2, "accuracy": 0.1 * d, "cosine": 0.1,
             "cosine_centered": 0.1} for d in range(3)]  # fmt: skip
    old = {"trajectory": {"backprop": rows, "noprop": rows}, "unigram_bits_per_byte": 4.8,
           "dataset": "text"}  # fmt: skip
    assert plot_lm_trajectory(old, tmp_path / "old.png").is_file()
    fair = {"readouts": [
        {"readout": r, "position": pos, "chains": 1, "bits_per_byte": 4.0, "accuracy": 0.3}
        for r, pos in (("head_0", 0.0), ("p_1", 0.5), ("head_1", 0.5), ("p_2", 1.0))
    ]}  # fmt: skip
    lens = [{"depth": d, "tuned_lens_bits_per_byte": 4.0, "tuned_lens_accuracy": 0.2,
             "logit_lens_bits_per_byte": 5.0, "logit_lens_accuracy": 0.1} for d in range(3)]  # fmt: skip
    new = {**old, "plan": {"args": {"layers": 2}},
           "runs": {"backprop": {"test": {"tuned_lens": lens}}, "noprop": {"test": {"fair": fair}}}}  # fmt: skip
    series = _fair_series(new, 2)
    assert [s[0].split(":")[0] for s in series] == ["back-prop", "NoProp-LM"]
    assert [r["readout"] for r in series[1][3]] == ["p_1", "p_2"]  # p_t only, not head_t
    assert plot_lm_trajectory(new, tmp_path / "new.png").is_file()
