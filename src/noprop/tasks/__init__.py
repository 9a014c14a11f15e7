"""Tasks: what is predicted from what (:class:`Task`); ``task_for(dataset)`` picks a data set's task."""

from __future__ import annotations

from .base import BlockFamily, Task
from .classification import ClassificationTask

#: task name → class; every data set of :data:`noprop.data.DATASETS` is a classification data set today
TASKS: dict[str, type[Task]] = {"classification": ClassificationTask}


def task_for(dataset: str) -> Task:
    """The task of a named data set."""
    return ClassificationTask(dataset)


__all__ = ["TASKS", "BlockFamily", "ClassificationTask", "Task", "task_for"]
