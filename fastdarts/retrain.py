"""Retraining a genotype from scratch (`fastdarts train`): the second half of every
DARTS-family paper's number, as the originals' train.py does it.

The genotype's evaluation network (`fastdarts.networks`) trains on the search's training
data, both halves (the search's train and val splits), and is tested on the held-out test
split after every epoch. The CIFAR recipe is DARTS's (cnn/train.py): 600 epochs, batch
96, SGD lr 0.025 (momentum 0.9, weight decay 3e-4) with a cosine schedule to 0, the
auxiliary head's loss weighted 0.4, drop-path rising linearly from 0 to 0.2 over the
epochs, cutout 16, gradient norm clipped at 5. `digits` has a preset sized for a CPU. Options
given win over the preset.

A run writes, in its run directory: `config.json`, `log.jsonl` (one record per epoch),
`checkpoint.pt` (atomic, every epoch; `resume=True` continues to exactly the
uninterrupted result: model, optimiser, schedule, loader order and augmentation, cutout and
drop-path random numbers), `result.json` (test top-1/top-5, parameters, multiply-adds per
image, inference latency at batch 1 and 64, time, provenance) and `accuracy.png`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .checkpoint import atomic_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from .data import load_dataset
from .data.core import ImageDataset
from .data.loader import BatchLoader
from .genotypes import genotype_to_dict
from .info import provenance
from .networks import build_network, parameter_count, resolve_genotype
from .report import JsonlLog
from .search import resolve_device

__all__ = ["TrainConfig", "run_training", "PRESETS", "TRAINABLE_DATASETS"]

CHECKPOINT = "checkpoint.pt"

#: per data set: what an option left out takes
PRESETS = {
    "cifar": dict(epochs=600, batch_size=96, lr=0.025, weight_decay=3e-4, init_channels=36,
                  layers=20, auxiliary=True, drop_path_prob=0.2, cutout=16),
    "digits": dict(epochs=15, batch_size=64, lr=0.05, weight_decay=3e-4, init_channels=16,
                   layers=5, auxiliary=False, drop_path_prob=0.0, cutout=0),
}
PRESET_OF = {"cifar10": "cifar", "cifar100": "cifar", "svhn": "cifar", "imagenet16-120": "cifar",
             "digits": "digits", "synthetic": "digits"}
TRAINABLE_DATASETS = tuple(PRESET_OF)


@dataclass
class TrainConfig:
    """A retraining run. `None` fields take the data set's preset (module docstring)."""
    genotype: Optional[str] = None  # a genotype.json, a search run directory, a published name
    from_run: Optional[str] = None  # a search run directory: its genotype and data set
    dataset: Optional[str] = None
    data_dir: Optional[str] = None
    epochs: Optional[int] = None
    batch_size: Optional[int] = None
    lr: Optional[float] = None
    lr_min: float = 0.0
    momentum: float = 0.9
    weight_decay: Optional[float] = None
    init_channels: Optional[int] = None
    layers: Optional[int] = None
    auxiliary: Optional[bool] = None
    auxiliary_weight: float = 0.4
    drop_path_prob: Optional[float] = None
    cutout: Optional[int] = None  # cutout square side in pixels (0: none)
    grad_clip: float = 5.0
    seed: int = 0
    device: str = "auto"
    run_dir: Optional[str] = None
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        """Genotype and data set from `from_run` where not given, then the preset."""
        cfg = dataclasses.replace(self)
        if cfg.from_run is not None:
            run = Path(cfg.from_run)
            if not (run / "genotype.json").is_file():
                raise ValueError(f"from_run: {run} holds no genotype.json (a finished "
                                 f"`fastdarts search` run directory has one)")
            cfg.genotype = cfg.genotype or str(run / "genotype.json")
            if cfg.dataset is None and (run / "config.json").is_file():
                cfg.dataset = json.loads((run / "config.json").read_text()).get("dataset")
        if cfg.genotype is None:
            raise ValueError("genotype: give a genotype (a genotype.json, a search run "
                             "directory or a published name such as DARTS_V2) or from_run")
        cfg.dataset = cfg.dataset or "digits"
        if cfg.dataset not in PRESET_OF:
            raise ValueError(f"dataset: retraining runs on {', '.join(TRAINABLE_DATASETS)}; "
                             f"got {cfg.dataset!r} (ImageNet retraining is not built yet)")
        for field, value in PRESETS[PRESET_OF[cfg.dataset]].items():
            if getattr(cfg, field) is None:
                setattr(cfg, field, value)
        for field in ("epochs", "batch_size", "init_channels", "layers"):
            if getattr(cfg, field) < 1:
                raise ValueError(f"{field} must be >= 1; got {getattr(cfg, field)}")
        if not 0 <= cfg.drop_path_prob < 1:
            raise ValueError(f"drop_path_prob must lie in [0, 1); got {cfg.drop_path_prob}")
        if cfg.run_dir is None:
            name = Path(str(cfg.genotype)).stem if cfg.from_run is None else Path(cfg.from_run).name
            cfg.run_dir = f"runs/train-{name}-{cfg.dataset}-seed{cfg.seed}"
        return cfg

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def cutout(x: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """Zero one `length` x `length` square per image, centred anywhere (it may be clipped at
    the border), as DARTS's Cutout; the centres come from `generator`."""
    if length <= 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n,), generator=generator)
    cx = torch.randint(0, w, (n,), generator=generator)
    ys, xs = torch.arange(h), torch.arange(w)
    inside_y = ((ys[None] >= (cy[:, None] - length // 2))
                & (ys[None] < (cy[:, None] + length - length // 2)))
    inside_x = ((xs[None] >= (cx[:, None] - length // 2))
                & (xs[None] < (cx[:, None] + length - length // 2)))
    keep = ~(inside_y[:, :, None] & inside_x[:, None, :])
    return x * keep[:, None].to(x.dtype)


@torch.no_grad()
def cost(model, spec, device, batches=(1, 64), repeats: int = 5) -> dict:
    """Multiply-accumulates per image (convolutions and linear layers, as counted by
    `torch.utils.flop_counter`: pools, BN and ReLU are left out) and the median inference
    latency at each batch size on `device`, in eval mode."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    with FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, *shape, device=device))
    latency = {}
    for n in batches:
        x = torch.randn(n, *shape, device=device)
        times = []
        for _ in range(repeats + 1):  # the first call warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        latency[f"batch_{n}"] = 1000 * sorted(times[1:])[len(times[1:]) // 2]
    model.train(was_training)
    return {"macs_per_image": counter.get_total_flops() // 2, "latency_ms": latency}


@torch.no_grad()
def evaluate(model, loader, device) -> dict:
    model.eval()
    total, loss, top1, top5 = 0, 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits, _ = model(x)
        loss += F.cross_entropy(logits, y, reduction="sum").item()
        best = logits.topk(min(5, logits.shape[1]), dim=1).indices
        top1 += (best[:, 0] == y).sum().item()
        top5 += (best == y[:, None]).any(dim=1).sum().item()
        total += y.numel()
    return {"loss": loss / total, "top1": 100.0 * top1 / total, "top5": 100.0 * top5 / total}


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(epochs, [r["train_acc"] for r in history], label="train")
    ax.plot(epochs, [r["test_top1"] for r in history], label="test top-1")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run_training(config: TrainConfig, resume: bool = False, data=None, log=print,
                 stop_after_epochs: Optional[int] = None) -> dict:
    """Train `config`'s genotype from scratch (module docstring); returns result.json's
    contents. `data`: pre-loaded splits (tests); `stop_after_epochs`: stop as if
    interrupted once this many epochs are done."""
    cfg = config.resolved()
    device = resolve_device(cfg.device)
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / CHECKPOINT
    checkpoint = load_checkpoint(ckpt_path) if resume else None
    if checkpoint is None and ckpt_path.exists():
        raise FileExistsError(f"run_dir: {run_dir} already holds a training run "
                              f"({CHECKPOINT}); resume it or choose another run_dir")
    genotype = resolve_genotype(cfg.genotype)
    torch.manual_seed(cfg.seed)
    if data is None:
        data = load_dataset(cfg.dataset, cfg.data_dir)
    if data.test is None:
        raise ValueError(f"dataset: {cfg.dataset} has no held-out test split to report")
    spec = data.spec
    train_set = ImageDataset(torch.cat([data.train.images, data.val.images]),
                             torch.cat([data.train.labels, data.val.labels]))
    model = build_network(genotype, cfg.dataset, cfg.init_channels, cfg.layers, cfg.auxiliary,
                          num_classes=spec.num_classes, in_channels=spec.in_channels).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs,
                                                          eta_min=cfg.lr_min)
    loader = BatchLoader(train_set, spec, cfg.batch_size, shuffle=True, train=True,
                         seed=cfg.seed)
    test_loader = BatchLoader(data.test, spec, 256, shuffle=False, train=False)
    cutout_generator = torch.Generator().manual_seed(cfg.seed + 7)
    history: list[dict] = []
    start = 0
    run_log = JsonlLog(run_dir / "log.jsonl")
    if checkpoint is not None:
        stored = {k: v for k, v in checkpoint["config"].items()
                  if k not in ("run_dir", "device", "progress", "data_dir")}
        now = {k: v for k, v in cfg.to_dict().items() if k in stored}
        if stored != now:
            diff = ", ".join(f"{k}: {stored[k]!r} vs {now[k]!r}" for k in stored
                             if stored[k] != now[k])
            raise ValueError(f"resume: the configuration differs from the checkpoint's "
                             f"({diff})")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        loader.load_state_dict(checkpoint["loader"])
        cutout_generator.set_state(checkpoint["cutout_generator"])
        set_rng_state(checkpoint["rng"])
        history, start = checkpoint["history"], checkpoint["epoch"]
        run_log.truncate_after(start - 1)
        log(f"resumed {run_dir}: {start} of {cfg.epochs} epochs done")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2))
    params = parameter_count(model)
    log(f"train {cfg.genotype} on {data.describe()}: {params:,} parameters "
        f"(C={cfg.init_channels}, {cfg.layers} cells), device {device}, run dir {run_dir}")
    began = time.perf_counter()
    for epoch in range(start, cfg.epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            break
        model.train()
        model.drop_path_prob = cfg.drop_path_prob * epoch / cfg.epochs
        lr = optimizer.param_groups[0]["lr"]
        t0, seen, correct, loss_sum = time.perf_counter(), 0, 0, 0.0
        batches = iter(loader)
        if cfg.progress:
            from tqdm import tqdm
            batches = tqdm(batches, total=len(loader), desc=f"epoch {epoch + 1}/{cfg.epochs}",
                           leave=False)
        for x, y in batches:
            x = cutout(x, cfg.cutout, cutout_generator).to(device)
            y = y.to(device)
            optimizer.zero_grad(set_to_none=True)
            logits, logits_aux = model(x)
            loss = F.cross_entropy(logits, y)
            if logits_aux is not None:
                loss = loss + cfg.auxiliary_weight * F.cross_entropy(logits_aux, y)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss is {loss.item()} at epoch "
                                         f"{epoch + 1}; lower lr ({cfg.lr})")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            optimizer.step()
            seen += y.numel()
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * y.numel()
        schedule.step()
        test = evaluate(model, test_loader, device)
        record = {"epoch": epoch, "lr": lr, "drop_path_prob": model.drop_path_prob,
                  "train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                  "test_loss": test["loss"], "test_top1": test["top1"],
                  "test_top5": test["top5"], "seconds": time.perf_counter() - t0}
        history.append(record)
        run_log.append(record)
        log(f"epoch {epoch + 1}/{cfg.epochs}  lr {lr:.4g}  train loss {record['train_loss']:.3f} "
            f"acc {record['train_acc']:.1f}%  test top-1 {test['top1']:.2f}% "
            f"top-5 {test['top5']:.2f}%  {record['seconds']:.1f}s")
        atomic_save({"config": cfg.to_dict(), "epoch": epoch + 1, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
                     "loader": loader.state_dict(),
                     "cutout_generator": cutout_generator.get_state(), "rng": rng_state(),
                     "history": history}, ckpt_path)
    result = {"config": cfg.to_dict(), "genotype": genotype_to_dict(genotype),
              "parameters": params, **cost(model, spec, device), "epochs_done": len(history),
              "test_top1": history[-1]["test_top1"] if history else math.nan,
              "test_top5": history[-1]["test_top5"] if history else math.nan,
              "train_time_s_this_session": time.perf_counter() - began,
              "provenance": provenance(device)}
    if len(history) == cfg.epochs:
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2))
        _plot(history, run_dir / "accuracy.png")
        log(f"test top-1 {result['test_top1']:.2f}% (top-5 {result['test_top5']:.2f}%); "
            f"wrote {run_dir / 'result.json'}, {run_dir / 'log.jsonl'}, "
            f"{run_dir / 'accuracy.png'}")
    return result
