"""ImageNet direct search: the class-folder reader, PC-DARTS's per-class subsets, the
RandomResizedCrop / centre-crop decoding against explicit Pillow operations, worker-count
independent and exactly resumable file loading, the ImageNet schedule (LR warm-up, arch
gradient clip, method defaults) and a search from the CLI on a small JPEG tree written
here."""
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastdarts.algorithms import get_algorithm
from fastdarts.cli import main as cli_main
from fastdarts.data import (CorruptDatasetError, InfiniteLoader, MissingDatasetError,
                            load_dataset, make_loader, to_device, to_input)
from fastdarts.data.imagenet import (IMAGENET_MEAN, decode_image, per_class_subsets,
                                     random_resized_crop_box, scan_image_folder)
from fastdarts.search import SearchConfig, run_search
from fastdarts.spaces import build_supernet
from fastdarts.training import WeightTraining

CLASSES = ("n01440764", "n01443537", "n01484850")


def _write_tree(root, per_class, rng, sizes=((48, 40), (70, 52), (36, 90), (64, 64))):
    """JPEGs whose mean colour tells the class apart, in varied sizes and aspect ratios."""
    for c, wnid in enumerate(CLASSES):
        folder = root / wnid
        folder.mkdir(parents=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            base = np.zeros((h, w, 3), np.float64)
            base[..., c] = 160
            pixels = np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", quality=90)
        (folder / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    _write_tree(root / "train", 24, rng)
    _write_tree(root / "val", 4, rng)
    return root


def test_scan_sorts_classes_and_files_and_skips_other_files(imagenet_dir):
    files = scan_image_folder(imagenet_dir / "train")
    assert files.classes == list(CLASSES) and len(files) == 72
    for path, label in zip(files.paths, files.labels.tolist()):
        assert f"/{CLASSES[label]}/" in path and path.endswith(".JPEG")
    assert files.paths == sorted(files.paths)


def test_per_class_subsets_are_disjoint_per_class_and_fixed():
    labels = torch.tensor([0] * 40 + [1] * 9 + [2] * 200)
    w, a = per_class_subsets(labels, (0.1, 0.025), seed=0)
    assert set(w.tolist()).isdisjoint(a.tolist())
    assert torch.bincount(labels[w]).tolist() == [4, 1, 20]  # round(0.1 n), at least 1
    assert torch.bincount(labels[a]).tolist() == [1, 1, 5]
    again = per_class_subsets(labels, (0.1, 0.025), seed=0)
    assert torch.equal(again[0], w) and torch.equal(again[1], a)
    other = per_class_subsets(labels, (0.1, 0.025), seed=1)
    assert not torch.equal(other[0], w)
    with pytest.raises(ValueError, match="fractions"):
        per_class_subsets(labels, (0.8, 0.3))
    with pytest.raises(ValueError, match="class 0 has 1 images"):
        per_class_subsets(torch.tensor([0, 1, 1, 1]), (0.5, 0.5))


def test_random_resized_crop_box_stays_in_range():
    rng = np.random.default_rng(0)
    in_range = 0
    for height, width in [(375, 500), (500, 333), (64, 64), (37, 91), (224, 224)]:
        for _ in range(200):
            top, left, h, w = random_resized_crop_box(height, width, rng)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            area, aspect = h * w / (height * width), w / h
            # the rounding of h and w to pixels widens the ranges a little on small images
            slack = 2.5 / min(h, w)
            if (0.08 - slack <= area <= 1 and 3 / 4 * (1 - slack) <= aspect
                    <= 4 / 3 * (1 + slack)):
                in_range += 1
    assert in_range == 1000
    # no draw fits a 1000x10 strip: the fallback is the centre crop clamped to aspect 4/3
    assert random_resized_crop_box(10, 1000, rng) == (0, (1000 - 13) // 2, 10, 13)
    assert random_resized_crop_box(1000, 10, rng) == ((1000 - 13) // 2, 0, 13, 10)


def test_decode_train_is_crop_resize_flip_of_the_drawn_box(imagenet_dir):
    path = scan_image_folder(imagenet_dir / "train").paths[1]  # 70x52
    flipped = 0
    for seed in range(8):
        got = decode_image(path, 32, True, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        img = Image.open(path).convert("RGB")
        top, left, h, w = random_resized_crop_box(img.height, img.width, rng)
        want = img.crop((left, top, left + w, top + h)).resize((32, 32), Image.BILINEAR)
        if rng.random() < 0.5:
            want = want.transpose(Image.FLIP_LEFT_RIGHT)
            flipped += 1
        assert got.shape == (32, 32, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, np.asarray(want))
    assert 0 < flipped < 8


def test_decode_eval_resizes_short_side_and_centre_crops(imagenet_dir):
    path = scan_image_folder(imagenet_dir / "train").paths[2]  # 36x90: portrait
    img = Image.open(path).convert("RGB")
    short = round(32 * 256 / 224)  # 37
    resized = img.resize((short, int(short * 90 / 36)), Image.BILINEAR)  # 37 x 92
    top, left = round((92 - 32) / 2), round((37 - 32) / 2)
    want = np.asarray(resized.crop((left, top, left + 32, top + 32)))
    np.testing.assert_array_equal(decode_image(path, 32, False), want)


def test_errors_name_the_folder_or_file(imagenet_dir, tmp_path):
    with pytest.raises(MissingDatasetError, match=r"missing image folder .*train.*train/<wnid>"):
        load_dataset("imagenet", tmp_path)
    with pytest.raises(MissingDatasetError, match=r"no data_dir .*DATA_DIR/train/<wnid>"):
        load_dataset("imagenet", None)
    (tmp_path / "train" / "n0").mkdir(parents=True)
    with pytest.raises(CorruptDatasetError, match=r"n0 holds no images"):
        load_dataset("imagenet", tmp_path)
    bad = tmp_path / "bad.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(CorruptDatasetError, match="could not decode image .*bad.JPEG"):
        decode_image(str(bad), 16, False)
    mismatch = tmp_path / "mismatch"
    _write_tree(mismatch / "train", 3, np.random.default_rng(1))
    (mismatch / "val" / "n99").mkdir(parents=True)
    Image.new("RGB", (20, 20)).save(mismatch / "val" / "n99" / "a.JPEG")
    with pytest.raises(CorruptDatasetError, match="different class folders"):
        load_dataset("imagenet", mismatch)


def test_search_splits_and_spec(imagenet_dir):
    data = load_dataset("imagenet", imagenet_dir, fractions=(0.5, 0.25), image_size=32)
    assert (len(data.train), len(data.val), len(data.test)) == (36, 18, 12)
    assert set(data.train.paths).isdisjoint(data.val.paths)
    assert torch.bincount(data.train.labels).tolist() == [12, 12, 12]
    assert data.spec.num_classes == 3 and data.spec.stem == "imagenet"
    assert data.spec.image_size == 32 and data.spec.mean == IMAGENET_MEAN


def test_file_loader_batches_do_not_depend_on_workers_and_resume_exactly(imagenet_dir):
    data = load_dataset("imagenet", imagenet_dir, fractions=(0.5, 0.25), image_size=24)

    def stream(workers):
        return InfiniteLoader(make_loader(data.train, data.spec, 8, shuffle=True, train=True,
                                          seed=3, workers=workers))

    serial, parallel = stream(0), stream(2)
    batches = [serial.next() for _ in range(7)]  # crosses into the second pass
    for x, y in batches:
        px, py = parallel.next()
        assert x.dtype == torch.uint8 and torch.equal(x, px) and torch.equal(y, py)
    order = make_loader(data.train, data.spec, 8, True, True, seed=3).order(0)
    assert torch.equal(batches[0][1], data.train.labels[order[:8]])
    assert not torch.equal(batches[0][0], batches[5][0][:8])  # pass 2 draws new crops
    state = serial.state_dict()
    expected = [serial.next() for _ in range(3)]
    resumed = stream(0)
    resumed.load_state_dict(state)
    for x, y in expected:
        rx, ry = resumed.next()
        assert torch.equal(x, rx) and torch.equal(y, ry)
    ev = make_loader(data.test, data.spec, 5, shuffle=False, train=False)
    first = [x for x, _ in ev.batches(0)]
    assert [len(x) for x in first] == [5, 5, 2]
    assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in ev.batches(3)]))


def test_uint8_batches_are_normalised_on_the_device():
    from fastdarts.data.imagenet import IMAGENET_STD
    from fastdarts.data import DataSpec
    spec = DataSpec("imagenet", 3, 3, 8, IMAGENET_MEAN, IMAGENET_STD, stem="imagenet")
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    got = to_device(x, spec, "cpu", torch.channels_last)
    assert got.is_contiguous(memory_format=torch.channels_last)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    torch.testing.assert_close(got, (x / 255.0 - mean) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
    floats = to_input(x, spec, train=False)
    assert torch.equal(to_device(floats, spec, "cpu"), floats)  # float batches pass through


@pytest.mark.filterwarnings("ignore:Detected call of")  # no optimiser steps in this test
def test_lr_warmup_is_linear_and_leaves_the_cosine_alone():
    model = build_supernet("darts", 10, 1, C=4, layers=3)
    plain = WeightTraining(model, 0.5, 0.9, 3e-4, 12, 0.0)
    warm = WeightTraining(build_supernet("darts", 10, 1, C=4, layers=3), 0.5, 0.9, 3e-4, 12,
                          0.0, lr_warmup_epochs=5)
    for epoch in range(12):
        cosine = plain.start_epoch(epoch)
        lr = warm.start_epoch(epoch)
        assert math.isclose(cosine, 0.5 * (1 + math.cos(math.pi * epoch / 12)) / 2,
                            rel_tol=1e-12)
        assert lr == (cosine * (epoch + 1) / 5 if epoch < 5 else cosine)
        assert warm.optimizer.param_groups[0]["lr"] == lr
        plain.end_epoch()
        warm.end_epoch()
    with pytest.raises(ValueError, match="lr_warmup_epochs"):
        WeightTraining(model, 0.5, 0.9, 3e-4, 12, 0.0, lr_warmup_epochs=-1)


def test_arch_gradient_clip_applies_before_the_step():
    model = build_supernet("darts", 10, 1, C=4, layers=3)
    for clip in (None, 0.5):
        cfg = SearchConfig(arch_grad_clip=clip).resolved()
        algo = get_algorithm("darts", cfg)
        algo.setup(model)
        grads = [torch.full_like(p, 3.0) for p in model.arch_parameters()]
        for p, g in zip(model.arch_parameters(), grads):
            p.grad = g.clone()
        algo.step_architecture()
        norm = torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in model.arch_parameters()]))
        full = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        assert torch.isclose(norm, torch.tensor(0.5) if clip else full, rtol=1e-5)
        assert algo.arch_optimizer.state  # the step ran


