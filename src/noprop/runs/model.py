"""Using a trained model: ``noprop.load`` (a run directory or an exported one), ``predict``, ``export``.

``model = noprop.load("runs/x")`` returns a :class:`TrainedModel`: the validation-selected method in
eval mode on the chosen device, with the data set's normalisation, class names and the run's config.

* ``model.predict(x)`` → class indices; ``model.predict_proba(x, chains=N)`` → class probabilities,
  the head's softmax averaged over N stochastic inference chains (one N·B batched pass), or of the
  single deterministic chain (z_0 = 0, no noise) with ``deterministic=True``. Stochastic inference is
  seeded (``seed``, default the run's ``--seed``), so a call repeats exactly.
* Inputs: raw ``uint8`` images (normalised here exactly as the data loader does, so predictions equal
  ``noprop eval``'s), or ``float`` tensors already normalised (what :func:`noprop.load_dataset`
  returns). Shape (N, C, H, W), or (N, H, W) for one channel, or one image without N.
* ``export(run_dir, out)`` writes ``model.safetensors`` (weights only, the selected epoch),
  ``config.json`` and ``normalisation.json`` (mean, std, pixel scale, input shape, class names): no
  pickle, no optimiser state, loadable by ``noprop.load(out)`` without the data set.
* A run directory (not an export) computes the normalisation from its training split, so loading it
  reads the data set: from ``data_dir`` when given, else where the run's config says, never created
  or downloaded there (:mod:`noprop.runs.reading`).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..atomic import atomic_write_json
from ..build import build_method, check_weights
from ..config import RunConfig
from ..data.datasets import USER_DATASETS, normalise
from ..data.formats import checked_images
from ..data.registry import is_text
from ..device import pick_device
from ..errors import CheckpointError, ConfigError, DivergenceError
from ..methods import Method
from ..precision import autocast, check_precision
from ..rundir import EXPORTED_WEIGHTS, NORMALISATION, RunDir
from ..runlock import LOCK_FILE, run_lock
from ..tasks import Task, task_for
from ..training.checkpoint import load_checkpoint
from ..untrusted import guard, one_line, read_json, safetensors_header
from .reading import read_data
from .train import check_payload, first_detail

WEIGHTS = EXPORTED_WEIGHTS
EXPORT_FILES = frozenset({WEIGHTS, "config.json", NORMALISATION})


@dataclass(frozen=True)
class Normalisation:
    """How raw pixels become model inputs: ``(x / max_value − mean) / std`` per channel."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_value: float

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "max_value": self.max_value}


@dataclass
class TrainedModel:
    """A trained method ready for inference (module docstring)."""

    method: Method
    config: RunConfig
    task: Task
    normalisation: Normalisation
    device: torch.device
    precision: str = "32"
    """the networks' precision at inference (``--precision``; default: the run's training precision)"""

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.task.class_name(k) for k in range(self.task.num_classes))

    @property
    def in_shape(self) -> tuple[int, ...]:
        return self.task.in_shape

    def prepare(self, x: Tensor | np.ndarray) -> Tensor:
        """Model inputs (N, *in_shape) on the device from raw uint8 or normalised float images."""
        if isinstance(x, Tensor):  # any device or dtype: uint8 and floats as they are (a float64
            x = x.detach().cpu()  # overflowing float32 is refused by name), the rest float32
            keep = (torch.uint8, torch.float16, torch.float32, torch.float64)
            array = x.numpy() if x.dtype in keep else x.float().numpy()
        else:
            array = np.asarray(x)
        shape = self.in_shape
        one_channel = len(shape) == 3 and shape[0] == 1
        if array.shape == shape or (one_channel and array.shape == shape[1:]):  # one image
            array = array[None]
        if one_channel and array.ndim == 3 and array.shape[1:] == shape[1:]:  # (N, H, W)
            array = array[:, None]
        if array.ndim != len(shape) + 1 or tuple(array.shape[1:]) != shape or len(array) == 0:
            raise ConfigError(
                f"inputs of shape {tuple(array.shape)} do not fit this model, which takes images "
                f"of shape {shape} (as (N, {', '.join(map(str, shape))}) or one image)"
            )
        array = checked_images(array, "inputs")  # as training's: dtype, byte order, float32 range
        if array.dtype == np.uint8:
            n = self.normalisation
            t = normalise(array, 1.0 / n.max_value, n.mean, n.std)
        else:
            t = torch.from_numpy(np.require(array, np.float32, requirements=["C", "W"]))
        return t.to(self.device)  # finite: checked_images checked the values as float32

    @torch.no_grad()
    def predict_proba(
        self,
        x: Tensor | np.ndarray,
        *,
        chains: int = 1,
        deterministic: bool = False,
        seed: int | None = None,
        batch_size: int | None = None,
    ) -> Tensor:
        """Class probabilities (N, m): the head's softmax averaged over ``chains`` inference chains."""
        if chains < 1:
            raise ConfigError(f"--chains must be >= 1 (got {chains})")
        chains = 1 if deterministic else chains
        xs = self.prepare(x)
        bs = batch_size or max(1, self.config.train.eval_batch_size // chains)
        seed = self.config.train.seed if seed is None else seed
        out = []
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, xs.shape[0], bs):
                xb = xs[start : start + bs]
                with autocast(self.precision, self.device):  # (C, B, m); inputs encoded once
                    logits = self.method.final_logits(
                        xb, chains=chains, deterministic=deterministic
                    )
                out.append(logits.float().softmax(-1).mean(0))
        probs = torch.cat(out).cpu()
        if not bool(torch.isfinite(probs).all()):  # never print nan as a prediction
            raise DivergenceError(
                "the model gives NaN or infinite probabilities (its outputs overflowed): it is "
                "broken; train it again"
            )
        return probs

    def predict(self, x: Tensor | np.ndarray, **kw: Any) -> Tensor:
        """Class indices (N,): the argmax of :meth:`predict_proba` (same keywords)."""
        return self.predict_proba(x, **kw).argmax(-1)


