"""Parallel training (issue 4): placement, fused == sequential, block-parallel == sequential, shared
parameters identical across ranks, data parallelism, resume, and failure of a killed rank.

Multi-process tests run on CPU with gloo: ``torchrun`` (``python -m torch.distributed.run``) through the
CLI for the end-to-end checks, ``torch.multiprocessing.spawn`` for the checks that read every rank's
weights. Everything is tiny (digits, ≤ 300 training samples, T ≤ 3, MLP blocks, 1-2 epochs) and every
process uses one thread, which also makes block-parallel and sequential arithmetic bit-identical.
"""

from __future__ import annotations

import copy
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from noprop import build_method
from noprop.cli import main
from noprop.config import make_config
from noprop.errors import ConfigError
from noprop.parallel import BlockPlacement, build_trainer, parallel_context
from noprop.parallel.fused import fused_trainer
from noprop.runs.pause import PAUSE_ENV
from noprop.runs.train import load_data
from noprop.training.checkpoint import load_checkpoint
from noprop.training.order import Step
from noprop.training.trainer import Trainer

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = dict(dataset="digits", max_train_samples=300, block="mlp", seed=3)
TINY_ARGS = [
    "--dataset", "digits", "--max-train-samples", "300", "--block", "mlp", "--seed", "3",
    "--method", "dt", "--T", "3", "--no-progress",
]  # fmt: skip
CPU = torch.device("cpu")


def FusedTrainer(method, cfg, device, **kw):  # noqa: N802 (stands in for a trainer class)
    return fused_trainer(method, cfg.train, device, **kw)


# ------------------------------------------------------------------------------------ placement
def test_placement_is_balanced_contiguous_and_validated():
    p = BlockPlacement.for_mode("blocks", 10, 4)
    assert [p.units_of(r) for r in range(4)] == [[0, 1, 2], [3, 4, 5], [6, 7], [8, 9]]
    assert p.max_units == 3 and p.owner(7) == 2 and p.data_degree == 1
    two_level = BlockPlacement.for_mode("blocks", 2, 6)  # blocks × data: 2 groups of 3 replicas
    assert (two_level.block_degree, two_level.data_degree) == (2, 3)
    assert [two_level.units_of(r) for r in range(6)] == [[0]] * 3 + [[1]] * 3
    assert two_level.group_ranks(1) == [3, 4, 5] and two_level.owner(1) == 3
    data = BlockPlacement.for_mode("data", 3, 2)
    assert data.units_of(1) == [0, 1, 2] and data.replica_of(1) == 1
    with pytest.raises(ConfigError, match="multiple of T"):
        BlockPlacement.for_mode("blocks", 4, 6)
    with pytest.raises(ConfigError):
        BlockPlacement(3, 4, 3)


def test_parallel_flags_are_validated():
    with pytest.raises(ConfigError, match="--order interleaved"):
        make_config(parallel="fused")
    with pytest.raises(ConfigError, match="--parallel data"):
        make_config(method="ct", parallel="blocks")
    with pytest.raises(ConfigError, match="unknown --parallel"):
        make_config(parallel="pipeline")
    with pytest.raises(ConfigError, match="dist-timeout-s"):
        make_config(dist_timeout_s=0)
    with pytest.raises(ConfigError, match="--offload-blocks is for one process"):
        make_config(offload_blocks=True, parallel="blocks")


# ---------------------------------------------------------------------------------------- fused
def _trainer(cfg, data, cls, dtype):
    torch.set_num_threads(1)
    return cls(
        build_method(cfg, data.in_shape, data.num_classes, *data.train).to(dtype),
        cfg,
        CPU,
        progress=False,
    )


def _fit(cfg, data, cls, dtype=torch.float32):
    trainer = _trainer(cfg, data, cls, dtype)
    x, y = data.train
    x = trainer.to_device(x.to(dtype))
    for epoch in range(cfg.train.epochs):
        trainer.train_epoch(x, y, epoch)
    return trainer


