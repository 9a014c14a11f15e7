"""The training loop: an order of steps, a step function and callbacks, composed.

``Trainer(method, cfg, device, order=..., step=..., callbacks=[...])`` runs, for every epoch, the
:mod:`order <noprop.training.order>`'s steps through the :mod:`step function <noprop.training.steps>`
and then validates and selects the model on the task's validation metric (``Task.metric``:
accuracy for images, bits per byte for text). Everything else — checkpoints, offloading, parallel
gathers, finiteness checks, test pause points — is a :mod:`callback <noprop.training.callbacks>`.
The defaults are the sequential trainer: ``--order`` as configured (Algorithm 1 or interleaved) and
:class:`~noprop.training.steps.LocalStep`. The parallel layouts build their own order, step and
callbacks (:mod:`noprop.parallel`); the loop is the same.
Each step's mini-batch is asked of the training split's :mod:`data source <noprop.data.sources>` by
index: in-memory tensors by default, or memory-mapped arrays, decoded image folders, augmented batches.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..data.sources import DataSource, Split, TensorSource, as_source, split_tensors
from ..errors import DivergenceError
from ..methods.base import Method
from ..precision import autocast, float32
from ..runtime import load_meter
from ..tasks import ClassificationTask, Task
from .callbacks import Callback, FiniteState, Losses, SkipBudget
from .config import TrainConfig
from .order import Algorithm1, Interleaved, RandomBlock, Step, derive_seed
from .record import EpochRecord
from .steps import LocalStep, Optimizers, Parts, StepFunction

#: evaluator(trainer, x, y, deterministic=..., seed=..., validation=...) → {"accuracy", "accuracy_per_step"}
Evaluator = Callable[..., dict[str, Any]]


@dataclass
class TrainState:
    """Counters saved in the checkpoint (everything else is derived from them).

    Selection: ``best_val`` is the selected epoch's validation value of ``metric`` (None before the
    first validation, or without a validation split), better when higher or lower as
    ``higher_is_better`` says; ``best_scores`` are that epoch's validation scores (accuracy and the
    task's others). A run keeps the metric it started with: checkpoints written before selection
    followed the task lack the fields and were selected on accuracy (their ``best_val`` of -1.0
    meant "none yet"), so they resume selecting on accuracy."""

    epoch: int = 0
    train_seconds: float = 0.0
    data_passes: float = 0.0
    best_val: float | None = None
    best_epoch: int = 0
    metric: str = "accuracy"
    higher_is_better: bool = True
    best_scores: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.metric == "accuracy" and self.best_val is not None and self.best_val < 0:
            self.best_val = None  # noprop 0.1's "no validation yet"

    def improves(self, value: float) -> bool:
        """Whether ``value`` of :attr:`metric` beats the selected epoch's (ties keep the earlier)."""
        if self.best_val is None:
            return True
        return value > self.best_val if self.higher_is_better else value < self.best_val


def default_order(method: Method, cfg: TrainConfig) -> Algorithm1 | Interleaved | RandomBlock:
    """``--order blocks`` (Algorithm 1), ``interleaved`` or ``random`` over all the method's units."""
    cls = {"blocks": Algorithm1, "interleaved": Interleaved, "random": RandomBlock}[cfg.order]
    return cls(range(method.num_units), cfg.batch_size, cfg.seed)