def test_imagenet_defaults_follow_the_originals():
    pc = SearchConfig(algo="pcdarts", dataset="imagenet").resolved()
    assert (pc.batch_size, pc.lr, pc.lr_min, pc.arch_lr, pc.partial_k) == (1024, 0.5, 0.0, 6e-3, 2)
    assert (pc.init_channels, pc.layers, pc.epochs) == (16, 8, 50)
    assert (pc.arch_warmup_epochs, pc.lr_warmup_epochs, pc.arch_grad_clip) == (35, 5, 5.0)
    assert pc.imagenet_fractions == (0.1, 0.025) and pc.data_workers >= 1
    rf = SearchConfig(algo="rf-pcdarts", dataset="imagenet").resolved()
    assert (rf.partial_k, rf.arch_warmup_epochs) == (2, 35)
    dr = SearchConfig(algo="drnas", dataset="imagenet").resolved()
    assert (dr.init_channels, dr.layers, dr.batch_size, dr.lr_warmup_epochs) == (48, 14, 512, 5)
    drnas = get_algorithm("drnas", dr)
    assert [(k, n) for _, k, n in drnas.stages()] == [(6, 7), (3, 4)]
    assert dr.arch_warmup_epochs == 10
    small = SearchConfig(algo="pcdarts", dataset="imagenet", batch_size=256).resolved()
    assert small.lr_warmup_epochs == 0  # the warm-up is for batches over 256
    cifar = SearchConfig(algo="pcdarts", dataset="cifar10").resolved()
    assert (cifar.partial_k, cifar.arch_warmup_epochs, cifar.arch_grad_clip) == (4, 15, None)
    assert (cifar.lr_warmup_epochs, cifar.data_workers) == (0, 0)
    with pytest.raises(ValueError, match="image_size is an ImageNet option"):
        SearchConfig(dataset="cifar10", image_size=64).resolved()
    with pytest.raises(ValueError, match="imagenet_fractions"):
        SearchConfig(dataset="imagenet", imagenet_fractions=(0.9, 0.2)).resolved()
    with pytest.raises(ValueError, match="arch_grad_clip"):
        SearchConfig(arch_grad_clip=-1.0).resolved()


