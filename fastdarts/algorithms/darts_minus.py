"""DARTS- (Chu et al., 2021; ALGORITHMS.md §2.6): every edge gets an auxiliary skip
(identity, or FactorizedReduce(C, C, affine=False) on stride-2 edges) whose weight beta
decays linearly, beta_t = beta_0 (T - t) / T for epochs t = 0 .. T-1: 1.0, 0.98, ..., 0.02 at
the last of 50 epochs, as the original (it never reaches 0 in training). The skip absorbs
the advantage that otherwise drives DARTS to skip-only cells, and it is not part of the
architecture: the alphas, their softmax and the genotype cover the candidate ops only.

The aux skip is the last op of every fused edge and beta its mixing weight
(`with_aux_weight`), so it runs inside the one fused weighted sum. beta is a buffer of the
supernet (`aux_beta`), saved with it, with no gradient.
"""
from __future__ import annotations

from .darts import DARTS

__all__ = ["DARTSMinus", "aux_beta_at"]


def aux_beta_at(epoch: int, epochs: int, beta0: float = 1.0) -> float:
    """The original's linear decay: beta0 (T_max - t) / (T_max - T_start), T_start = 0."""
    return beta0 * (epochs - epoch) / epochs


class DARTSMinus(DARTS):
    name = "darts-minus"
    summary = ("DARTS with an auxiliary skip on every edge whose weight decays linearly "
               "from 1 to 0.02, outside the architecture and the genotype")

    def supernet_options(self):
        return {"aux_skip": True}

    def on_epoch_start(self, epoch, model, training=None):
        model.set_aux_beta(aux_beta_at(epoch, self.config.epochs, self.config.aux_skip_beta))

    def describe(self):
        c = self.config
        return (f"auxiliary skip beta {c.aux_skip_beta} -> "
                f"{aux_beta_at(c.epochs - 1, c.epochs, c.aux_skip_beta):.4g}")