def _skeleton_method(cfg: RunConfig, task: Task) -> Method:
    """The run's method with the right architecture; its weights are loaded next, so the prototype
    embedding is initialised from one stand-in image per class instead of the training set."""
    x = torch.zeros(task.num_classes, *task.in_shape)
    return build_method(cfg, task, None, x, torch.arange(task.num_classes))


def _load_weights(method: Method, state: dict[str, Tensor], where: Path) -> None:
    try:
        method.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{where} does not match the run's model: {first_detail(e)}"
        ) from None


def load(
    path: str | Path,
    device: str = "auto",
    precision: str | None = None,
    *,
    data_dir: str | Path | None = None,
) -> TrainedModel:
    """A run directory (``checkpoint.pt``) or an exported directory (``model.safetensors``).

    ``precision``: of the networks at inference (default: the precision the run was trained in).
    ``data_dir``: a run directory's data set, for the normalisation (default: where its config
    says; read only, module docstring). An export needs no data.

    Everything in the directory is untrusted (SECURITY.md): the config is typed and bounded
    (noprop/limits.py), and the weights' names, shapes and dtypes — the safetensors header, or the
    weights-only checkpoint's state — are compared with the model the config implies, built on the
    ``meta`` device, before the model is built for real.
    """
    return load_trained(path, device, precision, data_dir=data_dir)


def _ask_config(path: Path) -> str:
    """What ``predict`` and ``export`` (no ``--data-dir`` flag) ask for when a run's data are not
    where its config says."""
    return (
        f"point data_dir in {path / 'config.json'} at a directory holding them (predict and export "
        "normalise with their training split)"
    )