def _config(run_dir, imagenet_dir, **kw):
    values = dict(algo="pcdarts", dataset="imagenet", data_dir=str(imagenet_dir),
                  run_dir=str(run_dir), epochs=2, batch_size=6, init_channels=8, layers=3,
                  image_size=32, imagenet_fractions=(0.25, 0.125), steps_per_epoch=2,
                  arch_warmup_epochs=0, lr_warmup_epochs=2, device="cpu", progress=False,
                  data_workers=0)
    values.update(kw)
    return SearchConfig(**values)


def test_imagenet_search_resumes_exactly_whatever_the_workers(imagenet_dir, tmp_path):
    whole = run_search(_config(tmp_path / "whole", imagenet_dir, data_workers=2), log=lambda m: None)
    run_search(_config(tmp_path / "split", imagenet_dir), stop_after_epochs=1, log=lambda m: None)
    resumed = run_search(_config(tmp_path / "split", imagenet_dir), resume=True,
                         log=lambda m: None)
    keys = ("train_loss", "val_loss", "val_acc", "lr", "weights")
    assert [{k: r[k] for k in keys} for r in whole.history] == \
           [{k: r[k] for k in keys} for r in resumed.history]
    assert whole.test_accuracy == resumed.test_accuracy is not None
    assert [r["lr"] for r in whole.history] == [0.5 * 1 / 2, 0.5 * 0.5 * 2 / 2]
    state = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=False)["model"]
    assert any(k.startswith("stem0.") for k in state)  # the ImageNet stem


