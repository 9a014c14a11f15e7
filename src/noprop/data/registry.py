"""Which task every ``--dataset`` poses: the one place that decides.

The image data sets (:data:`noprop.data.datasets.DATASETS`, ``SPECS[name].task``) and your own data
(``folder``, ``npy``) pose classification; the text corpora (:data:`noprop.data.text.TEXT_DATASETS`)
pose next-byte prediction (``language``). Config validation, the task builder
(:func:`noprop.tasks.task_for`), ``--augment`` and the image-only commands ask :func:`task_kind`
instead of testing membership in a tuple each.
"""

from __future__ import annotations

from ..errors import ConfigError
from .datasets import DATASETS, SPECS, USER_DATASETS
from .text import TEXT_DATASETS

#: ``--dataset`` name → the kind of task it poses (a key of :data:`noprop.tasks.TASKS`)
DATASET_TASKS: dict[str, str] = {
    **{name: SPECS[name].task for name in DATASETS},
    **{name: "classification" for name in USER_DATASETS},
    **{name: "language" for name in TEXT_DATASETS},
}
#: every ``--dataset`` value, in the order ``--help`` lists them
ALL_DATASETS: tuple[str, ...] = tuple(DATASET_TASKS)


def task_kind(name: str) -> str:
    """``classification`` or ``language`` for ``--dataset name``; a one-line ConfigError naming the
    data sets otherwise."""
    try:
        return DATASET_TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(
            f"unknown --dataset {name!r}; choose one of {', '.join(ALL_DATASETS)}"
        ) from None


def is_text(name: str) -> bool:
    """Whether ``--dataset name`` is a text corpus (a label per position)."""
    return task_kind(name) == "language"