def load_trained(
    path: str | Path,
    device: str = "auto",
    precision: str | None = None,
    *,
    data_dir: str | Path | None = None,
    ask: str | None = None,
) -> TrainedModel:
    """:func:`load`; ``ask``: how a missing data set's message says to point at the data (default:
    edit the run's config, the way for commands without ``--data-dir``)."""
    path = Path(path)
    dev = pick_device(device)
    run = RunDir(path)
    if run.is_run() and is_text(run.config().data.dataset):
        raise ConfigError(
            f"{path} is a text run: predict, export and eval --chains read image classifiers; "
            "evaluate it with noprop eval RUN (bits per byte) or noprop lm compare"
        )
    if (path / WEIGHTS).is_file():
        cfg = run.config()
        recorded = None  # your own data: the shape and classes normalisation.json records
        if cfg.data.dataset in USER_DATASETS:
            recorded = read_json(path / NORMALISATION, CheckpointError, what="normalisation file")
        task = task_for(cfg.data, recorded=recorded)
        info = _read_normalisation(path, task.in_shape)
        weights = path / WEIGHTS
        check_weights(cfg, task, safetensors_header(weights, CheckpointError), weights)
        method = _skeleton_method(cfg, task)
        with guard(weights, "safetensors file", CheckpointError):
            state = load_file(weights)
        _load_weights(method, state, weights)
    else:
        cfg = run.config()
        payload = load_checkpoint(run.checkpoint_path)
        check_payload(run, payload, cfg)  # also the state's shapes against the config's model
        task, data = read_data(cfg, run, data_dir, ask=ask or _ask_config(path))
        info = Normalisation(data.mean, data.std, task.spec.max_value)  # type: ignore[attr-defined]
        method = _skeleton_method(cfg, task)
        state = payload["trainer"].get("best_model") or payload["trainer"]["model"]
        _load_weights(method, state, run.checkpoint_path)
    method = method.to(dev).eval()
    if precision is not None:
        check_precision(precision)
    return TrainedModel(method, cfg, task, info, dev, precision or cfg.train.precision)


def _read_normalisation(path: Path, in_shape: tuple[int, ...]) -> Normalisation:
    """``normalisation.json``: one finite mean and one std > 0 per channel, a pixel scale > 0."""
    where = path / NORMALISATION
    d = read_json(where, CheckpointError, what="normalisation file")
    channels = in_shape[0] if len(in_shape) == 3 else 1
    try:
        mean = tuple(float(v) for v in d["mean"])
        std = tuple(float(v) for v in d["std"])
        max_value = float(d["max_value"])
    except (KeyError, TypeError, ValueError, OverflowError) as e:
        raise CheckpointError(f"cannot read {where}: {one_line(e)}") from None
    finite = all(math.isfinite(v) for v in (*mean, *std, max_value))
    if len(mean) != channels or len(std) != channels or not finite:
        raise CheckpointError(
            f"{where}: mean and std must be {channels} finite numbers each (this model's channels)"
        )
    if min(std) <= 0 or max_value <= 0:
        raise CheckpointError(f"{where}: std and max_value must be > 0")
    return Normalisation(mean, std, max_value)


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    overwrite: bool = False,
    data_dir: str | Path | None = None,
) -> Path:
    """Write ``model.safetensors`` + ``config.json`` + ``normalisation.json`` to ``out``.

    The directory appears complete or not at all: it is written next to ``out`` and renamed.
    ``data_dir``: the run's data set, for the normalisation (:func:`load`).
    """
    out = Path(out).resolve()
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {out} exists and is not a directory")
        held = {p.name for p in out.iterdir()} - {LOCK_FILE}
        if held and not overwrite:
            raise ConfigError(f"--out {out} exists; choose another directory or add --overwrite")
        if held - EXPORT_FILES:  # --overwrite replaces an earlier export, never anything else
            raise ConfigError(
                f"--out {out} holds files that are not an export ({', '.join(sorted(held - EXPORT_FILES)[:3])}); "
                "refusing to replace it"
            )
    if out == Path(run_dir).resolve() or Path(run_dir).resolve() in out.parents:
        raise ConfigError(f"--out {out} is inside the run directory {run_dir}; choose another")
    model = load(run_dir, device="cpu", data_dir=data_dir)
    with contextlib.ExitStack() as hold:
        if out.is_dir():  # --overwrite: one writer of --out at a time (noprop/runlock.py)
            hold.enter_context(run_lock(out, "export --overwrite"))
        _write_export(model, out)
    return out


def _write_export(model: TrainedModel, out: Path) -> None:
    """The export's files in a temporary sibling of ``out``, then renamed over it."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        state = {k: v.detach().contiguous() for k, v in model.method.state_dict().items()}
        save_file(
            state,
            str(tmp / WEIGHTS),
            metadata={"format": "noprop", "method": model.config.method.method},
        )
        atomic_write_json(tmp / "config.json", model.config.to_dict())
        norm = {**model.normalisation.to_dict(), "in_shape": list(model.in_shape),
                "class_names": list(model.class_names), "dataset": model.config.data.dataset}  # fmt: skip
        atomic_write_json(tmp / NORMALISATION, norm)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"cannot write --out {out}: {e.strerror or e}") from None