def test_fused_equals_sequential_interleaved():
    """All-blocks vmap step == the loop over blocks, for weights, BN statistics and Adam moments.

    Dropout-free (mlp) blocks, so the noise draws can be reproduced exactly. Float64: in float32 the
    pre-BatchNorm Linear biases (whose true gradient is 0) and the nearly converged last block get
    rounding-level gradients that Adam normalises to full-size steps, so float32 runs of the two
    (equally correct) kernels drift apart by ~1e-2; in float64 the same comparison agrees to ~1e-12.
    """
    data = load_data(make_config(**TINY))[1]
    cfg = make_config(**TINY, T=3, order="interleaved", epochs=2)
    seq = _fit(cfg, data, Trainer, torch.float64).state_dict()
    fused_trainer = _fit(cfg.replace(parallel="fused"), data, FusedTrainer, torch.float64)
    fused = fused_trainer.state_dict()
    blocks = [k for k in seq["model"] if k.startswith("blocks.")]
    assert any("running_var" in k for k in blocks)
    for k in blocks:
        torch.testing.assert_close(fused["model"][k], seq["model"][k], rtol=0, atol=1e-6, msg=k)
    for u in range(3):  # the checkpoint holds per-block optimiser states, as a sequential run's
        a, b = seq["optimizers"][u], fused["optimizers"][u]
        assert a["param_groups"] == b["param_groups"]
        for i, st in a["state"].items():
            assert float(st["step"]) == float(b["state"][i]["step"])
            torch.testing.assert_close(
                b["state"][i]["exp_avg_sq"], st["exp_avg_sq"], atol=1e-9, rtol=1e-6
            )
    # a fused checkpoint loads into a sequential trainer and back into a fused one unchanged
    _trainer(cfg, data, Trainer, torch.float64).load_state_dict(fused)
    reloaded = _trainer(cfg.replace(parallel="fused"), data, FusedTrainer, torch.float64)
    reloaded.load_state_dict(fused)
    again = reloaded.state_dict()
    assert all(torch.equal(again["model"][k], fused["model"][k]) for k in fused["model"])


def _set_dropout(module: torch.nn.Module, p: float) -> None:
    for m in module.modules():
        if hasattr(m, "p") and isinstance(m.p, float):
            m.p = p


