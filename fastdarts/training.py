"""The weight side of the search loop: the trainable weights in flat buffers
(`fastdarts.flat`), their SGD optimiser and its cosine schedule, kept together so that a
method that replaces weights mid-search (DrNAS widening its edges) can rebuild the buffers
while the optimiser state and the schedule carry on."""
from __future__ import annotations

import torch
from torch import nn

from .flat import FlatParameters

__all__ = ["WeightTraining", "trainable_weights"]


def trainable_weights(model: nn.Module) -> list[nn.Parameter]:
    """The supernet's weights that are trained: not the architecture, not frozen (RF)."""
    return [p for p in model.weight_parameters() if p.requires_grad]


class WeightTraining:
    """SGD with momentum and weight decay over the flat weight buffers, with a cosine
    learning rate stepped once per epoch (ALGORITHMS.md §3)."""

    def __init__(self, model: nn.Module, lr: float, momentum: float, weight_decay: float,
                 epochs: int, lr_min: float):
        self.model = model
        self.flat = FlatParameters(trainable_weights(model), "weights")
        self.optimizer = torch.optim.SGD(self.flat.params, lr=lr, momentum=momentum,
                                         weight_decay=weight_decay)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, epochs,
                                                                    eta_min=lr_min)

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
