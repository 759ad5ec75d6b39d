"""The bilevel search loop shared by every method (ALGORITHMS.md §2.1).

Per training batch: an architecture step on the next batch of a cached validation stream
(once the method's warm-up is over), then a weight step (SGD with momentum, weight decay,
gradient-norm clip) on the training batch. The weight learning rate follows a cosine
schedule stepped once per epoch. After every epoch: validation accuracy, the genotype, a
JSON-lines record, an updated plot of the architecture weights and an atomic checkpoint
from which `resume=True` continues to exactly the result of an uninterrupted run.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .algorithms import algorithm_class, get_algorithm
from .checkpoint import atomic_save, atomic_write_text, load_checkpoint, rng_state, set_rng_state
from .data import InfiniteLoader, SearchData, load_dataset, make_loader, to_device
from .genotypes import DartsGenotype, genotype_to_dict, save_genotype
from .graphs import CapturedStep, make_capturable
from .info import provenance
from .recompute import module_uses_rng
from .cell_diagram import draw_genotype
from .report import (JsonlLog, decision_margins, margin_summary, plot_arch_weights,
                     plot_final_weights)
from .spaces import DEFAULT_C, build_supernet
from .training import WeightTraining

__all__ = ["SearchConfig", "SearchResult", "RunExistsError", "run_search", "build_search",
           "search_step", "evaluate", "DATASET_PRESETS"]

CHECKPOINT = "checkpoint.pt"

#: Per-data-set defaults that differ from the DARTS CIFAR settings. The digits preset is
#: sized for a search of a few minutes on 2 CPU cores: a smaller supernet (8x8 images need
#: no 8-cell network) and an architecture learning rate 100x DARTS's for the 120 steps it
#: gets (at 3e-3 the mixing weights ended within 0.016 of uniform; at 3e-2 the best op of
#: an edge leads its runner-up by up to 0.2, a median 0.03)
DATASET_PRESETS = {
    "digits": {"epochs": 10, "batch_size": 64, "init_channels": 8, "layers": 5,
               "arch_lr": 3e-2},
    "synthetic": {"epochs": 2, "batch_size": 32, "init_channels": 4, "layers": 3},
    # direct search at 224x224 (PC-DARTS's ImageNet settings, ALGORITHMS.md §3.3): the
    # ImageNet stem, a cosine from 0.5 with a 5-epoch warm-up (batches > 256), Adam 6e-3 and
    # the gradient clip on the architecture too
    "imagenet": {"epochs": 50, "batch_size": 1024, "init_channels": 16, "layers": 8,
                 "lr": 0.5, "lr_min": 0.0, "arch_lr": 6e-3, "arch_grad_clip": 5.0},
}
#: the ImageNet warm-up applies to batches over this (PC-DARTS, DrNAS)
LR_WARMUP_BATCH, LR_WARMUP_EPOCHS = 256, 5


@dataclass
class SearchConfig:
    """Everything that defines a search; saved in the run directory and the checkpoint.

    Defaults are DARTS's CIFAR-10 settings (ALGORITHMS.md §3.1) unless a data-set preset
    (`DATASET_PRESETS`) says otherwise; `None` means "the space's or preset's default".
    """

    space: str = "darts"
    algo: str = "darts"
    dataset: str = "digits"
    data_dir: str | None = None
    run_dir: str = "runs/search"
    epochs: int | None = None
    batch_size: int | None = None
    init_channels: int | None = None
    layers: int | None = None
    lr: float | None = None
    lr_min: float | None = None
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    lr_warmup_epochs: int | None = None  # linear LR warm-up (None: 5 on ImageNet, batch > 256)
    arch_lr: float | None = None
    arch_betas: tuple[float, float] = (0.5, 0.999)
    arch_weight_decay: float = 1e-3
    arch_warmup_epochs: int | None = None
    arch_grad_clip: float | None = None  # gradient-norm clip of the arch step (None, 0: off)
    seed: int = 2
    device: str = "auto"
    channels_last: bool = True
    deterministic: bool = False
    cuda_graph: bool = False  # replay each step as a CUDA graph (fastdarts.graphs)
    progress: bool = True
    memory: str = "low"  # mixed-op memory mode: low | fast | reference (fastdarts.mixed)
    partial_k: int | None = None  # PC-DARTS channel partitions K (None: the method's default)
    partial_selection: str = "first"  # first C/K channels (the original) or sampled per step
    order: int = 1  # DARTS's architecture gradient: 1 (first order) or 2 (unrolled, FD-HVP)
    hvp_r: float = 1e-2  # second order: eps = hvp_r / ||v|| (DARTS's 0.01)
    # RF-DARTS / RF-PCDARTS (fastdarts.random_features)
    rf_seed: int | None = None  # seed of the frozen random convolutions (None: `seed`)
    rf_train_classifier: bool = True  # False freezes the classifier too
    # SDARTS-RS / -ADV: perturbation radius grows linearly eps_min -> eps over the epochs
    sdarts_epsilon: float = 0.3
    sdarts_epsilon_min: float = 0.03
    sdarts_attack_steps: int = 7  # ADV: PGD steps of 2 eps / steps
    # DrNAS
    drnas_reg: str = "l2"  # l2 (Adam weight decay toward Dir(1)) or kl (KL to Dir(1))
    drnas_reg_scale: float = 1e-3
    drnas_progressive: bool = True
    drnas_k: tuple[int, ...] | None = None  # partial-channel K per stage (None: the space's)
    drnas_ops: tuple[int, ...] | None = None  # ops kept per stage (None: the space's)
    # DARTS-: the auxiliary skip's beta decays linearly from this to this / epochs
    aux_skip_beta: float = 1.0
    steps_per_epoch: int | None = None  # a cap on the weight steps per epoch (quick trials)
    # ImageNet (fastdarts.data.imagenet): per-class fractions of train/ for the weights and
    # the architecture, the crop size, and the decoding processes (None: min(8, cores))
    imagenet_fractions: tuple[float, float] = (0.1, 0.025)
    image_size: int | None = None
    data_workers: int | None = None

    def resolved(self) -> "SearchConfig":
        """A copy with every `None` filled from, in this order, what the method needs on this
        data set, the data-set preset, the method's defaults (`SearchAlgorithm.defaults`)
        and DARTS's CIFAR defaults."""
        preset = DATASET_PRESETS.get(self.dataset, {})
        method = algorithm_class(self.algo)
        below, above = method.defaults(self.space, self.dataset)
        darts_defaults = {"epochs": 50, "batch_size": 64, "arch_lr": 3e-4, "lr": 0.025,
                          "lr_min": 0.001}
        values = dataclasses.asdict(self)
        for key in _RESOLVED:
            if values[key] is None:
                values[key] = above.get(key, preset.get(key, below.get(
                    key, darts_defaults.get(key))))
        if values["arch_warmup_epochs"] is None:
            values["arch_warmup_epochs"] = method.default_warmup(values)
        if values["lr_warmup_epochs"] is None:
            values["lr_warmup_epochs"] = (LR_WARMUP_EPOCHS if self.dataset == "imagenet" and
                                          values["batch_size"] > LR_WARMUP_BATCH else 0)
        if values["data_workers"] is None:
            values["data_workers"] = (min(8, os.cpu_count() or 1)
                                      if self.dataset == "imagenet" else 0)
        for key in TUPLE_FIELDS:
            if values[key] is not None:
                values[key] = tuple(values[key])
        cfg = SearchConfig(**values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}")
        for name in ("lr", "arch_lr", "grad_clip"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number; got {value}")
        if self.partial_selection not in ("first", "sampled"):
            raise ValueError(f"partial_selection must be 'first' or 'sampled'; got "
                             f"{self.partial_selection!r}")
        if self.order not in (1, 2):
            raise ValueError(f"order must be 1 or 2; got {self.order}")
        if not (math.isfinite(self.hvp_r) and self.hvp_r > 0):
            raise ValueError(f"hvp_r must be a positive finite number; got {self.hvp_r}")
        if self.partial_k is not None and self.partial_k < 1:
            raise ValueError(f"partial_k must be >= 1; got {self.partial_k}")
        # a partial-channel edge runs its ops on C/K of its C channels; the first cells have
        # C = init_channels and the later ones multiples of it
        channels = self.init_channels or DEFAULT_C
        for name, ks in (("partial_k", [self.partial_k]), ("drnas_k", self.drnas_k or [])):
            for k in ks:
                if k is not None and channels % k:
                    raise ValueError(f"{name} ({k}) must divide init_channels ({channels}): a "
                                     f"partial-channel edge runs its ops on init_channels / "
                                     f"{name} channels")
        for name in ("arch_warmup_epochs", "lr_warmup_epochs", "data_workers"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0; got {value}")
        if self.arch_grad_clip is not None and not (math.isfinite(self.arch_grad_clip)
                                                    and self.arch_grad_clip >= 0):
            raise ValueError(f"arch_grad_clip must be finite and >= 0 (0: off); got "
                             f"{self.arch_grad_clip}")
        if self.image_size is not None and self.dataset != "imagenet":
            raise ValueError(f"image_size is an ImageNet option (the other data sets have "
                             f"their native size); got {self.image_size} for {self.dataset}")
        fractions = tuple(self.imagenet_fractions)
        if len(fractions) != 2 or any(not 0 < f <= 1 for f in fractions) or sum(fractions) > 1:
            raise ValueError(f"imagenet_fractions must be two fractions in (0, 1] (weights, "
                             f"architecture) summing to <= 1; got {list(fractions)}")
        if not 0 <= self.sdarts_epsilon_min <= self.sdarts_epsilon <= 1:
            raise ValueError(f"sdarts_epsilon_min and sdarts_epsilon must satisfy 0 <= min <= "
                             f"max <= 1; got {self.sdarts_epsilon_min}, {self.sdarts_epsilon}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1; got {self.steps_per_epoch}")
        if self.sdarts_attack_steps < 1:
            raise ValueError(f"sdarts_attack_steps must be >= 1; got {self.sdarts_attack_steps}")
        if self.drnas_reg not in ("l2", "kl"):
            raise ValueError(f"drnas_reg must be 'l2' or 'kl'; got {self.drnas_reg!r}")
        if not (math.isfinite(self.drnas_reg_scale) and self.drnas_reg_scale >= 0):
            raise ValueError(f"drnas_reg_scale must be finite and >= 0; got "
                             f"{self.drnas_reg_scale}")
        if not (math.isfinite(self.aux_skip_beta) and self.aux_skip_beta >= 0):
            raise ValueError(f"aux_skip_beta must be finite and >= 0; got {self.aux_skip_beta}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        for key in TUPLE_FIELDS:
            if d[key] is not None:
                d[key] = list(d[key])
        return d


#: fields that `resolved()` fills from presets and method defaults when None
_RESOLVED = ("epochs", "batch_size", "init_channels", "layers", "arch_lr", "lr", "lr_min",
             "partial_k", "arch_grad_clip")
#: tuple fields (lists in JSON; the CLI turns a stored config's lists back into tuples)
TUPLE_FIELDS = ("arch_betas", "drnas_k", "drnas_ops", "imagenet_fractions")


# Fields that may differ between a run and its resumption without changing the result
# (decoded ImageNet crops depend on the pass and position only, not on the workers).
# A graph replays the kernels the eager step runs, so cuda_graph is one of them too.
_RESUME_FREE = {"run_dir", "device", "progress", "data_dir", "data_workers", "cuda_graph"}


class RunExistsError(FileExistsError):
    """`run_dir` already holds a search's checkpoint and `resume` was not asked for."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        super().__init__(f"{run_dir / CHECKPOINT} exists: pass resume=True (--resume) to continue "
                         f"that search, or choose another run_dir")


@dataclass
class SearchResult:
    genotype: object
    test_accuracy: float | None
    test_loss: float | None
    history: list[dict]
    run_dir: Path


def resolve_device(name: str) -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` as a device torch has; a named error otherwise."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: expected auto, cpu, cuda or cuda:N; got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: a search runs on cpu or cuda; got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was asked for but torch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device: {name!r}, but torch sees {torch.cuda.device_count()} "
                         f"CUDA devices")
    return device


def _one_process() -> None:
    """A search is one process for now: two started by torchrun would write the same run
    directory and checkpoint at once."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.isdigit() and int(world) > 1:
        raise ValueError(f"this search runs in one process, and torchrun (or another "
                         f"launcher) started {world} (WORLD_SIZE={world}), which would all "
                         f"write one run directory; start it once, without torchrun")


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, weights=None,
             memory_format=torch.contiguous_format):
    """Mean loss and accuracy (%) of `model` in eval mode over one pass of `loader` (a
    `BatchLoader` or `FileBatchLoader`)."""
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in loader.batches(0):
        x, y = to_device(x, loader.spec, device, memory_format), y.to(device)
        logits = model(x, weights)
        total_loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    return total_loss / count, 100.0 * correct / count


def _weights_record(model: nn.Module, weights) -> dict:
    """Mixing weights of every architecture tensor, with edge and op names, for the log."""
    if hasattr(model, "alphas_normal"):
        names = ("normal", "reduce")
        ops = (model.normal_ops, model.reduce_ops)
    else:
        names = ("cell",)
        ops = ([model.primitives] * len(model.edge_keys),)
    edges = model.edge_labels()
    return {name: {"edges": edges, "ops": [list(o) for o in op_lists],
                   "values": [[round(float(v), 6) for v in row] for row in w.tolist()]}
            for name, op_lists, w in zip(names, ops, weights)}


def _edge_weights_record(weights) -> dict | None:
    """PC-DARTS's edge weights per cell type (weights = normal, reduce, e_normal, e_reduce)."""
    if len(weights) != 4:
        return None
    return {name: [round(float(v), 6) for v in e.tolist()]
            for name, e in zip(("normal", "reduce"), weights[2:])}


def _check_finite(loss: float, step: str, epoch: int, model: nn.Module) -> None:
    """Stop with a clear message when a step's loss is NaN or infinite (the value is on the
    host already, so the check costs nothing); name the architecture tensors that diverged.
    Checkpoints of the completed epochs are left as they were."""
    if math.isfinite(loss):
        return
    arch = {id(p) for p in model.arch_parameters()}
    bad = [name for name, p in model.named_parameters()
           if id(p) in arch and not torch.isfinite(p).all()]
    where = (f"architecture parameters {', '.join(bad)} are not finite" if bad else
             "the architecture parameters are finite (the weights or the batch are not)")
    raise FloatingPointError(
        f"the {step} step's loss is {loss} in epoch {epoch + 1}; {where}. Lower the learning "
        f"rates (--lr, --arch-lr) or check the data; the checkpoint of the last completed "
        f"epoch is kept")


class _Progress:
    """A tqdm bar over one epoch's steps showing loss, accuracy and images per second."""

    def __init__(self, enabled: bool, total: int, desc: str):
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, **postfix):
        if self.bar is not None:
            self.bar.set_postfix(postfix, refresh=False)
            self.bar.update(1)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def build_search(cfg: SearchConfig, num_classes: int, in_channels: int, device,
                 algorithm_state: dict | None = None, stem: str = "cifar"):
    """The method, its supernet (on `device`, channels_last if configured, with the data
    set's `stem`) and the weight training of a resolved config; `algorithm_state` (a
    checkpoint's) gives the supernet the structure the run had reached (DrNAS's stages).
    -> (algorithm, model, WeightTraining)."""
    algo = get_algorithm(cfg.algo, cfg)
    options = ({} if cfg.partial_k is None else
               {"partial_k": cfg.partial_k, "partial_selection": cfg.partial_selection})
    options.update(algo.supernet_options())
    if stem != "cifar":
        options["stem"] = stem
    model = build_supernet(cfg.space, num_classes, in_channels, C=cfg.init_channels,
                           layers=cfg.layers, memory=cfg.memory, **options).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    algo.prepare_model(model, algorithm_state)
    # One buffer for all trained weights and one for their gradients (fastdarts.flat):
    # zeroing is one kernel, and second-order DARTS writes its virtual step and
    # perturbations into it.
    training = WeightTraining(model, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.epochs,
                              cfg.lr_min, cfg.lr_warmup_epochs)
    algo.setup(model, training.optimizer, training.flat)
    return algo, model, training


def search_step(algo, model: nn.Module, training: WeightTraining, batch, val_batch, lr: float,
                grad_clip: float):
    """One iteration: the architecture step on `val_batch` (skipped when None, during a
    warm-up), then the weight step on `batch`. -> (loss, logits, architecture loss or None),
    on the device (nothing here waits for the device)."""
    arch_loss = None
    if val_batch is not None:
        arch_loss = algo.arch_step(model, batch, val_batch, lr)["arch_loss"]
    x, y = batch
    weights = algo.weight_step_weights(model, batch)
    training.flat.zero_grad()
    logits = model(x, weights)
    loss = algo.loss(logits, y)
    loss.backward(inputs=training.params)  # accumulates into the flat gradient buffer
    nn.utils.clip_grad_norm_(training.params, grad_clip)
    training.optimizer.step()
    return loss.detach(), logits.detach(), arch_loss


def _captured_search_step(cfg: SearchConfig, algo, model: nn.Module,
                          training: WeightTraining, current_lr) -> CapturedStep:
    """`search_step` as a CUDA graph (`fastdarts.graphs`), called with (x, y[, x_val,
    y_val]); `current_lr()` gives the epoch's learning rate when a graph is captured."""
    if any(getattr(m, "draws_random_numbers", False) for m in model.modules()):
        raise ValueError(
            "cuda_graph with partial_selection='sampled': torch.randperm may draw a small "
            "permutation on the host, and a graph would then replay one fixed permutation; "
            "use partial_selection='first' with cuda_graph")
    if cfg.memory == "low" and module_uses_rng(model):
        raise ValueError(
            "cuda_graph with memory='low': this supernet draws random numbers (S4 noise, "
            "dropout) and 'low' replays them with a saved RNG state, which a graph capture "
            "cannot read; use memory='fast' with cuda_graph")

    def step(x, y, *val_batch):
        return search_step(algo, model, training, (x, y), val_batch or None, current_lr(),
                           cfg.grad_clip)
    return CapturedStep(step)


def run_search(config: SearchConfig, resume: bool = False, data: SearchData | None = None,
               stop_after_epochs: int | None = None, log=print) -> SearchResult:
    """Run (or resume) a search; see the module docstring.

    Args:
        config: the search; `None` fields are resolved from presets.
        resume: continue from `run_dir/checkpoint.pt`; the stored configuration must agree
            with `config` except for run_dir, device, progress and data_dir.
        data: pre-loaded splits (tests, benchmarks); loaded from `config.dataset` otherwise.
        stop_after_epochs: stop (as if interrupted) once this many epochs are complete.
        log: where one-line epoch summaries go.
    """
    cfg = config.resolved()
    _one_process()
    run_dir = Path(cfg.run_dir)
    ckpt_path = run_dir / CHECKPOINT
    device = resolve_device(cfg.device)
    if cfg.cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph needs a CUDA device (a CUDA graph replays device "
                         f"work); this search runs on {device}")

    checkpoint = None
    if resume:
        checkpoint = load_checkpoint(ckpt_path)
        stored = checkpoint["config"]
        # a key missing from an older checkpoint had the field's default value, or what
        # that version did (it had no LR warm-up)
        defaults = {**SearchConfig().to_dict(), "lr_warmup_epochs": 0}
        mismatched = sorted(k for k, v in cfg.to_dict().items()
                            if k not in _RESUME_FREE and stored.get(k, defaults[k]) != v)
        if mismatched:
            details = ", ".join(f"{k}: checkpoint {stored.get(k)!r} vs now "
                                f"{cfg.to_dict()[k]!r}" for k in mismatched)
            raise ValueError(f"resume: the configuration differs from the checkpoint's ({details})")
    elif ckpt_path.exists():
        raise RunExistsError(run_dir)

    if cfg.deterministic:
        # cuDNN picks non-deterministic algorithms by default; this makes a run (and its
        # resumption) repeatable on a GPU too, at some speed.
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    torch.manual_seed(cfg.seed)
    if data is None:
        options = ({"fractions": cfg.imagenet_fractions, "image_size": cfg.image_size or 224}
                   if cfg.dataset == "imagenet" else {})
        data = load_dataset(cfg.dataset, cfg.data_dir, **options)
    algo, model, training = build_search(
        cfg, data.spec.num_classes, data.spec.in_channels, device,
        None if checkpoint is None else checkpoint["algorithm"], stem=data.spec.stem)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    w_optimizer, scheduler = training.optimizer, training.scheduler
    # only now, with the data read and the supernet built: a start that fails leaves no
    # empty run directory behind
    run_dir.mkdir(parents=True, exist_ok=True)

    def loader(split, batch_size, train, seed=0):
        return make_loader(split, data.spec, batch_size, shuffle=train, train=train, seed=seed,
                           workers=cfg.data_workers, pin_memory=device.type == "cuda")

    train_loader = loader(data.train, cfg.batch_size, True, cfg.seed)
    # The architecture split is augmented like the training split, as in DARTS (§5.2).
    val_stream = InfiniteLoader(loader(data.val, cfg.batch_size, True, cfg.seed + 7))
    val_eval = loader(data.val, 256, False)
    test_eval = loader(data.test, 256, False) if data.test is not None else None
    log_file = JsonlLog(run_dir / "log.jsonl")

    start_epoch, history = 0, []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        w_optimizer.load_state_dict(checkpoint["w_optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        algo.load_state_dict(checkpoint["algorithm"])
        train_loader.load_state_dict(checkpoint["train_loader"])
        val_stream.load_state_dict(checkpoint["val_stream"])
        set_rng_state(checkpoint["rng"])
        start_epoch, history = checkpoint["epoch"], checkpoint["history"]
        log_file.truncate_after(start_epoch - 1)
        log(f"resumed {run_dir}: {start_epoch} of {cfg.epochs} epochs done"
            + (f", continuing with epoch {start_epoch + 1}" if start_epoch < cfg.epochs else ""))
    else:
        atomic_write_text(run_dir / "config.json", json.dumps(cfg.to_dict(), indent=2) + "\n")
        log_file.path.unlink(missing_ok=True)
        n_weights = sum(p.numel() for p in training.params)
        extra = algo.describe()
        log(f"search {cfg.algo} on {cfg.space}, {data.describe()}; supernet "
            f"{n_weights:,} trained weights, device {device}"
            f"{' (steps replayed as CUDA graphs)' if cfg.cuda_graph else ''}, run dir {run_dir}"
            + (f"; {extra}" if extra else ""))

    # Adam's step count: on the device for a graph, on the host otherwise (a checkpoint
    # brings back the flag of the run that saved it)
    make_capturable(algo.arch_optimizer, cfg.cuda_graph)
    # the graph's step reads the learning rate of the epoch it is captured in
    captured = _captured_search_step(cfg, algo, model, training,
                                     lambda: lr) if cfg.cuda_graph else None
    search_start = time.perf_counter()
    for epoch in range(start_epoch, cfg.epochs):
        if stop_after_epochs is not None and epoch >= stop_after_epochs:
            break
        algo.on_epoch_start(epoch, model, training)
        lr = training.start_epoch(epoch)
        arch_on = algo.arch_updates_enabled(epoch)
        model.train()
        sums = {"loss": 0.0, "correct": 0, "count": 0, "arch_loss": 0.0, "arch_steps": 0}
        epoch_start = time.perf_counter()
        steps = len(train_loader) if cfg.steps_per_epoch is None else min(
            len(train_loader), cfg.steps_per_epoch)
        bar = _Progress(cfg.progress, steps, f"epoch {epoch + 1}/{cfg.epochs}")
        # islice stops without drawing (and augmenting) one batch too many: resume stays exact
        for x, y in itertools.islice(iter(train_loader), steps):
            x = to_device(x, data.spec, device, memory_format)
            y = y.to(device, non_blocking=True)
            val_batch = None
            if arch_on:
                xv, yv = val_stream.next()
                val_batch = (to_device(xv, data.spec, device, memory_format),
                             yv.to(device, non_blocking=True))
            if captured is None:
                loss, logits, arch_loss = search_step(algo, model, training, (x, y), val_batch,
                                                      lr, cfg.grad_clip)
            else:  # the graph bakes in the epoch's schedule and whether arch steps run
                loss, logits, arch_loss = captured((epoch, arch_on, lr), x, y,
                                                   *(val_batch or ()))
            if arch_loss is not None:
                arch_loss = float(arch_loss)
                _check_finite(arch_loss, "architecture", epoch, model)
                sums["arch_loss"] += arch_loss
                sums["arch_steps"] += 1
            loss_value = loss.item()
            _check_finite(loss_value, "weight", epoch, model)
            sums["loss"] += loss_value * len(y)
            sums["correct"] += (logits.argmax(1) == y).sum().item()
            sums["count"] += len(y)
            elapsed = time.perf_counter() - epoch_start
            bar.update(loss=f"{sums['loss'] / sums['count']:.3f}",
                       acc=f"{100 * sums['correct'] / sums['count']:.1f}",
                       img_s=f"{sums['count'] / max(elapsed, 1e-9):.0f}")
        bar.close()
        training.end_epoch()
        epoch_time = time.perf_counter() - epoch_start

        with torch.no_grad():
            weights = algo.mixing_weights(model, "eval")
        val_loss, val_acc = evaluate(model, val_eval, device, weights, memory_format)
        genotype = algo.genotype(model)
        record = {
            "epoch": epoch, "lr": lr, "arch_updates": arch_on,
            "train_loss": sums["loss"] / sums["count"],
            "train_acc": 100.0 * sums["correct"] / sums["count"],
            "arch_loss": sums["arch_loss"] / sums["arch_steps"] if sums["arch_steps"] else None,
            "val_loss": val_loss, "val_acc": val_acc,
            "epoch_time_s": epoch_time, "images_per_s": sums["count"] / epoch_time,
            "genotype": genotype_to_dict(genotype),
            "weights": _weights_record(model, [w.detach().cpu() for w in weights]),
        }
        edge_weights = _edge_weights_record([w.detach().cpu() for w in weights])
        if edge_weights is not None:
            record["edge_weights"] = edge_weights
        record["margins"] = decision_margins(record["weights"],
                                             exclude_none=hasattr(model, "alphas_normal"))
        history.append(record)
        atomic_save({
            "config": cfg.to_dict(), "epoch": epoch + 1, "model": model.state_dict(),
            "w_optimizer": w_optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "algorithm": algo.state_dict(), "train_loader": train_loader.state_dict(),
            "val_stream": val_stream.state_dict(), "rng": rng_state(), "history": history,
        }, ckpt_path)
        log_file.append(record)
        plot_arch_weights(history, run_dir / "alphas.png",
                          title=f"{cfg.algo} on {cfg.space} / {cfg.dataset}")
        spread = margin_summary(record["margins"])
        log(f"epoch {epoch + 1}/{cfg.epochs}  lr {lr:.4g}  train loss {record['train_loss']:.3f} "
            f"acc {record['train_acc']:.1f}%  val loss {val_loss:.3f} acc {val_acc:.1f}%  "
            f"margin min {spread['min']:.3f} median {spread['median']:.3f}  "
            f"{record['images_per_s']:.0f} img/s  {epoch_time:.1f}s")

    completed = history[-1]["epoch"] + 1 if history else 0
    genotype = algo.genotype(model)
    test_loss = test_acc = None
    if completed == cfg.epochs:
        if test_eval is not None:
            with torch.no_grad():
                weights = algo.mixing_weights(model, "eval")
            test_loss, test_acc = evaluate(model, test_eval, device, weights,
                                              memory_format)
        save_genotype(run_dir / "genotype.json", genotype)
        plot_final_weights(history[-1], run_dir / "alphas_final.png",
                           title=f"{cfg.algo} on {cfg.space} / {cfg.dataset}")
        if isinstance(genotype, DartsGenotype):
            draw_genotype(genotype, run_dir / "cell")
        result = {
            "config": cfg.to_dict(), "genotype": genotype_to_dict(genotype),
            "test_loss": test_loss, "test_accuracy": test_acc,
            "final_val_accuracy": history[-1]["val_acc"] if history else None,
            "final_margins": (margin_summary(history[-1]["margins"])
                              if history and "margins" in history[-1] else None),
            "search_time_s_this_session": time.perf_counter() - search_start,
            "num_weights": sum(p.numel() for p in training.params),
            "method": {"algo": cfg.algo, "order": cfg.order,
                       "summary": algorithm_class(cfg.algo).summary,
                       "settings": algo.describe() or None},
            "torch": torch.__version__, "device": str(device),
            "provenance": provenance(device),
        }
        atomic_write_text(run_dir / "result.json", json.dumps(result, indent=2) + "\n")
        log(f"genotype: {genotype!r}")
        if test_acc is not None:
            log(f"supernet test accuracy on the held-out split: {test_acc:.2f}% "
                f"(loss {test_loss:.3f}; chance {100 / data.spec.num_classes:.1f}%)")
        cells = (f", {run_dir / 'cell_normal.png'}, {run_dir / 'cell_reduction.png'}"
                 if isinstance(genotype, DartsGenotype) else "")
        log(f"wrote {run_dir / 'genotype.json'}, {run_dir / 'result.json'}, "
            f"{run_dir / 'log.jsonl'}, {run_dir / 'alphas.png'}, "
            f"{run_dir / 'alphas_final.png'}{cells}")
    return SearchResult(genotype, test_acc, test_loss, history, run_dir)
