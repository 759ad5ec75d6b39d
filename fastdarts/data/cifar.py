"""CIFAR-10 and CIFAR-100 from the standard python-pickle archives.

Search split as in DARTS (ALGORITHMS.md §3.1, §5.2): the first half of the training set
trains the weights, the second half the architecture (index order, no shuffle); the test
set is held out.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .core import (CorruptDatasetError, DataSpec, ImageDataset, SearchData, require_data_dir,
                   require_file)

__all__ = ["load_cifar10", "load_cifar100", "read_cifar_batch", "half_split"]

CIFAR10_SPEC = DataSpec("cifar10", 10, 3, 32, (0.49139968, 0.48215827, 0.44653124),
                        (0.24703233, 0.24348505, 0.26158768), crop_padding=4, flip=True)
CIFAR100_SPEC = DataSpec("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409),
                         (0.2673, 0.2564, 0.2762), crop_padding=4, flip=True)

_HOW10 = ("Download cifar-10-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
          "and extract it so that {dir}/data_batch_1 exists (pass --data-dir to its parent).")
_HOW100 = ("Download cifar-100-python.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html "
           "and extract it so that {dir}/train exists (pass --data-dir to its parent).")


def read_cifar_batch(path: Path, label_key: bytes, expected: int | None = None) -> ImageDataset:
    """Read one CIFAR pickle (keys b'data' (N, 3072) uint8 and `label_key`)."""
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="bytes")
        data = np.asarray(entry[b"data"], dtype=np.uint8)
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise CorruptDatasetError(
            f"could not read CIFAR batch {path}: {type(e).__name__}: {e}. "
            "The file is corrupt or not a CIFAR python-pickle archive; download it again.") from e
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise CorruptDatasetError(f"{path}: expected data (N, 3072) with N labels; got data "
                                  f"{data.shape} and {len(labels)} labels")
    if expected is not None and len(data) != expected:
        raise CorruptDatasetError(f"{path}: expected {expected} images; got {len(data)}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return ImageDataset(images, torch.from_numpy(labels))


def _concat(parts: list[ImageDataset]) -> ImageDataset:
    return ImageDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))


def half_split(train: ImageDataset, portion: float = 0.5):
    """First `portion` of the training set for the weights, the rest for the architecture."""
    split = int(round(portion * len(train)))
    index = torch.arange(len(train))
    return train.subset(index[:split]), train.subset(index[split:])


def _find_dir(root, dataset: str, name: str, how: str) -> Path:
    root = require_data_dir(root, dataset, how.replace("{dir}", "{dir}/" + name))
    return root if root.name == name else root / name


def load_cifar10(root, seed: int = 0, portion: float = 0.5) -> SearchData:
    d = _find_dir(root, "cifar10", "cifar-10-batches-py", _HOW10)
    how = _HOW10.format(dir=d)
    batches = [read_cifar_batch(require_file(d / f"data_batch_{i}", how), b"labels", 10000)
               for i in range(1, 6)]
    test = read_cifar_batch(require_file(d / "test_batch", how), b"labels", 10000)
    train, val = half_split(_concat(batches), portion)
    return SearchData(CIFAR10_SPEC, train, val, test)


def load_cifar100(root, seed: int = 0, portion: float = 0.5) -> SearchData:
    d = _find_dir(root, "cifar100", "cifar-100-python", _HOW100)
    how = _HOW100.format(dir=d)
    full = read_cifar_batch(require_file(d / "train", how), b"fine_labels", 50000)
    test = read_cifar_batch(require_file(d / "test", how), b"fine_labels", 10000)
    train, val = half_split(full, portion)
    return SearchData(CIFAR100_SPEC, train, val, test)
