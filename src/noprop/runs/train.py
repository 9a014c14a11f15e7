"""``train``: a run end to end — new or resumed — into a run directory.

Bad input is rejected before anything is written: the config is validated, the output directory is
checked (without creating it), the data are loaded and the model is built (and, on resume, the
checkpoint is loaded and checked against the run), and only then is the directory created and
``config.json`` written.

Crash safety: every epoch appends its ``metrics.jsonl`` record and then atomically replaces
``checkpoint.pt`` (:class:`RunDirWriter`); a process killed at any point resumes (``--resume``) from the
last completed epoch, losing at most the epoch in progress, with a continuous metrics history and, on
CPU with the same seed and thread count, bit-identical weights. A run killed before its first
checkpoint resumes from scratch.

Divergence: a non-finite loss or gradient (the step function), or any non-finite tensor of the
trainer's state at the end of an epoch — parameters *and* buffers (BatchNorm's running statistics), the
head, the embedding, the selected model, the optimiser and loss-scaler states
(:class:`~noprop.training.callbacks.FiniteState`) — stops the run with a
:class:`~noprop.errors.DivergenceError` naming the tensor and the epoch; the checkpoint of the last
good epoch is kept (nothing of the bad epoch is written). Under ``--precision 16-mixed`` the steps
skipped for float16 overflow are said on stderr after each epoch that had any, counted in
``metrics.jsonl``, ``summary.json`` and the end line, and a block that skips most of its steps stops
the run (:class:`~noprop.training.callbacks.SkipBudget`).

One writer: the run directory's lock (:mod:`noprop.runlock`) is held by rank 0 from the start of a
resume (before the checkpoint is read), or from the creation of a new run, to the end; a second
``train``/``--resume`` of the same directory is refused in one line naming the holder.

Threads: the numbers depend on torch's CPU thread count, so a run records it in ``config.json``
(``--threads``; when not given, the count the process has: all cores, or those other jobs left free
when noprop started, :mod:`noprop.runtime`, which then says so on stderr). ``--resume`` runs with the
recorded count unless ``--threads`` is given again (the override is used, not written to
``config.json``: ``summary.json``'s ``num_threads`` is the count the run ended with); runs recorded
before the flag was recorded resume with the process's count. The count is set for the call and
restored after it.

Parallel runs (``--parallel``, see noprop/parallel/): every rank validates, loads the data (local rank
0 first, so a download happens once per machine), builds the model and reads the checkpoint; only rank
0 writes the run directory, the metrics, the checkpoint and the summary (and, with ``--tensorboard``,
the TensorBoard event files in ``RUN/tensorboard``, :mod:`noprop.training.tensorboard`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from ..build import build_method, check_weights, state_shapes
from ..config import RunConfig
from ..data import DataSplits
from ..data.augment import parse_augment
from ..data.datasets import USER_DATASETS
from ..data.sources import Augmented, as_source, class_examples, num_examples
from ..device import pick_device
from ..errors import CheckpointError, ConfigError, DivergenceError, NoPropError
from ..methods import Method
from ..models.embeddings import PROTOTYPE_MAX_PER_CLASS
from ..parallel import build_trainer, parallel_context
from ..parallel.distributed import DistContext
from ..precision import native_bf16
from ..rundir import RunDir, Summary
from ..runtime import thread_cap_note
from ..tasks import Task, task_for
from ..training.callbacks import Callback, ReportSkippedSteps
from ..training.checkpoint import load_checkpoint, save_checkpoint
from ..training.record import EpochRecord
from ..training.tensorboard import TensorBoardLogger, require_tensorboard
from ..training.trainer import Trainer, evaluate
from ..version import __version__
from .pause import PauseAtStep, pause, pause_point

# Flags that may differ between the original run and ``--resume`` without changing the experiment.
RESUMABLE_OVERRIDES = frozenset(
    {"epochs", "device", "patience", "eval_batch_size", "data_dir", "download", "channels_last"}
    | {"inference_steps", "val_inference_steps"}
    # how the run is parallelised: the checkpoint format is the same for every mode (a learned
    # W_Embed/head then follows a different, equally valid, update order after the switch)
    | {"parallel", "dist_timeout_s"}
    # logging only: event files are written or not, the training is the same
    | {"tensorboard", "test_curve"}
    # recorded and kept on --resume, unless given again (module docstring)
    | {"threads"}
)


def run_task(cfg: RunConfig, run: RunDir | None = None) -> Task:
    """The task of ``cfg``; of an existing ``run``, with what it recorded of its data (your own
    data's shape and classes, in ``data.json``, and the decoded images it cached)."""
    if run is None or cfg.data.dataset not in USER_DATASETS:
        return task_for(cfg.data)
    return task_for(cfg.data, recorded=run.read_data_info(), cache=run.data_cache_dir)


def load_data(cfg: RunConfig, run: RunDir | None = None) -> tuple[Task, DataSplits]:
    """The run's task and its data splits (of an existing ``run``: the same data, checked)."""
    task = run_task(cfg, run)
    return task, task.load(cfg.data, cfg.train.seed)


def build_for_data(cfg: RunConfig, task: Task, data: DataSplits) -> Method:
    """The run's method; the prototype embedding reads its class examples from the training split."""
    if cfg.model.embedding != "prototype":
        return build_method(cfg, task, None)
    x, y = class_examples(data.train, task.num_classes, max_per_class=PROTOTYPE_MAX_PER_CLASS,
                          seed=cfg.train.seed)  # fmt: skip
    return build_method(cfg, task, None, x, y)


def resume_config(run: RunDir, overrides: dict[str, Any]) -> RunConfig:
    """The saved config with the allowed overrides applied; other differing flags are an error."""
    saved = run.config()
    flat = saved.flat()
    for k in overrides:
        if k not in RESUMABLE_OVERRIDES and k not in flat:
            raise ConfigError(
                f"--resume {run.path}: the run's --method {saved.method.method} has no option "
                f"--{k.replace('_', '-')}"
            )
    conflicts = {
        k: v for k, v in overrides.items() if k not in RESUMABLE_OVERRIDES and flat.get(k) != v
    }
    if conflicts:
        k, v = next(iter(conflicts.items()))
        raise ConfigError(
            f"--resume {run.path}: --{k.replace('_', '-')} {v} conflicts with the run's {flat[k]!r}"
        )
    allowed = {k: v for k, v in overrides.items() if k in RESUMABLE_OVERRIDES}
    if allowed.get("threads", 0) is None:  # not given: the run's recorded thread count
        del allowed["threads"]
    return saved.replace(**allowed)


def first_detail(e: BaseException) -> str:
    """The most informative line of a (multi-line) torch error, shortened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    detail = next((ln for ln in lines if not ln.endswith(":")), lines[0] if lines else "")
    return (detail or type(e).__name__)[:200]


def check_payload(run: RunDir, payload: dict[str, Any], cfg: RunConfig) -> None:
    """A checkpoint must hold a trainer state and the config of ``run``'s ``config.json``.

    Fields that may change on resume (:data:`RESUMABLE_OVERRIDES`) are not compared.
    """
    path = run.checkpoint_path
    state = payload.get("trainer")
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(f"{path} is not a noprop training checkpoint (no model state)")
    try:
        saved = RunConfig.from_dict(payload.get("config") or {}).flat()
    except (NoPropError, TypeError, AttributeError):
        raise CheckpointError(f"{path} carries no valid run config") from None
    for k, v in cfg.flat().items():
        if k not in RESUMABLE_OVERRIDES and saved.get(k) != v:
            raise CheckpointError(
                f"{path} was written with --{k.replace('_', '-')} {saved.get(k)!r} but "
                f"{run.config_path} says {v!r}; the checkpoint is incompatible with this config"
            )
    task = run_task(cfg, run)  # the config is untrusted too: its model must be the weights' model
    for key in ("model", "best_model"):
        if key == "model" or state.get(key) is not None:
            check_weights(cfg, task, state_shapes(state[key], path), path)


class RunDirWriter(Callback):
    """After every epoch (rank 0): the metrics record, then the checkpoint, atomically."""

    def __init__(
        self, run: RunDir, saved_config: dict[str, Any], pause_at: tuple[str, int] | None
    ) -> None:
        self.run, self.saved_config, self.pause_at = run, saved_config, pause_at
        self.saved_epoch = 0  # the epoch checkpoint.pt holds

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        epoch = record.epoch
        self.run.append_metrics(record)
        if self.pause_at == ("metrics", epoch):
            pause("metrics", epoch)
        mid_write = None
        if self.pause_at == ("checkpoint", epoch):
            mid_write = functools.partial(pause, "checkpoint", epoch)
        save_checkpoint(
            self.run.checkpoint_path,
            {
                "config": self.saved_config,
                "noprop_version": __version__,
                "trainer": trainer.state_dict(),
            },
            mid_write=mid_write,
        )
        self.saved_epoch = epoch


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train a run into ``out`` (or continue it with ``resume``) and return ``summary.json``'s content.

    Under torchrun with ``--parallel blocks|data`` every rank calls this; rank 0 writes and returns
    the summary, the other ranks return an empty dict."""
    run = RunDir(out)
    if resume and run.is_export():
        raise ConfigError(f"--resume {run.path}: an exported model holds no training state")
    recorded = False
    if resume:
        given = (overrides or {}).get("threads") is not None
        cfg = resume_config(run, overrides or {})
        recorded = cfg.train.threads is not None and not given
    with torch_threads(cfg.train.threads) as threads:
        if cfg.train.threads is None or recorded:
            say_thread_cap(threads, recorded=recorded)
        cfg = cfg.replace(threads=threads)  # what config.json records for a new run
        with parallel_context(cfg) as ctx, contextlib.ExitStack() as hold:
            return _train(
                cfg, run, ctx, hold, resume=resume, overwrite=overwrite, progress=progress
            )


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[int]:
    """torch on ``n`` CPU threads for the block (None: as it is), restored after; yields the count."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if n is not None:
            torch.set_num_threads(before)


_SAID: set[str] = set()


def say_thread_cap(threads: int, *, recorded: bool = False) -> None:
    """Print :func:`~noprop.runtime.thread_cap_note` on stderr, once per process (rank 0 only)."""
    note = thread_cap_note(threads, recorded=recorded)
    if note is not None and note not in _SAID and os.environ.get("RANK", "0") == "0":
        _SAID.add(note)
        print(note, file=sys.stderr, flush=True)


def _train(
    cfg: RunConfig,
    run: RunDir,
    ctx: DistContext | None,
    hold: contextlib.ExitStack,
    *,
    resume: bool,
    overwrite: bool,
    progress: bool,
) -> dict[str, Any]:
    """The run; ``hold`` keeps the run directory's lock (rank 0) until the caller's block ends."""
    pause_at = pause_point()
    is_main = ctx is None or ctx.is_main
    if cfg.train.tensorboard:  # every rank: a missing package fails before anything is written
        require_tensorboard()
    payload = None
    if resume and is_main:  # before reading anything: a second writer is refused at once
        hold.enter_context(run.lock("train --resume"))
    if resume:
        if run.checkpoint_path.exists():  # else: killed before the first epoch ended; start over
            payload = load_checkpoint(run.checkpoint_path)
            check_payload(run, payload, run.config())
    else:
        run.check_writable(overwrite=overwrite, config=cfg.to_dict())
    device = pick_device(cfg.train.device) if ctx is None else ctx.device
    if cfg.train.precision == "bf16-mixed" and not native_bf16(device) and is_main:
        print(
            f"noprop: note: {device.type} has no native bfloat16 here (CPUs need AVX512-BF16 or "
            "AMX): --precision bf16-mixed runs, but slower than 32",
            file=sys.stderr,
        )
    same = run if payload is not None else None  # a resumed run reads (and checks) the same data
    if ctx is None:
        task, data = load_data(cfg, same)
    else:
        task, data = ctx.local_main_first(lambda: load_data(cfg, same), "to load the data")
    method = build_for_data(cfg, task, data)
    callbacks: list[Callback] = []
    if pause_at is not None and pause_at[0] == "step":
        callbacks.insert(0, PauseAtStep(pause_at[1]))
    writer = None
    if is_main:
        writer = RunDirWriter(run, {}, pause_at)
        callbacks += [ReportSkippedSteps(), writer]
        if cfg.train.tensorboard:
            # a DT epoch is one pass over the training data per block (Trainer.fit's data_passes)
            samples = num_examples(data.train) * method.num_units
            callbacks.append(TensorBoardLogger(run.tensorboard_dir, samples_per_epoch=samples))
    trainer = build_trainer(
        method, cfg, device, ctx, task=task, progress=progress, callbacks=callbacks,
        evaluator=task.load_evaluator(),  # the task's (text: a chain model's best read-out)
    )  # fmt: skip
    if payload is not None:
        try:
            trainer.load_state_dict(_to_device(payload["trainer"], device))
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError, IndexError) as e:
            raise CheckpointError(
                f"{run.checkpoint_path} does not match the run's model: {first_detail(e)}"
            ) from None
    if ctx is not None:  # every rank has checked --out before rank 0 creates it
        ctx.barrier("waiting for every rank to load the data and model")
    if is_main and resume:
        run.truncate_metrics(trainer.state.epoch)
        run.remove_stale_temp_files()
    elif is_main:
        run.create(overwrite=overwrite, config=cfg.to_dict())
        hold.enter_context(run.lock("train"))
        run.start(cfg.to_dict(), overwrite=overwrite)
    if is_main:  # your own images' decoded cache, before data.json records its SHA-256
        task.save_data(run.data_cache_dir)
    if is_main and (info := task.data_info()) is not None:
        run.write_data_info(
            info
        )  # e.g. the text corpus's SHA-256: it depends on the Python version
    if writer is not None:
        writer.saved_config = run.config().to_dict()
        writer.saved_epoch = trainer.state.epoch
    train_split = data.train
    if ops := parse_augment(cfg.data.augment):  # --augment: on the device, seeded (data/augment.py)
        train_split = Augmented(as_source(train_split), ops, cfg.train.seed)
    try:
        trainer.fit(train_split, data.val, test=data.test if cfg.train.test_curve else None)
    except DivergenceError as e:
        last = writer.saved_epoch if writer is not None else 0
        kept = (
            f"the checkpoint of epoch {last} is kept in {run.checkpoint_path}"
            if last
            else "no epoch completed, so there is no checkpoint"
        )
        message = str(e).removesuffix("; the last good checkpoint is kept")
        advice = "" if "--lr" in message else "; try a smaller --lr"
        raise DivergenceError(f"training diverged: {message}; {kept}{advice}") from None
    if not is_main:
        return {}
    summary = final_summary(trainer, data, cfg, device)
    if cfg.train.precision == "16-mixed":  # over the whole run, resumed epochs included
        records = run.records()
        summary.skipped_steps = sum(sum(r.skipped_steps or []) for r in records)
        summary.steps = sum(sum(r.steps or []) for r in records)
    run.write_summary(summary)
    return summary.to_dict()


def _to_device(obj: Any, device: torch.device) -> Any:
    """Optimiser states must live where their parameters are; model tensors are copied by load."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device) if obj.is_floating_point() and obj.dim() > 0 else obj
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def final_summary(
    trainer: Trainer, data: DataSplits, cfg: RunConfig, device: torch.device
) -> Summary:
    """Load the model selected on validation and evaluate the test set once (both inference modes)."""
    method = trainer.method
    if trainer.best_model is not None:
        method.load_state_dict(trainer.best_model)
    x, y = (t.to(device) for t in data.test)
    bs, task = cfg.train.eval_batch_size, trainer.task
    kw = {"seed": cfg.train.seed, "task": task, "progress": trainer.progress,
          "precision": cfg.train.precision}  # fmt: skip
    stochastic = evaluate(method, x, y, bs, deterministic=False, desc="test", **kw)
    deterministic = evaluate(
        method, x, y, bs, deterministic=True, desc="test (deterministic)", **kw
    )
    st = trainer.state
    scores = {k: v for k, v in stochastic.items() if not k.startswith("accuracy")}
    scores |= {
        f"{k}_deterministic": v for k, v in deterministic.items() if not k.startswith("accuracy")
    }
    return Summary(
        method=cfg.method.method,
        dataset=cfg.data.dataset,
        embedding=cfg.model.embedding,
        # the selected epoch's validation accuracy, whatever the selection metric (checkpoints of
        # noprop < 0.2 hold only best_val, which was the accuracy)
        val_accuracy=st.best_scores.get(
            "accuracy", st.best_val if st.metric == "accuracy" else None
        ),
        best_epoch=st.best_epoch,
        test_accuracy=stochastic["accuracy"],
        test_accuracy_deterministic=deterministic["accuracy"],
        test_accuracy_per_step=stochastic["accuracy_per_step"],
        train_seconds=round(st.train_seconds, 3),
        epochs=st.epoch,
        data_passes=st.data_passes,
        params_per_block=method.params_per_block(),
        num_train=num_examples(data.train),
        num_val=int(data.val[0].shape[0]),
        num_test=int(x.shape[0]),
        device=str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        cpu=platform.processor() or platform.machine(),
        num_threads=torch.get_num_threads(),
        parallel=cfg.train.parallel,
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        torch_version=torch.__version__,
        noprop_version=__version__,
        test_scores=scores,
        selected_on=st.metric,
        val_scores={k: v for k, v in st.best_scores.items() if k != "accuracy"},
    )
