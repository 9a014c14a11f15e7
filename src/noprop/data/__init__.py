"""Data sets for noprop: safe parsers, verified downloads and normalised splits.

See :mod:`noprop.data.datasets` for the loading rules (splits, normalisation, validation),
:mod:`noprop.data.formats` for the IDX / CIFAR-binary parsers, :mod:`noprop.data.download`
for the download table and :mod:`noprop.data.config` for the ``--dataset`` options.
"""

from noprop.data.config import DataConfig
from noprop.data.datasets import DATASETS, SPECS, DatasetSpec, DataSplits, load_dataset
from noprop.data.registry import ALL_DATASETS, DATASET_TASKS, task_kind
from noprop.data.sources import as_source, class_examples, num_examples, split_tensors
from noprop.data.text import TEXT_DATASETS

__all__ = [
    "ALL_DATASETS",
    "DATASETS",
    "DATASET_TASKS",
    "SPECS",
    "TEXT_DATASETS",
    "DataConfig",
    "DataSplits",
    "DatasetSpec",
    "as_source",
    "class_examples",
    "load_dataset",
    "num_examples",
    "split_tensors",
    "task_kind",
]
