"""The embedded default data set: scikit-learn's handwritten digits.

1,797 real 8x8 grey-scale images of the digits 0-9 (the UCI optical recognition test set),
shipped inside scikit-learn, so a search runs on real data with nothing to download.
Split, stratified with a fixed seed: 20% held-out test, the rest halved into the weight
(train) and architecture (val) splits.
"""
from __future__ import annotations

import torch

from .core import DataSpec, ImageDataset, SearchData

__all__ = ["load_digits"]

SPEC = DataSpec(name="digits", num_classes=10, in_channels=1, image_size=8,
                mean=(0.3050,), std=(0.3780,), crop_padding=1, flip=False)


def _stratified_split(labels: torch.Tensor, fractions: tuple[float, ...], seed: int):
    """Split indices per class in the given fractions (the last part takes the remainder)."""
    g = torch.Generator().manual_seed(seed)
    parts = [[] for _ in fractions]
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        start = 0
        for p, frac in enumerate(fractions):
            end = len(idx) if p == len(fractions) - 1 else start + round(frac * len(idx))
            parts[p].append(idx[start:end])
            start = end
    return [torch.cat(p).sort().values for p in parts]


def load_digits(root=None, seed: int = 0) -> SearchData:
    """`root` is ignored: the data ship with scikit-learn."""
    try:
        from sklearn.datasets import load_digits as sk_load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the digits data set needs scikit-learn: "
                          "pip install -c constraints.txt scikit-learn") from e
    bunch = sk_load_digits()
    # Pixel values are 0..16; scale to the uint8 range used by every other data set.
    images = torch.from_numpy(bunch.images).mul(255.0 / 16.0).round().to(torch.uint8)
    images = images.unsqueeze(1)  # (1797, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).to(torch.int64)
    full = ImageDataset(images, labels)
    train_idx, val_idx, test_idx = _stratified_split(labels, (0.4, 0.4, 0.2), seed)
    return SearchData(SPEC, full.subset(train_idx), full.subset(val_idx), full.subset(test_idx))
