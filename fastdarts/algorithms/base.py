"""What a search method decides, apart from the shared bilevel loop in `fastdarts.search`:
how architecture parameters become mixing weights, how the architecture step is taken,
when architecture updates start, and how the genotype is derived."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..training import weights_frozen

__all__ = ["SearchAlgorithm", "grads_into"]


def grads_into(loss: torch.Tensor, params: list[nn.Parameter]) -> None:
    """Backpropagate `loss` into `params` only and store the result as `.grad`.

    `torch.autograd.grad` restricted to the parameters that are stepped skips every gradient
    nobody uses (the weight gradients during an architecture step, the alpha gradient during
    a weight step), which `loss.backward()` would compute and throw away.
    """
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = torch.zeros_like(p) if g is None else g


class SearchAlgorithm:
    """Base class. Subclasses set `name` and override what differs from DARTS."""

    name: str = ""
    #: one line for the README and `--help`
    summary: str = ""
    #: config values this method defaults to (below a data-set preset and explicit values)
    DEFAULTS: dict = {}
    #: per data set, values above the data-set preset (what the method needs there)
    DATASET_DEFAULTS: dict = {}

    @classmethod
    def defaults(cls, space: str, dataset: str) -> tuple[dict, dict]:
        """(defaults a data-set preset overrides, defaults that override the preset)."""
        return dict(cls.DEFAULTS), dict(cls.DATASET_DEFAULTS.get(dataset, {}))

    @classmethod
    def default_warmup(cls, values: dict) -> int:
        """Epochs without architecture updates when the config leaves it open (`values`:
        the configuration resolved so far)."""
        return 0

    def __init__(self, config):
        self.config = config
        self.arch_optimizer: torch.optim.Optimizer | None = None
        self.weight_optimizer: torch.optim.Optimizer | None = None
        self.flat_weights = None

    # -- set-up --------------------------------------------------------------------------
    def supernet_options(self) -> dict:
        """Extra keyword arguments of `build_supernet` this method needs."""
        return {}

    def prepare_model(self, model: nn.Module, state: dict | None = None) -> None:
        """Adapt the freshly built supernet before its weights are collected: freeze what is
        not trained (RF), or give it the structure of `state`, the method's checkpointed
        state (DrNAS's pruned and widened stages), so the checkpoint's tensors fit."""

    def setup(self, model: nn.Module, weight_optimizer=None, flat_weights=None) -> None:
        """Create the architecture optimiser (called once the model is on its device).
        `weight_optimizer` and `flat_weights` (`fastdarts.flat.FlatParameters` of the
        weights) are there for methods whose architecture step looks at the weight step."""
        self.weight_optimizer = weight_optimizer
        self.flat_weights = flat_weights
        c = self.config
        self.arch_optimizer = torch.optim.Adam(
            model.arch_parameters(), lr=c.arch_lr, betas=tuple(c.arch_betas),
            weight_decay=c.arch_weight_decay)

    # -- per step ------------------------------------------------------------------------
    def weights_frozen(self, model: nn.Module):
        """Context: the trained weights with requires_grad off, around a pass that
        differentiates only the architecture (`fastdarts.training.weights_frozen`)."""
        params = (self.flat_weights.params if self.flat_weights is not None
                  else model.weight_parameters())
        return weights_frozen(params)

    def mixing_weights(self, model: nn.Module, phase: str):
        """Mixing weights for `phase` in {'arch', 'weight', 'eval'}; DARTS: softmax."""
        return model.mixing_weights()

    def weight_step_weights(self, model: nn.Module, batch) -> tuple:
        """Mixing weights for the weight step on `batch`, without a graph to the
        architecture parameters (the weight step throws their gradient away); SDARTS
        perturbs them here."""
        with torch.no_grad():
            return tuple(self.mixing_weights(model, "weight"))

    def arch_updates_enabled(self, epoch: int) -> bool:
        return epoch >= self.config.arch_warmup_epochs

    def arch_step(self, model: nn.Module, train_batch, val_batch, lr: float) -> dict[str, Any]:
        raise NotImplementedError

    def step_architecture(self) -> None:
        """The architecture optimiser's step on the gradients `arch_step` stored, after the
        gradient-norm clip `arch_grad_clip` where one is set (PC-DARTS and DrNAS on ImageNet
        clip the architecture gradient at 5, like the weights')."""
        clip = getattr(self.config, "arch_grad_clip", None)
        if clip:
            params = [p for g in self.arch_optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, clip)
        self.arch_optimizer.step()

    def on_epoch_start(self, epoch: int, model: nn.Module, training=None) -> None:
        """Hook for per-epoch schedules (SDARTS epsilon, DARTS- beta, DrNAS stages);
        `training` (`fastdarts.training.WeightTraining`) is the weight side of the loop, for
        a method that replaces weights (DrNAS widening)."""

    def describe(self) -> str:
        """What the run log says about the method's settings, beyond the config."""
        return ""

    # -- results -------------------------------------------------------------------------
    def genotype(self, model: nn.Module):
        return model.genotype()

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, target)

    # -- checkpoints ---------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"arch_optimizer": self.arch_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.arch_optimizer.load_state_dict(state["arch_optimizer"])