def test_imagenet_search_from_the_cli(imagenet_dir, tmp_path, capsys):
    run_dir = tmp_path / "cli"
    code = cli_main(["search", "--dataset", "imagenet", "--data-dir", str(imagenet_dir),
                     "--algo", "rf-pcdarts", "--epochs", "2", "--batch-size", "6",
                     "--init-channels", "8", "--layers", "3", "--image-size", "32",
                     "--imagenet-fractions", "0.25", "0.125", "--steps-per-epoch", "2",
                     "--run-dir", str(run_dir), "--device", "cpu", "--no-progress",
                     "--data-workers", "1"])
    assert code == 0
    out = capsys.readouterr().out
    assert "imagenet: 18 train / 9 val / 12 test, 3 classes, 3x32x32" in out
    result = json.loads((run_dir / "result.json").read_text())
    cfg = result["config"]
    assert (cfg["partial_k"], cfg["arch_grad_clip"], cfg["lr"]) == (2, 5.0, 0.5)
    assert cfg["imagenet_fractions"] == [0.25, 0.125] and cfg["lr_warmup_epochs"] == 0
    assert result["test_accuracy"] is not None
    assert json.loads((run_dir / "genotype.json").read_text())["normal"]


def test_imagenet_supernets_have_the_originals_parameter_counts():
    """The supernets the ImageNet defaults build: PC-DARTS's 956,512 weights (its log's
    "param size = 0.956512MB") and DrNAS's stage-1 3,642,896 (ALGORITHMS.md §1.1.7)."""
    from fastdarts.search import build_search
    for algo, count in (("pcdarts", 956_512), ("drnas", 3_642_896)):
        cfg = SearchConfig(algo=algo, dataset="imagenet").resolved()
        _, model, training = build_search(cfg, 1000, 3, "cpu", stem="imagenet")
        assert sum(p.numel() for p in training.params) == count, algo
        assert hasattr(model, "stem0")
