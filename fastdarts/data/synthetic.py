"""Synthetic images for benchmarks and tests: shapes and throughput, not accuracy."""
from __future__ import annotations

import torch

from .core import DataSpec, ImageDataset, SearchData

__all__ = ["synthetic_data"]


def synthetic_data(num_classes: int = 10, image_size: int = 32, in_channels: int = 3,
                   num_train: int = 256, num_val: int = 256, num_test: int = 256,
                   seed: int = 0) -> SearchData:
    """Random uint8 images; each class adds its own fixed pattern so labels are learnable."""
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randint(0, 96, (num_classes, in_channels, image_size, image_size),
                             generator=g)

    def make(n):
        labels = torch.randint(0, num_classes, (n,), generator=g)
        noise = torch.randint(0, 160, (n, in_channels, image_size, image_size), generator=g)
        return ImageDataset((noise + patterns[labels]).to(torch.uint8), labels)

    spec = DataSpec("synthetic", num_classes, in_channels, image_size,
                    (0.5,) * in_channels, (0.25,) * in_channels)
    return SearchData(spec, make(num_train), make(num_val), make(num_test))
