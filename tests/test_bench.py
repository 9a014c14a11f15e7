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
