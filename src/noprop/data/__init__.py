"""Data sets for noprop: safe parsers, verified downloads and normalised splits.

See :mod:`noprop.data.datasets` for the loading rules (splits, normalisation, validation),
:mod:`noprop.data.formats` for the IDX / CIFAR-binary parsers and :mod:`noprop.data.download`
for the download table.
"""

from noprop.data.datasets import DATASETS, DataSplits, load_dataset

__all__ = ["DATASETS", "DataSplits", "load_dataset"]
