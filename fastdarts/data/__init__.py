"""Data sets and loaders. Nothing downloads at run time: a missing or corrupt file raises
an error naming the file and how to get it."""
from __future__ import annotations

from .cifar import load_cifar10, load_cifar100
from .core import (CorruptDatasetError, DataSpec, ImageDataset, MissingDatasetError,
                   SearchData)
from .digits import load_digits
from .imagenet16 import load_imagenet16_120
from .loader import BatchLoader, InfiniteLoader, to_input
from .svhn import load_svhn
from .synthetic import synthetic_data

__all__ = ["DATASETS", "load_dataset", "SearchData", "DataSpec", "ImageDataset", "BatchLoader",
           "InfiniteLoader", "to_input", "MissingDatasetError", "CorruptDatasetError",
           "synthetic_data"]

DATASETS = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "imagenet16-120": load_imagenet16_120,
    "synthetic": lambda root=None, seed=0: synthetic_data(seed=seed),
}


def load_dataset(name: str, data_dir=None, seed: int = 0) -> SearchData:
    """Load the search splits of data set `name` (see `DATASETS`) from `data_dir`."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}; got {name!r}") from None
    return loader(data_dir, seed=seed)
