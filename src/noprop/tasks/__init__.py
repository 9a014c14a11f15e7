"""Tasks: what is predicted from what (:class:`Task`); ``task_for(dataset)`` picks a data set's task.

Adding a task: one file here with a :class:`Task` subclass, one line in :data:`TASKS`, and its data
sets' specs naming it (``DatasetSpec.task``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import DataConfig
from ..data.datasets import USER_DATASETS
from ..data.registry import task_kind
from .base import BlockFamily, Task
from .classification import ClassificationTask
from .language import LanguageTask, bits, mixture_bits, unigram_bits

#: task name → class; which data set poses which task: :data:`noprop.data.registry.DATASET_TASKS`
TASKS: dict[str, type[Task]] = {"classification": ClassificationTask, "language": LanguageTask}


def task_for(
    data: str | DataConfig, *, recorded: dict[str, Any] | None = None, cache: Path | None = None
) -> Task:
    """The task a data set poses: a name, or a :class:`DataConfig` (its ``--context`` for text).

    Your own data (``folder``, ``npy``) are classification whose shape and classes are known once the
    data are read, or from ``recorded`` (what a run recorded of them: its ``data.json``); ``cache`` is
    the run's decoded-image cache (:mod:`noprop.data.user`)."""
    name = data if isinstance(data, str) else data.dataset
    kind = task_kind(name)
    if kind == "language":
        return LanguageTask(name, 128 if isinstance(data, str) else data.context)
    if name in USER_DATASETS:
        return ClassificationTask(name, recorded=recorded, cache=cache)
    return TASKS[kind](name)  # type: ignore[call-arg]


__all__ = [
    "TASKS",
    "BlockFamily",
    "ClassificationTask",
    "LanguageTask",
    "Task",
    "bits",
    "mixture_bits",
    "task_for",
    "unigram_bits",
]
