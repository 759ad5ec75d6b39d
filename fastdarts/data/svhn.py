"""SVHN (cropped digits, format 2) from the official `.mat` files."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .cifar import half_split
from .core import (CorruptDatasetError, DataSpec, ImageDataset, SearchData, require_data_dir,
                   require_file)

__all__ = ["load_svhn", "read_svhn_mat"]

SPEC = DataSpec("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970),
                crop_padding=4, flip=False)
_HOW = ("Download train_32x32.mat and test_32x32.mat from "
        "http://ufldl.stanford.edu/housenumbers/ into {dir} (pass --data-dir).")


def read_svhn_mat(path: Path) -> ImageDataset:
    """X is (32, 32, 3, N) uint8; y is (N, 1) with the digit 0 stored as 10."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(path))
        x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    except (ValueError, KeyError, OSError, TypeError) as e:
        raise CorruptDatasetError(f"could not read SVHN file {path}: {type(e).__name__}: {e}. "
                                  "Download it again.") from e
    if x.ndim != 4 or x.shape[:3] != (32, 32, 3) or x.shape[3] != len(y):
        raise CorruptDatasetError(f"{path}: expected X (32, 32, 3, N) and N labels; got X "
                                  f"{x.shape} and {len(y)} labels")
    images = torch.from_numpy(np.ascontiguousarray(x.transpose(3, 2, 0, 1)).astype(np.uint8))
    labels = torch.from_numpy((y.astype(np.int64) % 10))
    return ImageDataset(images, labels)


def load_svhn(root, seed: int = 0, portion: float = 0.5) -> SearchData:
    d = require_data_dir(root, "svhn", _HOW)
    how = _HOW.format(dir=d)
    train = read_svhn_mat(require_file(d / "train_32x32.mat", how))
    test = read_svhn_mat(require_file(d / "test_32x32.mat", how))
    train, val = half_split(train, portion)
    return SearchData(SPEC, train, val, test)
