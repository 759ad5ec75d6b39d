"""ImageNet16-120: the 16x16 down-sampled ImageNet restricted to its first 120 classes,
as used by NAS-Bench-201 (ALGORITHMS.md §1.2.8).

Files (Chrabaszcz et al.'s down-sampled ImageNet, "Imagenet16" pickles): `train_data_batch_1`
.. `train_data_batch_10` and `val_data`, each a pickle with 'data' (N, 768) uint8 and 1-based
'labels'. Classes 1..120 are kept (labels become 0..119): 151,700 training images.
The search split halves the training set (DrNAS/SDARTS protocol); `val_data` is the test set.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from .cifar import half_split
from .core import (CorruptDatasetError, DataSpec, ImageDataset, SearchData, require_data_dir,
                   require_file)

__all__ = ["load_imagenet16_120", "read_imagenet16_file"]

SPEC = DataSpec("imagenet16-120", 120, 3, 16,
                tuple(v / 255 for v in (122.68, 116.66, 104.01)),
                tuple(v / 255 for v in (63.22, 61.26, 65.09)), crop_padding=2, flip=True)
_HOW = ("Get the down-sampled ImageNet 16x16 pickles (Imagenet16_train.zip / Imagenet16_val.zip "
        "from image-net.org's 'downsampled' page) and put train_data_batch_1..10 and val_data "
        "in {dir} (pass --data-dir).")
TRAIN_IMAGES_120 = 151_700


def read_imagenet16_file(path: Path, max_class: int = 120) -> ImageDataset:
    try:
        with open(path, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise CorruptDatasetError(f"could not read ImageNet16 file {path}: "
                                  f"{type(e).__name__}: {e}. Download it again.") from e
    if data.ndim != 2 or data.shape[1] != 768 or len(labels) != len(data):
        raise CorruptDatasetError(f"{path}: expected data (N, 768) with N labels; got data "
                                  f"{data.shape} and {len(labels)} labels")
    keep = (labels >= 1) & (labels <= max_class)
    images = torch.from_numpy(data[keep].reshape(-1, 3, 16, 16).copy())
    return ImageDataset(images, torch.from_numpy(labels[keep] - 1))


def load_imagenet16_120(root, seed: int = 0, portion: float = 0.5,
                        check_size: bool = True) -> SearchData:
    d = require_data_dir(root, "imagenet16-120", _HOW)
    how = _HOW.format(dir=d)
    parts = [read_imagenet16_file(require_file(d / f"train_data_batch_{i}", how))
             for i in range(1, 11)]
    train = ImageDataset(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
    if check_size and len(train) != TRAIN_IMAGES_120:
        raise CorruptDatasetError(f"{d}: expected {TRAIN_IMAGES_120} training images of the "
                                  f"first 120 classes; got {len(train)}")
    test = read_imagenet16_file(require_file(d / "val_data", how))
    train, val = half_split(train, portion)
    return SearchData(SPEC, train, val, test)
