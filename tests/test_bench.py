"""`noprop bench efficiency` on the bundled digits: every figure the issue names is in the JSON."""

import json

from noprop.cli import main


def test_bench_efficiency_writes_every_figure(tmp_path):
    out = tmp_path / "eff.json"
    rc = main(["bench", "efficiency", "--methods", "dt,backprop", "--max-batches", "3",
               "--T", "3", "--eval-samples", "50", "--out", str(out)])  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["machine_matmul_flops_per_s"] > 1e8
    for key in ("dt_vs_backprop_time_ratio", "dt_vs_backprop_memory_ratio"):
        assert r[key] > 0
    for m in ("dt", "backprop"):
        row = r["methods"][m]
        for key in ("train_samples_per_s", "epoch_seconds", "peak_train_memory_bytes",
                    "achieved_flops_per_s", "block_steps_per_s", "inference_samples_per_s"):  # fmt: skip
            assert row[key] > 0, (m, key)
        assert set(row["memory_breakdown_bytes"]) >= {"parameters", "optimizer_state"}
    # a DT epoch is T one-block passes, a back-prop epoch one T-block pass: same FLOPs per epoch
    dt, bp = r["methods"]["dt"], r["methods"]["backprop"]
    assert bp["flops_per_step"] > 2 * dt["flops_per_step"]


def test_image_cache_timing_compares_the_same_computation():
    """The uncached loop the benchmark times gives the same predictions, and recomputes the branch."""
    import torch

    from noprop_lab.bench.efficiency import image_branch_every_step, time_image_cache

    from .problems import tiny_method

    method, _, (x, _) = tiny_method("ct", inference_steps=5)
    method.eval()
    calls = []
    method.block.image.register_forward_hook(lambda mod, inp, out: calls.append(1))
    cached = method.predict_steps(x, deterministic=True)
    n_cached = len(calls)
    with image_branch_every_step(method.block):
        uncached = method.predict_steps(x, deterministic=True)
    assert torch.allclose(cached, uncached, atol=1e-6)
    assert n_cached == 1 and len(calls) - n_cached == 5  # once vs once per step
    assert method.predict_steps(x, deterministic=True).shape == cached.shape  # methods restored
    assert len(calls) - n_cached == 6
    timing = time_image_cache(method, x)
    assert timing["cached_seconds"] > 0 and timing["speedup"] > 0


def test_bench_background_load_measures_quiet_and_loaded(tmp_path):
    """--background-load K: each method measured twice, the busy processes stopped afterwards."""
    import subprocess

    out = tmp_path / "eff.json"
    rc = main(["bench", "efficiency", "--methods", "dt", "--max-batches", "2", "--T", "2",
               "--eval-samples", "20", "--background-load", "1", "--background-seconds", "60",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["background_load"] == 1 and "omp_wait_policy" in r["machine"]
    for m in ("dt",):
        row = r["methods"][m]
        assert row["loaded"]["train_samples_per_s"] > 0 and row["loaded_over_quiet"] > 0
    busy = subprocess.run(["pgrep", "-f", "while time.monotonic"], capture_output=True, text=True)
    assert busy.stdout.strip() == "", "a busy process outlived the bench"


def test_T_applies_only_to_the_methods_that_have_blocks():
    """``bench efficiency --T``: ct/fm/adjoint have one network and no T; their workers do not get it."""
    from noprop_lab.bench.efficiency import method_overrides

    given = {"T": 2, "max_train_samples": 256}
    assert method_overrides("dt", given) == given
    assert method_overrides("diffusionblocks", given) == given
    assert method_overrides("ct", given) == {"max_train_samples": 256}


def test_bench_efficiency_precision_reports_both(tmp_path):
    """``--precision bf16-mixed``: every method measured in float32 and in bf16, with the ratios."""
    out = tmp_path / "eff.json"
    rc = main(["bench", "efficiency", "--methods", "dt", "--max-batches", "2", "--T", "2",
               "--max-train-samples", "256", "--eval-samples", "20", "--precision", "bf16-mixed",
               "--out", str(out)])  # fmt: skip
    assert rc == 0
    row = json.loads(out.read_text())["methods"]["dt"]
    assert row["precision"] == "32" and row["mixed"]["precision"] == "bf16-mixed"
    for key in ("mixed_over_32_step_time", "mixed_over_32_peak_memory",
                "mixed_over_32_inference_time"):  # fmt: skip
        assert row[key] > 0
    assert isinstance(row["mixed"]["native_bf16"], bool)