class Trainer:
    """Trains a :class:`Method` on in-memory tensors or a data source (module docstring).

    Args:
        method: the method to train (moved to ``device``).
        cfg: the training options (a :class:`TrainConfig`, or a run config holding one as ``.train``).
        device: where to train.
        task: the task (data layout and metric); default: classification of the given tensors.
        order, step, callbacks, evaluator: the loop's components (defaults: sequential training).

    ``--parallel`` layouts and ``--offload-blocks`` are components too: build them with
    :func:`noprop.parallel.build_trainer`, which reads those options from the run config.
    """

    def __init__(
        self,
        method: Method,
        cfg: Any,
        device: torch.device,
        *,
        task: Task | None = None,
        progress: bool = True,
        order: Any = None,
        step: Callable[[Method, Optimizers, str], StepFunction] | None = None,
        callbacks: Sequence[Callback] = (),
        evaluator: Evaluator | None = None,
    ) -> None:
        self.cfg: TrainConfig = cfg if isinstance(cfg, TrainConfig) else cfg.train
        self.task = task if task is not None else ClassificationTask.from_shape((), 0)
        self.method = self.task.prepare_model(method.to(device), fast_layout=self.cfg.channels_last)
        self.device = device
        self.progress = progress
        self.opt = Optimizers(self.method, self.cfg)
        self.order = order if order is not None else default_order(self.method, self.cfg)
        self.step_fn: StepFunction = (step or LocalStep)(self.method, self.opt, self.cfg.precision)
        # the guards first: nothing of an epoch whose state is broken reaches a later callback
        self.callbacks: list[Callback] = [FiniteState(), SkipBudget(), *callbacks]
        self.evaluator = evaluator or Trainer.local_evaluate
        self.state = TrainState(
            metric=self.task.metric, higher_is_better=self.task.higher_is_better
        )
        self.best_model: dict[str, Tensor] | None = None

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self.opt.units

    @property
    def shared_optimizer(self) -> torch.optim.Optimizer | None:
        return self.opt.shared

    # ------------------------------------------------------------------ steps
    def step(self, x: Tensor, y: Tensor, unit: int) -> Parts:
        """One optimiser step of ``unit`` (and the shared parameters) on one mini-batch."""
        step = Step((unit,), torch.arange(x.shape[0]))
        return dict(self.step_fn(x, y, step, self.state.epoch))[unit]

    def train_epoch(self, x: Tensor | DataSource, y: Tensor | None, epoch: int) -> Losses:
        """One epoch (``epoch`` is 0-based) on tensors ``(x, y)`` on the device, or on a source ``x``
        placed by :meth:`fit` (``y`` None); the mean of each loss part per unit (None for a unit
        this trainer did not train)."""
        self.method.train()
        data = x if isinstance(x, DataSource) else TensorSource(x, y)  # type: ignore[arg-type]
        num_units, n = self.method.num_units, len(data)
        sums: list[dict[str, Tensor]] = [{} for _ in range(num_units)]
        counts = [0] * num_units
        bar = tqdm(
            total=self.order.num_steps(n),
            desc=f"epoch {epoch + 1}/{self.cfg.epochs}",
            disable=not self.progress,
            leave=False,
            mininterval=1.0,
        )
        for i, step in enumerate(self.order(n, epoch)):
            for cb in self.callbacks:
                cb.on_step(self, step)
            xb, yb = data.batch(step.idx, epoch)  # tensors: x[idx] on the device, as always
            for unit, parts in self.step_fn(xb, yb, step, epoch):
                for k, v in parts.items():
                    sums[unit][k] = sums[unit][k] + v if k in sums[unit] else v
                counts[unit] += 1
                if self.progress and i % 50 == 0:
                    bar.set_postfix(block=unit + 1, loss=f"{float(parts['loss'].mean()):.4f}")
            bar.update()
        bar.close()
        self.step_fn.sync_modules()
        keys = sorted({k for s in sums for k in s})
        losses: Losses = {
            k: [_mean(s.get(k), c) for s, c in zip(sums, counts, strict=True)] for k in keys
        }
        for cb in self.callbacks:
            losses = cb.on_epoch_trained(self, losses)
        return losses

    # -------------------------------------------------------------- evaluation
    def evaluate(
        self,
        x: Tensor,
        y: Tensor,
        *,
        deterministic: bool = False,
        seed: int = 0,
        validation: bool = True,
    ) -> dict[str, Any]:
        """Accuracy of the final prediction and of the read-out after every inference step.

        ``validation``: with the method's validation settings (e.g. ``--val-inference-steps``);
        False for the default inference (``--test-curve``)."""
        for cb in self.callbacks:
            cb.before_eval(self)
        # validation=False only when asked: evaluators written for (deterministic, seed) still work
        extra = {} if validation else {"validation": False}
        result = self.evaluator(self, x, y, deterministic=deterministic, seed=seed, **extra)
        for cb in self.callbacks:
            cb.after_eval(self)
        return result

    @staticmethod
    def local_evaluate(
        trainer: Trainer,
        x: Tensor,
        y: Tensor,
        *,
        deterministic: bool,
        seed: int,
        validation: bool = True,
    ) -> dict[str, Any]:
        # validation: e.g. --val-inference-steps of CT/FM; otherwise the default inference
        settings = trainer.method.validating() if validation else contextlib.nullcontext()
        with settings:
            return evaluate(
                trainer.method, x, y, trainer.cfg.eval_batch_size, deterministic, seed,
                task=trainer.task, progress=trainer.progress,
                desc="validation" if validation else "test curve",
                precision=trainer.cfg.precision,
            )  # fmt: skip

    def to_device(self, t: Tensor) -> Tensor:
        return self.task.to_device(t, self.device, fast_layout=self.cfg.channels_last)

    # ------------------------------------------------------------------- fit
    def fit(
        self,
        train: Split,
        val: Split,
        on_epoch: Callable[[Trainer, dict[str, Any]], None] | None = None,
        *,
        test: Split | None = None,
    ) -> None:
        """Train from ``state.epoch`` to ``cfg.epochs`` with validation-based model selection.

        Each split is tensors ``(x, y)`` or a :class:`~noprop.data.sources.DataSource` (the training
        batches are asked of it by index; validation and test are read whole).

        Selection and ``--patience`` use ``state.metric`` (the task's metric; :class:`TrainState`).
        Callbacks get every epoch's :class:`~noprop.training.record.EpochRecord`;
        ``on_epoch(trainer, record)``, if given, runs after them with the record as a
        ``metrics.jsonl`` dict (noprop 0.1's hook). ``test``, if given, is evaluated after every
        epoch with the default inference and the final test's seed (``record.test_accuracy``, for
        accuracy-vs-time curves); it never selects a model."""
        if on_epoch is not None:
            self.callbacks.append(_OnEpoch(on_epoch))
            try:
                return self.fit(train, val, test=test)
            finally:
                self.callbacks.pop()
        source = as_source(train).placed(self.to_device)  # tensors: moved to the device once
        xv, yv = (self.to_device(t) for t in split_tensors(val))
        # as the final test feeds it (runs/train.py final_summary), so the curve's point at the
        # selected epoch is the final test's number
        xt, yt = (
            (t.to(self.device) for t in split_tensors(test)) if test is not None else (None, None)
        )
        cfg = self.cfg
        # --lr-schedule: every unit sees each mini-batch once per epoch; the shared optimiser steps
        # once per step of the order
        batches = -(-len(source) // cfg.batch_size)
        self.opt.set_horizon(cfg.epochs * batches, cfg.epochs * self.order.num_steps(len(source)))
        # every order but --order random passes over the data once per unit
        passes_per_epoch = getattr(self.order, "passes_per_epoch", float(self.method.num_units))
        while self.state.epoch < cfg.epochs:
            epoch = self.state.epoch
            start, load = time.perf_counter(), load_meter()
            losses = self.train_epoch(source, None, epoch)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            other_busy = load()
            self.state.epoch += 1
            self.state.train_seconds += seconds
            self.state.data_passes += passes_per_epoch
            skipped, taken = self.step_fn.take_skipped()
            record = EpochRecord(
                epoch=self.state.epoch,
                block_loss=losses.get("loss", []),
                loss_parts={k: v for k, v in losses.items() if k != "loss"},
                epoch_seconds=round(seconds, 3),
                wall_seconds=round(self.state.train_seconds, 3),
                data_passes=self.state.data_passes,
                # --precision 16-mixed: overflowing steps skipped per block (None otherwise)
                skipped_steps=skipped,
                steps=taken,
                # block-parallel: the other ranks count as "other"
                other_busy_cores=None if other_busy is None else round(other_busy, 3),
            )
            if xv.shape[0] > 0:
                try:
                    ev = self.evaluate(xv, yv, seed=derive_seed(cfg.seed, epoch, -2))
                except DivergenceError as e:  # a broken read-out: say when
                    raise DivergenceError(f"{e} at epoch {self.state.epoch}") from None
                record.val_accuracy = ev["accuracy"]
                record.val_accuracy_per_step = ev["accuracy_per_step"]
                record.val_scores = {  # e.g. bits per byte
                    k: v for k, v in ev.items() if k not in ("accuracy", "accuracy_per_step")
                }
                improved = self.state.improves(self._selection_value(record))
            else:
                improved = True  # no validation split: the last epoch is the selected model
            if xt is not None and yt is not None:  # after selection's inputs: reporting only
                ev = self.evaluate(xt, yt, seed=cfg.seed, validation=False)
                record.test_accuracy = ev["accuracy"]
            if improved:
                self.state.best_val = record.val(self.state.metric)
                self.state.best_scores = _scores(record)
                self.state.best_epoch = self.state.epoch
                self.best_model = {
                    k: v.detach().cpu().clone() for k, v in self.method.state_dict().items()
                }
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
            if (
                cfg.patience is not None
                and self.state.epoch - self.state.best_epoch >= cfg.patience
            ):
                break
        for cb in self.callbacks:
            cb.on_fit_end(self)

    def _selection_value(self, record: EpochRecord) -> float:
        value = record.val(self.state.metric)
        if value is None:
            raise KeyError(
                f"the evaluator returned no {self.state.metric!r}, the validation metric this "
                f"run selects its model on"
            )
        return value

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        self.step_fn.sync_modules()
        return {
            "model": {k: v.detach().cpu() for k, v in self.method.state_dict().items()},
            "best_model": self.best_model,
            **self.step_fn.state_dict(),
            "train_state": dict(vars(self.state)),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.method.load_state_dict(sd["model"])
        self.best_model = sd.get("best_model")
        self.step_fn.load_state_dict(sd)
        self.state = TrainState(**sd["train_state"])


class _OnEpoch(Callback):
    def __init__(self, fn: Callable[[Trainer, dict[str, Any]], None]) -> None:
        self.fn = fn

    def on_epoch_end(self, trainer: Trainer, record: EpochRecord) -> None:
        self.fn(trainer, record.to_dict())  # noprop 0.1's hook took the metrics.jsonl dict


def _scores(record: EpochRecord) -> dict[str, float]:
    """The epoch's overall validation scores (accuracy and the task's others, no per-step lists)."""
    scores = {"accuracy": record.val_accuracy, **record.val_scores}
    return {k: float(v) for k, v in scores.items() if isinstance(v, int | float)}


def _mean(total: Tensor | None, count: int) -> float | None:
    """A loss part's epoch mean over the steps of one unit (None if the unit did not train)."""
    return None if total is None or not count else float(total) / count


@torch.no_grad()
def evaluate(
    method: Method,
    x: Tensor,
    y: Tensor,
    batch_size: int = 1000,
    deterministic: bool = False,
    seed: int = 0,
    *,
    task: Task | None = None,
    progress: bool = False,
    desc: str = "inference",
    precision: str = "32",
) -> dict[str, Any]:
    """Run inference on (x, y) in batches; the metric overall and after each step (read-out of z_t).

    ``progress`` shows a bar of images done (on a terminal only), with the number of read-outs.
    ``precision``: the networks under autocast (``--precision``; read-outs leave it as float32)."""
    task = task if task is not None else ClassificationTask.from_shape((), 0)
    was_training = method.training
    method.eval()
    devrng = torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else [])
    with devrng:
        torch.manual_seed(seed)
        score: Tensor | None = None
        extra: dict[str, Tensor] = {}
        batch_size = task.eval_batch_size(batch_size)
        unit = "img" if task.label_dims == 0 else "example"
        bar = tqdm(total=x.shape[0], desc=desc, unit=unit, leave=False, mininterval=1.0,
                   disable=None if progress else True)  # fmt: skip
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            with autocast(precision, x.device):
                logits = float32(
                    method.predict_steps(xb, deterministic=deterministic)
                )  # (S, B, [L,] m)
            # a NaN or +inf in the prediction is a broken model, never an accuracy (-inf is a
            # log-probability of zero: allowed)
            final = logits[-1]
            if bool((torch.isnan(final) | (final == math.inf)).any()):
                raise DivergenceError(
                    f"the model's {desc} read-out is NaN or infinite (its outputs overflowed)"
                )
            hits = task.score(logits, yb)
            score = hits if score is None else score + hits
            for k, v in task.extra_scores(logits, yb).items():
                extra[k] = extra[k] + v if k in extra else v
            bar.set_postfix(readouts=logits.shape[0], refresh=False)
            bar.update(xb.shape[0])
        bar.close()
    method.train(was_training)
    assert score is not None
    labels = y.numel()  # one label per image, or per position of a text window
    per_step = (score.double() / labels).tolist()
    out: dict[str, Any] = {"accuracy": per_step[-1], "accuracy_per_step": per_step}
    for k, v in extra.items():
        steps = (v.double() / labels).tolist()
        out[k], out[f"{k}_per_step"] = steps[-1], steps
    return out
