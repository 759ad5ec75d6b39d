"""ImageNet (ILSVRC-2012) at full resolution for direct search (ALGORITHMS.md §3.3).

Layout: the usual class-folder tree, `{data_dir}/train/<wnid>/*.JPEG`, and optionally the
validation images sorted into the same class folders, `{data_dir}/val/<wnid>/*.JPEG` (the
held-out test split; without it the search has no test split). Labels are the sorted wnids'
indices, as torchvision's ImageFolder gives them.

Search split (PC-DARTS, DrNAS): a fraction of every class of `train/` for the weights
(10%) and a disjoint fraction for the architecture (2.5%), drawn once with a fixed seed,
the same for every search, like the originals' subsets sampled offline into folders.

Images stay JPEG files on disk and are decoded per batch, in worker processes, by Pillow.
Training crops are RandomResizedCrop (scale 0.08-1, aspect 3/4-4/3, 10 tries then a centre
crop) resized to the image size plus a horizontal flip, on both search splits; evaluation
resizes the short side to size * 256 / 224 and takes the centre crop. Every random draw
comes from a generator seeded by (seed, pass, position in the pass), so a batch does not
depend on the number of workers and a resumed search sees exactly the images and crops the
uninterrupted one would have.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .core import (CorruptDatasetError, DataSpec, MissingDatasetError, SearchData,
                   require_data_dir)
from .loader import BatchLoader

__all__ = ["ImageFiles", "FileBatchLoader", "load_imagenet", "scan_image_folder",
           "per_class_subsets", "random_resized_crop_box", "decode_image", "IMAGENET_MEAN",
           "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")
#: RandomResizedCrop's defaults (Inception-style crops)
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
_HOW = ("Put the ILSVRC-2012 training images in class folders {dir}/train/<wnid>/*.JPEG (the "
        "layout of ILSVRC2012_img_train.tar's per-class archives once extracted) and, for a "
        "test split, the validation images sorted into {dir}/val/<wnid>/; pass --data-dir "
        "{dir}.")


@dataclass
class ImageFiles:
    """Labelled image files, decoded when a batch is drawn (`FileBatchLoader`)."""

    paths: list[str]
    labels: torch.Tensor  #: int64 (N,)
    classes: list[str]

    def __post_init__(self):
        self.labels = torch.as_tensor(self.labels, dtype=torch.int64)
        if self.labels.shape != (len(self.paths),):
            raise ValueError(f"labels must have shape ({len(self.paths)},); got "
                             f"{tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: torch.Tensor) -> "ImageFiles":
        index = index.tolist()
        return ImageFiles([self.paths[i] for i in index], self.labels[index], self.classes)


def scan_image_folder(folder: Path, how_to_get: str = "") -> ImageFiles:
    """The images of a class-folder tree, classes and files in sorted order."""
    if not folder.is_dir():
        raise MissingDatasetError(f"missing image folder {folder}. {how_to_get}")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    if not classes:
        raise CorruptDatasetError(f"{folder} has no class sub-folders (expected "
                                  f"{folder}/<class>/<image>.JPEG)")
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(e.path for e in os.scandir(folder / name)
                       if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise CorruptDatasetError(f"class folder {folder / name} holds no images "
                                      f"({', '.join(IMAGE_EXTENSIONS)})")
        paths += files
        labels += [label] * len(files)
    return ImageFiles(paths, torch.tensor(labels, dtype=torch.int64), classes)


def per_class_subsets(labels: torch.Tensor, fractions: tuple[float, ...],
                      seed: int = 0) -> list[torch.Tensor]:
    """Disjoint index sets holding `round(f * n_c)` (at least 1) images of every class c for
    each fraction f, drawn from one permutation per class (generator seeded by `seed`)."""
    if any(not 0 < f <= 1 for f in fractions) or sum(fractions) > 1:
        raise ValueError(f"subset fractions must be in (0, 1] and sum to <= 1; got "
                         f"{list(fractions)}")
    g = torch.Generator().manual_seed(seed)
    parts = [[] for _ in fractions]
    for c in range(int(labels.max()) + 1):
        idx = (labels == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        counts = [max(1, round(f * len(idx))) for f in fractions]
        if sum(counts) > len(idx):
            raise ValueError(f"class {c} has {len(idx)} images, too few for disjoint subsets "
                             f"of {counts}")
        start = 0
        for part, n in zip(parts, counts):
            part.append(idx[start:start + n])
            start += n
    return [torch.cat(p).sort().values for p in parts]


def random_resized_crop_box(height: int, width: int, rng: np.random.Generator,
                            scale=CROP_SCALE, ratio=CROP_RATIO) -> tuple[int, int, int, int]:
    """(top, left, h, w) of an Inception-style crop: area a uniform fraction `scale` of the
    image, log-uniform aspect `ratio`; after 10 misses, the centre crop clamped to `ratio`."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def decode_image(path: str, size: int, train: bool,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """One image as uint8 (size, size, 3): a random resized crop and flip (`train`, drawing
    from `rng`) or the evaluation resize and centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as e:
        raise CorruptDatasetError(f"could not decode image {path}: {type(e).__name__}: {e}") from e
    if train:
        top, left, h, w = random_resized_crop_box(img.height, img.width, rng)
        # crop, then resize: what torchvision's RandomResizedCrop does to a PIL image
        img = img.crop((left, top, left + w, top + h)).resize((size, size), Image.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
    else:
        short = round(size * 256 / 224)
        if img.width <= img.height:
            new = (short, int(short * img.height / img.width))
        else:
            new = (int(short * img.width / img.height), short)
        img = img.resize(new, Image.BILINEAR)
        top, left = round((new[1] - size) / 2), round((new[0] - size) / 2)
        img = img.crop((left, top, left + size, top + size))
    return np.array(img, dtype=np.uint8)  # writable, for torch.from_numpy


class _PassBatches(torch.utils.data.Dataset):
    """Batch b of one pass, decoded; what the worker processes run."""

    def __init__(self, files: ImageFiles, order: torch.Tensor, batch_size: int, start: int,
                 n_batches: int, size: int, train: bool, seed: int, pass_index: int):
        self.files, self.order, self.batch_size = files, order, batch_size
        self.start, self.n_batches, self.size = start, n_batches, size
        self.train, self.seed, self.pass_index = train, seed, pass_index

    def __len__(self) -> int:
        return self.n_batches

    def __getitem__(self, b: int):
        first = (self.start + b) * self.batch_size
        idx = self.order[first:first + self.batch_size]
        images = torch.empty((len(idx), 3, self.size, self.size), dtype=torch.uint8)
        for j, i in enumerate(idx.tolist()):
            rng = (np.random.default_rng([self.seed, self.pass_index, first + j])
                   if self.train else None)
            pixels = decode_image(self.files.paths[i], self.size, self.train, rng)
            images[j] = torch.from_numpy(pixels).permute(2, 0, 1)
        return images, self.files.labels[idx]


class FileBatchLoader(BatchLoader):
    """`BatchLoader` over `ImageFiles` (same pass order and resume position): yields uint8
    (N, 3, S, S) batches, which the search normalises on the device (4x less to copy than
    float), and int64 labels.

    Args:
        workers: decoding processes (0: decode in this process).
        pin_memory: pin the batches, for asynchronous copies to a GPU.
    """

    def __init__(self, files: ImageFiles, spec: DataSpec, batch_size: int, shuffle: bool,
                 train: bool, seed: int = 0, drop_last: bool = False, workers: int = 0,
                 pin_memory: bool = False):
        super().__init__(files, spec, batch_size, shuffle, train, seed, drop_last)
        if workers < 0:
            raise ValueError(f"workers must be >= 0; got {workers}")
        self.workers, self.pin_memory = workers, pin_memory

    def batches(self, pass_index: int, start: int = 0):
        """Batches of pass `pass_index`, from batch number `start`."""
        work = _PassBatches(self.dataset, self.order(pass_index), self.batch_size, start,
                            max(0, len(self) - start), self.spec.image_size, self.train,
                            self.seed, pass_index)
        if self.workers == 0:
            for b in range(len(work)):
                yield work[b]
            return
        yield from torch.utils.data.DataLoader(
            work, batch_size=None, shuffle=False, num_workers=self.workers,
            pin_memory=self.pin_memory, prefetch_factor=2)

    def state_dict(self) -> dict:
        # The crops derive from (seed, pass, position): the pass index is all there is.
        return {"pass_index": self.pass_index}

    def load_state_dict(self, state: dict) -> None:
        self.pass_index = int(state["pass_index"])


def load_imagenet(root, seed: int = 0, fractions: tuple[float, float] = (0.1, 0.025),
                  image_size: int = 224, subset_seed: int = 0) -> SearchData:
    """The search splits of an ImageNet folder tree (module docstring). `subset_seed` fixes
    which images the per-class subsets hold; `seed` is unused (the subsets do not change
    with the search's seed)."""
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8; got {image_size}")
    d = require_data_dir(root, "imagenet", _HOW)
    how = _HOW.format(dir=d)
    train_all = scan_image_folder(d / "train", how)
    train_idx, val_idx = per_class_subsets(train_all.labels, tuple(fractions), subset_seed)
    test = None
    if (d / "val").is_dir():
        test = scan_image_folder(d / "val", how)
        if test.classes != train_all.classes:
            missing = sorted(set(train_all.classes) ^ set(test.classes))[:5]
            raise CorruptDatasetError(f"{d / 'val'} and {d / 'train'} have different class "
                                      f"folders (first differences: {missing})")
    spec = DataSpec("imagenet", len(train_all.classes), 3, image_size, IMAGENET_MEAN,
                    IMAGENET_STD, stem="imagenet")
    return SearchData(spec, train_all.subset(train_idx), train_all.subset(val_idx), test)
