"""Datasets: registry, original file formats, locating/downloading, and device-side batching.

    from bioplaus.data import load_dataset, TrainBatches, eval_batches
    ds = load_dataset("fashion-mnist-mini")          # ships with the package
    for x, y in TrainBatches(ds, backend, 128, seed=1).epoch(1): ...

See :mod:`.registry` (facts per dataset), :mod:`.formats` (readers), :mod:`.fetch` (where
files are looked for and how they are downloaded), :mod:`.batches` (augmentation, batching).
"""

from .batches import TrainBatches, eval_batches
from .dataset import Dataset, check_data, load_dataset
from .registry import DATASETS, DataError, DatasetSpec, FileSpec, get_spec

__all__ = [
    "DATASETS",
    "DataError",
    "Dataset",
    "DatasetSpec",
    "FileSpec",
    "TrainBatches",
    "check_data",
    "eval_batches",
    "get_spec",
    "load_dataset",
]
