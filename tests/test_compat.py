"""Run directories written by noprop 0.1 (before the issue-10 redesign) still evaluate and resume.

tests/fixtures/run-v0.1.0-dt is a tiny DT run (digits, T = 1, 64 training images, 1 epoch) written by
noprop 0.1.0 at commit 3d203db, with the results that version gave for ``eval`` and for ``--resume``
to 2 epochs (run-v0.1.0-dt.expected.json); config-v0.1.0-*.json are the other methods' 0.1 configs.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from noprop import RunConfig, evaluate_run, train
from noprop.config import LEGACY_METHOD_KEYS
from noprop.errors import ConfigError

FIXTURES = Path(__file__).parent / "fixtures"
RUN = FIXTURES / "run-v0.1.0-dt"
EXPECTED = json.loads((FIXTURES / "run-v0.1.0-dt.expected.json").read_text())


def test_old_run_evaluates_as_before(tmp_path, one_thread):
    run = shutil.copytree(RUN, tmp_path / "run")
    det = evaluate_run(run, deterministic=True, device="cpu")["test_accuracy"]
    sto = evaluate_run(run, device="cpu")["test_accuracy"]
    assert (det, sto) == (EXPECTED["eval_deterministic"], EXPECTED["eval_stochastic"])


def test_old_run_resumes_as_before(tmp_path, one_thread):
    run = shutil.copytree(RUN, tmp_path / "run")
    summary = train(RunConfig(), run, resume=True, progress=False, overrides={"epochs": 2})
    for k, v in EXPECTED["resumed_to_2_epochs"].items():
        assert summary[k] == v, k
    model = torch.load(run / "checkpoint.pt", weights_only=True)["trainer"]["model"]
    total = sum(
        float(v.double().abs().sum()) for _, v in sorted(model.items()) if v.is_floating_point()
    )
    # equal on the recording CPU; another CPU's kernels round differently (AMD EPYC: 4e-7 relative)
    assert total == pytest.approx(EXPECTED["resumed_model_abs_sum"], rel=1e-5)
    assert [
        r["epoch"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
    ] == [1, 2]


@pytest.mark.parametrize("method", ["backprop", "ct", "fm", "adjoint"])
def test_old_configs_read_with_each_methods_defaults(method):
    old = json.loads((FIXTURES / f"config-v0.1.0-{method}.json").read_text())
    assert set(old["method"]) == LEGACY_METHOD_KEYS | {"method"}
    cfg = RunConfig.from_dict(old)
    assert cfg.method.method == method
    assert cfg.options == cfg.method.cls.Config()  # 0.1 defaults = today's defaults
    assert RunConfig.from_dict(cfg.to_dict()) == cfg  # and the new file round-trips


def test_old_config_before_t_samples_means_one_draw():
    old = json.loads((FIXTURES / "config-v0.1.0-ct.json").read_text())
    del old["method"]["t_samples"]
    assert RunConfig.from_dict(old).options.t_samples == 1


def test_new_config_with_a_foreign_key_is_refused():
    bad = RunConfig().to_dict()
    bad["method"]["frobnicate"] = 1
    with pytest.raises(ConfigError, match="frobnicate"):
        RunConfig.from_dict(bad)


def test_a_summary_without_the_later_fields_reads():
    from noprop.rundir import Summary

    d = json.loads((RUN / "summary.json").read_text())
    for k in ("parallel", "world_size"):
        d.pop(k)
    s = Summary.from_dict(d)
    assert (s.parallel, s.world_size) == ("none", 1)


def test_foreign_and_null_keys_in_a_current_config():
    cfg = RunConfig().to_dict()
    cfg["method"] = {"method": "dt", "T": 3, "fm_sigma": 0.5}  # not a 0.1 file: an error
    with pytest.raises(ConfigError, match="fm_sigma"):
        RunConfig.from_dict(cfg)
    cfg["method"] = {"method": "dt", "T": 3, "eta": None}  # None: the method's default
    assert RunConfig.from_dict(cfg).options.eta == 0.1
