"""Build a run's method from its config and task (the one place that seeds the model's parameters)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.module import register_module_parameter_registration_hook
from torch.overrides import TorchFunctionMode

from .config import RunConfig
from .errors import CheckpointError
from .methods import BuildContext, Method
from .tasks import ClassificationTask, Task
from .untrusted import Shapes, compare_shapes


def build_method(
    cfg: RunConfig,
    task_or_shape: Task | tuple[int, ...],
    num_classes: int | None = None,
    train_x: Tensor | None = None,
    train_y: Tensor | None = None,
) -> Method:
    """The method named by ``cfg.method.method``, parameters seeded by ``--seed``.

    ``task_or_shape`` is a :class:`~noprop.tasks.Task`, or an input shape (with ``num_classes``) for a
    classification of in-memory tensors. ``train_x``/``train_y`` initialise the prototype embedding.
    """
    if isinstance(task_or_shape, Task):
        task = task_or_shape
    else:
        if num_classes is None:
            raise TypeError("build_method(cfg, in_shape, num_classes, ...) needs num_classes")
        task = ClassificationTask.from_shape(tuple(task_or_shape), num_classes)
    task.check_model(cfg.model)
    torch.manual_seed(cfg.train.seed)
    ctx = BuildContext(task, cfg.model, cfg.train.seed, train_x, train_y)
    method = cfg.method.cls.from_config(cfg.options, ctx)
    method.label_dims = task.label_dims  # the task's shape, not an option: z is (B[, L], d)
    return method


#: factory functions that :func:`skeleton_shapes` sends to the ``meta`` device when large
_FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn,
                        torch.randint, torch.arange, torch.linspace, torch.logspace, torch.eye,
                        torch.empty_strided, torch.normal})  # fmt: skip
#: tensors up to this many elements stay real during a skeleton build: the schedules and the
#: prototype initialisation compute with them (``.item()``, ``nonzero`` fail on ``meta``)
SKELETON_REAL_ELEMENTS = 1 << 16


class _LargeOnMeta(TorchFunctionMode):
    """Factory calls without a device make ``meta`` tensors when they would exceed
    :data:`SKELETON_REAL_ELEMENTS` elements (sized on ``meta`` first, so nothing large is allocated)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _FACTORIES and kwargs.get("device") is None:
            sized = func(*args, **{**kwargs, "device": "meta"})
            if sized.numel() > SKELETON_REAL_ELEMENTS:
                return sized
        return func(*args, **kwargs)


def _to_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> nn.Parameter | None:
    if param is None or param.device.type == "meta":
        return None
    return nn.Parameter(param.detach().to("meta"), requires_grad=param.requires_grad)


def skeleton_shapes(cfg: RunConfig, task: Task) -> Shapes:
    """Name → (dtype, shape) of every tensor in the state dict of the method ``cfg`` builds,
    found without allocating its weights: every parameter lives on the ``meta`` device, as does
    any other tensor above :data:`SKELETON_REAL_ELEMENTS` elements.

    Loading a model from an untrusted file compares these with the file's header *before* the
    model is built for real (noprop/runs/model.py), so a config cannot make noprop allocate more
    than the weights file holds. The config's hard limits (noprop/limits.py) bound this build.
    """
    x = torch.zeros(task.num_classes, *task.in_shape) if hasattr(task, "in_shape") else None
    hook = register_module_parameter_registration_hook(_to_meta)
    try:
        with _LargeOnMeta():
            method = build_method(cfg, task, None, x, torch.arange(task.num_classes))
    finally:
        hook.remove()
    return {k: (v.dtype, tuple(v.shape)) for k, v in method.state_dict().items()}


def check_weights(cfg: RunConfig, task: Task, found: Shapes, where: Path) -> None:
    """The tensors ``found`` in a weights file (``where``) are exactly those of the method ``cfg``
    builds — names, shapes, dtypes — checked on a skeleton before anything is allocated for them.

    Each unit (a DT block) owns at least one tensor, so a config implying more units than the file
    holds tensors is refused before even the skeleton is built.
    """
    units = cfg.method.cls.units_for(cfg.options)
    if units > len(found):
        raise CheckpointError(
            f"{where} holds {len(found)} tensors, too few for the {units} blocks its config implies"
        )
    compare_shapes(skeleton_shapes(cfg, task), found, where, CheckpointError)


def state_shapes(state: Any, where: Path) -> Shapes:
    """Name → (dtype, shape) of a loaded state dict; a CheckpointError unless it maps names to tensors."""
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise CheckpointError(f"{where} holds a model state that is not a map of names to tensors")
    return {k: (v.dtype, tuple(v.shape)) for k, v in state.items()}
