"""Readers on files written here in the official formats; errors for missing and corrupt
files; split rules; exactly resumable loaders."""
import pickle

import numpy as np
import pytest
import torch

from fastdarts.data import (BatchLoader, CorruptDatasetError, InfiniteLoader, MissingDatasetError,
                            load_dataset, synthetic_data)


def test_digits_splits_are_real_disjoint_and_stratified():
    data = load_dataset("digits")
    sizes = (len(data.train), len(data.val), len(data.test))
    assert sum(sizes) == 1797 and sizes == (719, 719, 359)
    assert data.train.images.shape[1:] == (1, 8, 8) and data.spec.num_classes == 10
    keys = [set(map(bytes, map(lambda t: t.numpy().tobytes(), split.images)))
            for split in (data.train, data.val, data.test)]
    assert len(keys[0] & keys[2]) < 5  # a few duplicate images exist in the source data
    for split in (data.train, data.val, data.test):
        counts = torch.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.8 * counts.float().mean()


def _write_cifar10(root, n=10000, corrupt=None):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"labels": rng.integers(0, 10, n).tolist()}
        with open(d / name, "wb") as f:
            pickle.dump(entry, f)
    if corrupt:
        (d / corrupt).write_bytes(b"not a pickle")
    return d


def test_cifar10_reader_and_darts_half_split(tmp_path):
    d = _write_cifar10(tmp_path)
    data = load_dataset("cifar10", tmp_path)
    assert len(data.train) == len(data.val) == 25000 and len(data.test) == 10000
    with open(d / "data_batch_1", "rb") as f:
        first = pickle.load(f, encoding="bytes")
    expected = torch.from_numpy(first[b"data"][0].reshape(3, 32, 32))
    assert torch.equal(data.train.images[0], expected)  # first half, index order
    with open(d / "data_batch_3", "rb") as f:
        third = pickle.load(f, encoding="bytes")
    assert torch.equal(data.val.images[0], torch.from_numpy(third[b"data"][5000].reshape(3, 32, 32)))
    assert data.val.labels[0].item() == third[b"labels"][5000]


def test_missing_file_names_the_file_and_how_to_get_it(tmp_path):
    with pytest.raises(MissingDatasetError, match=r"data_batch_1.*cifar-10-python.tar.gz"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(MissingDatasetError, match="train_32x32.mat"):
        load_dataset("svhn", tmp_path)
    with pytest.raises(MissingDatasetError, match="train_data_batch_1"):
        load_dataset("imagenet16-120", tmp_path)
    # no data_dir at all: the same help, with the folder layout under DATA_DIR
    for name, where in (("cifar10", "DATA_DIR/cifar-10-batches-py/data_batch_1"),
                        ("cifar100", "DATA_DIR/cifar-100-python/train"),
                        ("svhn", "train_32x32.mat .* into DATA_DIR"),
                        ("imagenet16-120", "train_data_batch_1..10 .* in DATA_DIR")):
        with pytest.raises(MissingDatasetError, match=rf"no data_dir \(--data-dir\).*{where}"):
            load_dataset(name, None)


def test_corrupt_file_is_reported(tmp_path):
    _write_cifar10(tmp_path, n=10000, corrupt="data_batch_4")
    with pytest.raises(CorruptDatasetError, match="data_batch_4"):
        load_dataset("cifar10", tmp_path)


def test_wrong_size_is_reported(tmp_path):
    _write_cifar10(tmp_path, n=100)
    with pytest.raises(CorruptDatasetError, match="expected 10000 images"):
        load_dataset("cifar10", tmp_path)


def test_cifar100_fine_labels(tmp_path):
    d = tmp_path / "cifar-100-python"
    d.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 50000), ("test", 10000)):
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"fine_labels": rng.integers(0, 100, n).tolist(),
                         b"coarse_labels": rng.integers(0, 20, n).tolist()}, f)
    data = load_dataset("cifar100", tmp_path)
    assert data.spec.num_classes == 100 and len(data.train) == 25000
    assert data.train.labels.max() <= 99


def test_svhn_mat_reader(tmp_path):
    from scipy.io import savemat
    rng = np.random.default_rng(2)
    for name, n in (("train_32x32.mat", 40), ("test_32x32.mat", 10)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
        savemat(tmp_path / name, {"X": x, "y": y})
        if name.startswith("train"):
            first_x, first_y = x[..., 0], y[0, 0]
    data = load_dataset("svhn", tmp_path)
    assert len(data.train) == 20 and len(data.test) == 10
    assert torch.equal(data.train.images[0], torch.from_numpy(first_x.transpose(2, 0, 1).copy()))
    assert data.train.labels[0].item() == first_y % 10  # label 10 is the digit 0


def test_imagenet16_keeps_first_120_classes(tmp_path):
    from fastdarts.data.imagenet16 import load_imagenet16_120
    rng = np.random.default_rng(3)
    for name in [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]:
        labels = rng.integers(1, 1001, 50)
        labels[:3] = [1, 120, 121]
        with open(tmp_path / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (50, 768), dtype=np.uint8),
                         "labels": labels.tolist()}, f)
    with pytest.raises(CorruptDatasetError, match="151700"):
        load_imagenet16_120(tmp_path)
    data = load_imagenet16_120(tmp_path, check_size=False)
    labels = torch.cat([data.train.labels, data.val.labels])
    assert labels.min() >= 0 and labels.max() <= 119
    assert data.spec.image_size == 16 and data.train.images.shape[1:] == (3, 16, 16)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="dataset must be one of"):
        load_dataset("mnist")


def test_augmentation_crop_and_normalisation():
    data = synthetic_data(image_size=8, num_train=16)
    spec = data.spec
    loader = BatchLoader(data.train, spec, 16, shuffle=False, train=False)
    x, _ = next(iter(loader))
    expected = (data.train.images.float() / 255 - 0.5) / 0.25
    torch.testing.assert_close(x, expected)


def test_infinite_loader_resumes_exactly():
    data = load_dataset("digits")
    make = lambda: InfiniteLoader(BatchLoader(data.val, data.spec, 64, shuffle=True,
                                              train=True, seed=9))
    a = make()
    stream = [a.next() for _ in range(15)]  # crosses a pass boundary (12 batches a pass)
    b = make()
    for _ in range(7):
        b.next()
    state = b.state_dict()
    c = make()
    c.load_state_dict(state)
    for i in range(7, 15):
        x, y = c.next()
        assert torch.equal(x, stream[i][0]) and torch.equal(y, stream[i][1])
