"""Data containers shared by every data set: images stay uint8 (N, C, H, W) in memory and
are turned into normalised float batches by the loader (see `loader.py`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ImageDataset", "DataSpec", "SearchData", "MissingDatasetError",
           "CorruptDatasetError", "require_file", "require_data_dir"]


class MissingDatasetError(FileNotFoundError):
    """A data file is absent; the message names the file and how to obtain it."""


class CorruptDatasetError(ValueError):
    """A data file exists but cannot be read or has the wrong content."""


def require_data_dir(root, dataset: str, how_to_get: str) -> Path:
    """`root` as a path; a missing one is a `MissingDatasetError` that says where to get the
    files (`how_to_get` with its `{dir}` shown as DATA_DIR)."""
    if root is None:
        raise MissingDatasetError(
            f"the {dataset} data set is read from files and no data_dir (--data-dir) was "
            f"given. {how_to_get.format(dir='DATA_DIR')}")
    return Path(root).expanduser()


def require_file(path: Path, how_to_get: str) -> Path:
    if not path.is_file():
        raise MissingDatasetError(f"missing data file {path}. {how_to_get}")
    return path


@dataclass
class ImageDataset:
    images: torch.Tensor  #: uint8 (N, C, H, W)
    labels: torch.Tensor  #: int64 (N,)

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W); got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must have shape ({self.images.shape[0]},); got "
                             f"{tuple(self.labels.shape)}")
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return self.images.shape[0]

    def subset(self, index: torch.Tensor) -> "ImageDataset":
        return ImageDataset(self.images[index], self.labels[index])


@dataclass(frozen=True)
class DataSpec:
    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]  #: per channel, in [0, 1] units
    std: tuple[float, ...]
    crop_padding: int = 0  #: random crop with this zero padding in training (0: none)
    flip: bool = False  #: random horizontal flips in training
    stem: str = "cifar"  #: the supernet stem for this image size (`imagenet`: stride 8)


@dataclass
class SearchData:
    """The three splits of a search: weights train on `train`, alphas on `val`, `test` is
    held out and only evaluated at the end."""

    spec: DataSpec
    train: ImageDataset
    val: ImageDataset
    test: ImageDataset | None

    def describe(self) -> str:
        test = len(self.test) if self.test is not None else 0
        return (f"{self.spec.name}: {len(self.train)} train / {len(self.val)} val / {test} test, "
                f"{self.spec.num_classes} classes, {self.spec.in_channels}x"
                f"{self.spec.image_size}x{self.spec.image_size}")
