"""Tasks: what is predicted from what (:class:`Task`); ``task_for(dataset)`` picks a data set's task.

Adding a task: one file here with a :class:`Task` subclass, one line in :data:`TASKS`, and its data
sets' specs naming it (``DatasetSpec.task``).
"""

from __future__ import annotations

from ..data.datasets import SPECS
from .base import BlockFamily, Task
from .classification import ClassificationTask

#: task name → class; every data set of :data:`noprop.data.DATASETS` is a classification data set today
TASKS: dict[str, type[Task]] = {"classification": ClassificationTask}


def task_for(dataset: str) -> Task:
    """The task a named data set poses (its spec names it: ``SPECS[dataset].task``)."""
    return TASKS[SPECS[dataset].task](dataset)  # type: ignore[call-arg]


__all__ = ["TASKS", "BlockFamily", "ClassificationTask", "Task", "task_for"]
