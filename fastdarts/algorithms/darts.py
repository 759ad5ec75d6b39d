"""DARTS (Liu et al., 2019), first order: the architecture gradient is taken on a
validation batch at the current weights (ALGORITHMS.md §2.1)."""
from __future__ import annotations

from .base import SearchAlgorithm, grads_into

__all__ = ["DARTS"]


class DARTS(SearchAlgorithm):
    name = "darts"

    def arch_step(self, model, train_batch, val_batch, lr):
        x_val, y_val = val_batch
        arch = model.arch_parameters()
        self.arch_optimizer.zero_grad(set_to_none=True)
        logits = model(x_val, self.mixing_weights(model, "arch"))
        loss = self.loss(logits, y_val)
        grads_into(loss, arch)
        self.arch_optimizer.step()
        return {"arch_loss": loss.detach()}
