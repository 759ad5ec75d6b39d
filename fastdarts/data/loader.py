"""Batch iteration with exactly resumable state.

The order of each pass is a permutation drawn from a generator seeded by (seed, pass), and
augmentation draws from a generator whose state is part of `state_dict()`. A checkpoint
therefore restores the data stream exactly, including a validation stream cached across
epochs (the DARTS fix for `next(iter(valid_queue))`, which built a fresh iterator, and
its worker processes, at every step).
"""
from __future__ import annotations

import torch

from .core import DataSpec, ImageDataset

__all__ = ["BatchLoader", "InfiniteLoader", "to_input", "to_device"]


def to_input(images: torch.Tensor, spec: DataSpec, train: bool,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, C, H, W) -> normalised float (N, C, H, W), with the spec's augmentation
    (zero-padded random crop, horizontal flip) when `train`."""
    x = images.to(torch.float32).div_(255.0)
    n, _, h, w = x.shape
    if train and spec.crop_padding > 0:
        p = spec.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        ox = torch.randint(0, 2 * p + 1, (n,), generator=generator)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]  # (N, 1, H, 1)
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]  # (N, 1, 1, W)
        batch = torch.arange(n)[:, None, None, None]
        chans = torch.arange(x.shape[1])[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    if train and spec.flip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def to_device(x: torch.Tensor, spec: DataSpec, device, memory_format=torch.contiguous_format):
    """A loader's batch on `device` in `memory_format`. Float batches are ready; uint8 ones
    (decoded files, already cropped) are copied as bytes and normalised on the device."""
    x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = to_input(x, spec, train=False)
    return x.contiguous(memory_format=memory_format)


class BatchLoader:
    """Yields `(inputs, labels)` float/int64 batches of one pass over `dataset`.

    Args:
        shuffle: draw a new permutation per pass (seeded by `seed` and the pass index);
            otherwise index order.
        train: apply the spec's augmentation.
        drop_last: drop a final batch smaller than `batch_size`.
    """

    def __init__(self, dataset: ImageDataset, spec: DataSpec, batch_size: int, shuffle: bool,
                 train: bool, seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if len(dataset) == 0:
            raise ValueError("dataset is empty")
        self.dataset, self.spec = dataset, spec
        self.batch_size, self.shuffle, self.train = batch_size, shuffle, train
        self.seed, self.drop_last = seed, drop_last
        self.augment_generator = torch.Generator().manual_seed(seed + 1)
        self.pass_index = 0

    def __len__(self) -> int:
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, pass_index: int) -> torch.Tensor:
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + pass_index)
        return torch.randperm(n, generator=g)

    def batches(self, pass_index: int, start: int = 0):
        """Batches of pass `pass_index`, from batch number `start`."""
        order = self.order(pass_index)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = to_input(self.dataset.images[idx], self.spec, self.train,
                         self.augment_generator)
            yield x, self.dataset.labels[idx]

    def __iter__(self):
        pass_index = self.pass_index
        self.pass_index += 1
        return self.batches(pass_index)

    def state_dict(self) -> dict:
        return {"pass_index": self.pass_index,
                "augment_generator": self.augment_generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.pass_index = int(state["pass_index"])
        self.augment_generator.set_state(state["augment_generator"])


class InfiniteLoader:
    """An endless stream of batches over consecutive passes of a `BatchLoader`, with its
    position (pass, batch) in `state_dict()`."""

    def __init__(self, loader: BatchLoader):
        self.loader = loader
        self.pass_index = 0
        self.position = 0
        self._it = None

    def next(self):
        while True:
            if self._it is None:
                self._it = self.loader.batches(self.pass_index, self.position)
            try:
                batch = next(self._it)
                self.position += 1
                return batch
            except StopIteration:
                self._it = None
                self.pass_index += 1
                self.position = 0

    def state_dict(self) -> dict:
        return {"pass_index": self.pass_index, "position": self.position,
                "loader": self.loader.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.pass_index, self.position = int(state["pass_index"]), int(state["position"])
        self.loader.load_state_dict(state["loader"])
        self._it = None
