"""Test accuracy and inference time of a continuous-time run against the number of steps and the solver.

``sweep_steps(run_dir, steps=[1, 2, 5, 10, 100, 1000], solvers=["euler", "rk4"])`` loads the run's
validation-selected model, evaluates the test set once per (solver, steps) pair with the same seed
(so every pair sees the same z_0 and noise draws), and writes ``eval_steps.json`` into the run
directory atomically::

    {"method": "ct", "dataset": "digits", "device": "cpu", "deterministic": false, "seed": 0,
     "rows": [{"solver": "euler", "steps": 1, "test_accuracy": 0.93, "seconds": 0.04,
               "num_test": 360}, ...]}

For torchdiffeq's adaptive solvers ``steps`` only sets the reporting grid; the solver picks its own
step sizes. ``seconds`` is wall-clock time of the whole test-set pass (CUDA synchronised).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..errors import ConfigError
from ..methods import METHODS, Method
from ..rundir import RunDir
from ..solvers import check_solver
from ..training.trainer import evaluate
from .evaluate import compile_for_inference, load_run_with_task, run_precision

#: the methods whose inference has a step count and a solver (``noprop eval --steps``)
STEP_METHODS = ", ".join(name for name, cls in METHODS.items() if cls.solvers)


def _check_grid(method: Method, steps: list[int], solvers: list[str]) -> None:
    if not steps or not solvers:
        raise ConfigError("--steps and --solver each need at least one value")
    for n in steps:
        if not isinstance(n, int) or n < 1:
            raise ConfigError(f"--steps values must be integers >= 1 (got {n!r})")
    for name in solvers:
        check_solver(name, allowed=method.solvers)


def sweep_steps(
    run_dir: str | Path,
    steps: list[int],
    solvers: list[str],
    device: str = "auto",
    *,
    deterministic: bool = False,
    seed: int | None = None,
    compile: bool = False,
    precision: str | None = None,
    data_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Evaluate a ct/fm/adjoint run for every (solver, steps); write and return the rows.

    Args:
        run_dir: a run directory with ``config.json`` and a checkpoint.
        steps: numbers of inference steps, each >= 1.
        solvers: names from noprop.solvers.SOLVER_NAMES (``ancestral`` only for ct).
        device: auto, cpu, cuda or cuda:N.
        deterministic: start from z_0 = 0 and add no sampling noise.
        seed: seed of z_0 and the sampling noise (default: the run's ``--seed``).
        compile: compile the per-step inference first (``--compile``, ct only).
        precision: of the networks (``--precision``; default: the run's training precision).
        data_dir: where the run's data are (``--data-dir``; default: where its config says; never
            created or downloaded into, :mod:`noprop.runs.reading`).

    Returns:
        One dict per pair, solvers outer and steps inner, as written to ``eval_steps.json``.

    Raises:
        ConfigError: a run of a method without an inference solver (dt, backprop), or bad
            steps/solver values.
    """
    method, cfg, task, data, dev = load_run_with_task(run_dir, device, data_dir=data_dir)
    precision = run_precision(cfg, precision)
    if not method.solvers:
        raise ConfigError(
            f"--steps/--solver apply to the methods with an inference solver ({STEP_METHODS}); "
            f"{run_dir} is a {cfg.method.method} run"
        )
    if compile:
        compile_for_inference(method, cfg.train.eval_batch_size)
    _check_grid(method, steps, solvers)
    with RunDir(run_dir).lock("eval --steps"):  # it writes eval_steps.json: one writer
        seed = cfg.train.seed if seed is None else seed
        x, y = (t.to(dev) for t in data.test)
        defaults = (method.inference_steps, method.solver)
        rows: list[dict[str, Any]] = []
        try:
            for solver in solvers:
                for n in steps:
                    method.inference_steps, method.solver = n, solver
                    start = time.perf_counter()
                    result = evaluate(
                        method, x, y, cfg.train.eval_batch_size, deterministic, seed, task=task,
                        progress=True, desc=f"{solver}, {n} steps", precision=precision,
                    )  # fmt: skip
                    if dev.type == "cuda":
                        torch.cuda.synchronize(dev)
                    rows.append(
                        {
                            "solver": solver,
                            "steps": n,
                            "test_accuracy": result["accuracy"],
                            **{  # the task's other scores, e.g. bits per byte on text
                                f"test_{k}": v
                                for k, v in result.items()
                                if k != "accuracy" and not k.endswith("_per_step")
                            },
                            "seconds": round(time.perf_counter() - start, 4),
                            "num_test": int(x.shape[0]),
                        }
                    )
        finally:
            method.inference_steps, method.solver = defaults
        RunDir(run_dir).write_eval_steps(
            {
                "method": cfg.method.method,
                "dataset": cfg.data.dataset,
                "device": str(dev),
                "deterministic": deterministic,
                "seed": seed,
                "rows": rows,
            },
        )
        return rows
