"""Build a run's method from its config and task (the one place that seeds the model's parameters)."""

from __future__ import annotations

import torch
from torch import Tensor

from .config import RunConfig
from .methods import BuildContext, Method
from .tasks import ClassificationTask, Task


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
    method.label_dims = task.label_dims
    if getattr(cfg.options, "val_inference_steps", None) is not None:
        method.val_inference_steps = cfg.options.val_inference_steps  # type: ignore[attr-defined]
    return method