def test_fused_batchnorm_and_dropout_under_vmap():
    """Conv blocks (BN + dropout 0.2) under vmap: per-block BN batch statistics and running stats
    exactly as separate blocks compute them; an independent dropout mask per block; eval agrees."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 14, 14), torch.arange(16) % 4
    cfg = make_config(block="conv", T=2, order="interleaved", parallel="fused")
    method = build_method(cfg, (1, 14, 14), 4, x, y)
    method.blocks[1].load_state_dict(method.blocks[0].state_dict())  # two identical blocks
    reference = copy.deepcopy(method.blocks).train()
    trainer = FusedTrainer(method, cfg, CPU, progress=False).step_fn
    template = trainer.template.train()
    z = torch.randn(2, 16, 4)
    # 1. training-mode BN without dropout: outputs and updated running stats equal the loop's
    _set_dropout(template, 0.0)
    _set_dropout(reference, 0.0)
    out = trainer._logits(trainer.params, trainer.buffers, x, z)
    for t in range(2):
        torch.testing.assert_close(out[t], reference[t](x, z[t]))
        for name, buf in reference[t].named_buffers():
            torch.testing.assert_close(trainer.buffers[name][t], buf, msg=name)
    # 2. dropout: identical blocks and inputs still give different outputs (one mask per block)
    _set_dropout(template, 0.2)
    same_z = z[:1].expand(2, -1, -1)
    out = trainer._logits(trainer.params, trainer.buffers, x, same_z)
    assert not torch.allclose(out[0], out[1])
    # 3. eval: no dropout, running statistics → identical blocks with equal stats agree
    for buf in trainer.buffers.values():
        buf[1] = buf[0]
    template.eval()
    out = trainer._logits(trainer.params, trainer.buffers, x, same_z)
    torch.testing.assert_close(out[0], out[1])
    template.train()
    trainer(x, y, Step((0, 1), torch.arange(16)), 0)  # the whole step (loss, backward, one AdamW)
    trainer.sync_modules()
    assert torch.isfinite(method.blocks[1].fusion[0].weight).all()


# ------------------------------------------------------------------------ multi-process helpers
def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **extra}


def _torchrun(*args: str, nproc: int = 2, **popen) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += [f"--nproc-per-node={nproc}", "-m", "noprop", "train", *args]
    return subprocess.Popen(cmd, text=True, **popen)


def _run_torchrun(*args: str, timeout: float = 120) -> None:
    proc = _torchrun(*args, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-3000:]


def _model(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoint.pt")["trainer"]


def test_block_parallel_equals_sequential_and_resumes(tmp_path, capsys):
    """2 ranks, T=3 (rank 0: blocks 1-2, rank 1: block 3 + an idle pass), one-hot W_Embed: block
    weights, BN statistics and Adam states equal the sequential run's, across a parallel resume;
    the run directory is an ordinary one (``noprop eval`` reads it)."""
    par = tmp_path / "par"
    _run_torchrun(*TINY_ARGS, "--parallel", "blocks", "--epochs", "1", "--out", str(par))
    _run_torchrun("--resume", str(par), "--epochs", "2", "--no-progress")
    torch.set_num_threads(1)
    seq = tmp_path / "seq"
    assert main(["train", *TINY_ARGS, "--epochs", "2", "--threads", "1", "--out", str(seq)]) == 0
    a, b = _model(seq), _model(par)
    assert a["model"].keys() == b["model"].keys() and b["train_state"]["epoch"] == 2
    for k in a["model"]:
        if k.startswith("blocks."):
            torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6, msg=k)
    for u in range(3):
        for i, st in a["optimizers"][u]["state"].items():
            torch.testing.assert_close(b["optimizers"][u]["state"][i]["exp_avg"], st["exp_avg"])
    metrics = (par / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and '"block_loss": [' in metrics[0] and "null" not in metrics[0]
    capsys.readouterr()
    assert main(["eval", str(par), "--deterministic"]) == 0
    assert "test_accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("extra", [[], ["--no-head-every-step"]], ids=["default", "head-last"])
def test_block_parallel_text_equals_sequential(tmp_path, extra):
    """NoProp-LM (issue 11) under --parallel blocks unchanged: 2 ranks, T = 3, the same block
    weights as the sequential run. With --no-head-every-step (issue 22) only the rank that owns
    block T trains the head, in T's steps, as the sequential run does: the head agrees too."""
    from tests.test_language import _write_corpus

    corpus = _write_corpus(tmp_path / "corpus.txt", 8_000)
    args = ["--dataset", "text", "--data-dir", str(corpus), "--method", "dt", "--T", "3",
            "--context", "16", "--width", "16", "--heads", "2", "--batch-size", "16",
            "--max-train-samples", "96", "--epochs", "1", "--no-progress", *extra]  # fmt: skip
    par, seq = tmp_path / "par", tmp_path / "seq"
    _run_torchrun(*args, "--parallel", "blocks", "--out", str(par))
    torch.set_num_threads(1)
    assert main(["train", *args, "--threads", "1", "--out", str(seq)]) == 0
    a, b = _model(seq)["model"], _model(par)["model"]
    assert a.keys() == b.keys()
    compared = ("blocks.", "head.") if extra else ("blocks.",)
    for k in a:
        if k.startswith(compared):
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=k)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# name -> (global ranks taking part, config); jobs in one phase run side by side on disjoint ranks
PHASES = [
    {
        # block-parallel, learned W_Embed, uneven split (blocks 1-2 | block 3 + idle pass)
        "learned": ([0, 1], dict(**TINY, T=3, embedding="learned", embed_dim=6, parallel="blocks")),
        # data parallelism for a single-network method (CT, no BatchNorm)
        "data-ct": ([2, 3], dict(**TINY, method="ct", parallel="data", batch_size=64)),
    },
    {
        # blocks × data: 4 ranks, T = 2 → 2 block groups of 2 replicas, learned W_Embed
        "two-level": ([0, 1, 2, 3], dict(**TINY, T=2, embedding="learned", parallel="blocks")),
    },
]


def _spawned(rank: int, ports: list[int], out: str, data) -> None:
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    jobs = [(name, *job) for phase in PHASES for name, job in phase.items()]
    for (name, ranks, overrides), port in zip(jobs, ports, strict=True):
        if rank not in ranks:
            continue
        job_rank, world = ranks.index(rank), len(ranks)
        env = dict(RANK=job_rank, WORLD_SIZE=world, LOCAL_RANK=job_rank, LOCAL_WORLD_SIZE=world)
        os.environ.update({k: str(v) for k, v in env.items()}, MASTER_PORT=str(port))
        cfg = make_config(**overrides, epochs=1)
        with parallel_context(cfg) as ctx:
            method = build_method(cfg, data.in_shape, data.num_classes, *data.train)
            trainer = build_trainer(method, cfg, CPU, ctx, progress=False)
            trainer.fit(data.train, data.val)
            state = {
                "shared": [p.detach().clone() for p in method.shared_parameters()],
                "own": [p.detach().clone() for u in ctx.units for p in method.unit_parameters(u)],
                "units": ctx.units,
            }
            torch.save(state, Path(out) / f"{name}-{job_rank}.pt")


