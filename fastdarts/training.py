"""The weight side of the search loop: the trainable weights in flat buffers
(`fastdarts.flat`), their SGD optimiser and its cosine schedule, kept together so that a
method that replaces weights mid-search (DrNAS widening its edges) can rebuild the buffers
while the optimiser state and the schedule carry on."""
from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch
from torch import nn

from .flat import FlatParameters

__all__ = ["WeightTraining", "trainable_weights", "weights_frozen"]


def trainable_weights(model: nn.Module) -> list[nn.Parameter]:
    """The supernet's weights that are trained: not the architecture, not frozen (RF)."""
    return [p for p in model.weight_parameters() if p.requires_grad]


@contextlib.contextmanager
def weights_frozen(params: Iterable[nn.Parameter]) -> Iterator[None]:
    """`requires_grad` off for `params` inside the block, for a pass that differentiates the
    architecture only (a first-order architecture step, SDARTS-ADV's attack, the
    finite-difference passes of second-order DARTS).

    `torch.autograd.grad(loss, alphas)` alone already spares aten's own backward nodes the
    weight gradients, but not an autograd Function's: the fused edge and the cell recompute
    would form every weight gradient and autograd would throw it away. With the weights
    frozen, no pass forms them, and the forward keeps nothing for them (on this machine's
    CPU a first-order DARTS architecture step then takes 0.74x (`fast`) and 0.80x (`low`)
    of its time, and the original's is unchanged). The gradients of what is differentiated
    are the same.
    """
    frozen = [p for p in params if p.requires_grad and p.is_leaf]  # only leaves can be
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


class WeightTraining:
    """SGD with momentum and weight decay over the flat weight buffers, with a cosine
    learning rate stepped once per epoch (ALGORITHMS.md §3) and an optional linear warm-up.

    Warm-up (PC-DARTS and DrNAS on ImageNet with batches over 256): epoch e < W runs at
    cosine(e) * (e + 1) / W. The originals write that value into the optimiser while a
    CosineAnnealingLR is active, whose recursive formula then continues from the written
    value (ALGORITHMS.md §5); here the scheduler gets its own value back before it steps,
    so the schedule after the warm-up is the plain cosine.
    """

    def __init__(self, model: nn.Module, lr: float, momentum: float, weight_decay: float,
                 epochs: int, lr_min: float, lr_warmup_epochs: int = 0):
        if lr_warmup_epochs < 0:
            raise ValueError(f"lr_warmup_epochs must be >= 0; got {lr_warmup_epochs}")
        self.model = model
        self.flat = FlatParameters(trainable_weights(model), "weights")
        self.optimizer = torch.optim.SGD(self.flat.params, lr=lr, momentum=momentum,
                                         weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, epochs,
                                                                    eta_min=lr_min)
        self.lr_warmup_epochs = lr_warmup_epochs

    def start_epoch(self, epoch: int) -> float:
        """Set and return the learning rate of `epoch` (the cosine's, warmed up)."""
        lr = self.scheduler.get_last_lr()[0]
        if epoch < self.lr_warmup_epochs:
            lr = lr * (epoch + 1) / self.lr_warmup_epochs
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def end_epoch(self) -> None:
        """Step the cosine schedule from its own value, not the warmed-up one."""
        for group, lr in zip(self.optimizer.param_groups, self.scheduler.get_last_lr()):
            group["lr"] = lr
        self.scheduler.step()

    @property
    def params(self) -> list[nn.Parameter]:
        return self.flat.params

    def parameters_replaced(self) -> FlatParameters:
        """Rebuild the flat buffers after the model's weights were replaced; the optimiser
        must already hold the new parameters (`fastdarts.wider(model, k, optimizer)` moves
        them and their momentum). Returns the new buffers."""
        flat = FlatParameters(trainable_weights(self.model), "weights")
        held = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
        if held != {id(p) for p in flat.params}:
            raise RuntimeError("parameters_replaced: the weight optimiser does not hold the "
                               "model's current weights; pass it to fastdarts.wider")
        self.flat = flat
        return flat
