"""Data sets and loaders. Nothing downloads at run time: a missing or corrupt file raises
an error naming the file and how to get it."""
from __future__ import annotations

from .cifar import load_cifar10, load_cifar100
from .core import (CorruptDatasetError, DataSpec, ImageDataset, MissingDatasetError,
                   SearchData)
from .digits import load_digits
from .imagenet import FileBatchLoader, ImageFiles, load_imagenet
from .imagenet16 import load_imagenet16_120
from .loader import BatchLoader, InfiniteLoader, to_device, to_input
from .svhn import load_svhn
from .synthetic import synthetic_data

__all__ = ["DATASETS", "load_dataset", "make_loader", "SearchData", "DataSpec", "ImageDataset",
           "ImageFiles", "BatchLoader", "FileBatchLoader", "InfiniteLoader", "to_input",
           "to_device", "MissingDatasetError", "CorruptDatasetError", "synthetic_data"]

DATASETS = {
    "digits": load_digits,
    "cifar10": load_cifar10,
    "cifar100": load_cifar100,
    "svhn": load_svhn,
    "imagenet16-120": load_imagenet16_120,
    "imagenet": load_imagenet,
    "synthetic": lambda root=None, seed=0: synthetic_data(seed=seed),
}

#: data sets that read no files: a `data_dir` given with one is a mistake, not a no-op
EMBEDDED = frozenset({"digits", "synthetic"})


def load_dataset(name: str, data_dir=None, seed: int = 0, **options) -> SearchData:
    """Load the search splits of data set `name` (see `DATASETS`) from `data_dir`; `options`
    go to the data set's loader (ImageNet: `fractions`, `image_size`)."""
    try:
        loader = DATASETS[name]
    except KeyError:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}; got {name!r}") from None
    if name in EMBEDDED and data_dir is not None:
        raise ValueError(f"data_dir: the {name} data set is built in and reads no files, so "
                         f"{str(data_dir)!r} would be ignored; leave data_dir out, or name the "
                         f"data set it holds (dataset: one of "
                         f"{sorted(set(DATASETS) - EMBEDDED)})")
    return loader(data_dir, seed=seed, **options)


def make_loader(dataset, spec: DataSpec, batch_size: int, shuffle: bool, train: bool,
                seed: int = 0, workers: int = 0, pin_memory: bool = False):
    """The batch loader of a split: `BatchLoader` for images in memory, `FileBatchLoader`
    (decoding in `workers` processes) for image files."""
    if isinstance(dataset, ImageFiles):
        return FileBatchLoader(dataset, spec, batch_size, shuffle, train, seed,
                               workers=workers, pin_memory=pin_memory)
    return BatchLoader(dataset, spec, batch_size, shuffle, train, seed)