def test_shared_parameters_identical_across_ranks_and_data_parallel(tmp_path):
    """After training, the head and a learned W_Embed are bit-identical on every rank (block-parallel
    on 2 ranks, and blocks × data on 4); data replicas (CT under ``--parallel data``; a block's
    replicas in blocks × data) hold bit-identical weights."""
    import torch.multiprocessing as mp

    jobs = {name: ranks for phase in PHASES for name, (ranks, _) in phase.items()}
    data = load_data(make_config(**TINY))[1]  # once here: each rank would import scikit-learn
    ports = [_free_port() for _ in jobs]
    mp.spawn(_spawned, args=(ports, str(tmp_path), data), nprocs=4, join=True)
    for name, ranks in jobs.items():
        states = [
            torch.load(tmp_path / f"{name}-{r}.pt", weights_only=True) for r in range(len(ranks))
        ]
        assert states[0]["shared"], name
        for other in states[1:]:
            for p0, p1 in zip(states[0]["shared"], other["shared"], strict=True):
                assert torch.equal(p0, p1), f"{name}: shared parameters differ across ranks"
        replicas: dict[tuple[int, ...], list] = {}
        for st in states:
            replicas.setdefault(tuple(st["units"]), []).append(st["own"])
        for units, owns in replicas.items():
            for own in owns[1:]:
                assert all(torch.equal(a, b) for a, b in zip(owns[0], own, strict=True)), units
    units = {
        n: [torch.load(tmp_path / f"{n}-{r}.pt")["units"] for r in range(len(jobs[n]))]
        for n in jobs
    }
    assert units["learned"] == [[0, 1], [2]] and units["two-level"] == [[0], [0], [1], [1]]
    assert units["data-ct"] == [[0], [0]]


# ----------------------------------------------------------------------------------- failures
def _until_paused(tmp_path: Path, timeout_s: int) -> tuple[subprocess.Popen, str]:
    """Launch 2 ranks whose rank 1 stops at its first step; return once it announced the pause."""
    env = _env(**{PAUSE_ENV: "step:1:1"})
    args = [*TINY_ARGS, "--parallel", "blocks", "--epochs", "1", "--out", str(tmp_path / "run")]
    args += ["--dist-timeout-s", str(timeout_s)]
    proc = _torchrun(*args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith("NOPROP_PAUSED step 1"):
            assert " rank 1" in line
            return proc, line
    proc.wait()
    pytest.fail("no pause marker: " + "".join(seen)[-2000:])


def _finish(proc: subprocess.Popen) -> tuple[int, str, float]:
    """(exit code, rest of stderr, seconds) of a launcher that should now fail by itself."""
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    start = time.monotonic()
    try:
        assert proc.stderr is not None
        rest = proc.stderr.read()
        return proc.wait(), rest, time.monotonic() - start
    finally:
        watchdog.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_killed_rank_fails_the_job_within_the_timeout(tmp_path):
    """Rank 1 is SIGKILLed while rank 0 waits for it in the all-reduce: the launcher exits non-zero
    well within --dist-timeout-s (gloo sees the closed socket, torchrun the dead worker)."""
    timeout_s = 20
    proc, marker = _until_paused(tmp_path, timeout_s)
    os.kill(int(marker.split(" pid ")[1].split()[0]), signal.SIGKILL)
    rc, rest, elapsed = _finish(proc)
    assert rc != 0, rest[-2000:]
    assert elapsed < timeout_s, f"took {elapsed:.1f} s to fail"
    assert "FAILED" in rest, rest[-2000:]


def test_hung_rank_fails_the_job_after_the_timeout_with_a_clear_error(tmp_path):
    """Rank 1 stays alive but never reaches the all-reduce: rank 0 gives up after --dist-timeout-s
    with a one-line error naming itself, the operation and the flag; the launcher exits non-zero."""
    timeout_s = 4
    proc, _ = _until_paused(tmp_path, timeout_s)
    rc, rest, elapsed = _finish(proc)
    assert rc != 0
    assert elapsed < timeout_s + 30, f"took {elapsed:.1f} s to fail"
    error = next(ln for ln in rest.splitlines() if ln.startswith("noprop: error: rank 0"))
    assert "all-reduce" in error and f"--dist-timeout-s {timeout_s}" in error
