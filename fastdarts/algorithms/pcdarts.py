"""PC-DARTS (Xu et al., 2020; ALGORITHMS.md §2.2): DARTS first order on a supernet whose edges
see only 1/K of the channels (`fastdarts.PartialMixedOp`), with edge-normalisation betas
trained next to the alphas, an architecture warm-up, and the derivation on alpha x beta (the
supernet's `genotype` applies it). The update rule is DARTS's; what differs is in the
defaults and in the supernet, which `run_search` builds with `partial_k`."""
from __future__ import annotations

from .darts import DARTS

__all__ = ["PCDARTS"]


class PCDARTS(DARTS):
    name = "pcdarts"
    #: PC-DARTS's CIFAR defaults (ALGORITHMS.md §3.1); a data-set preset or an explicit value
    #: takes precedence.
    DEFAULTS = {"lr": 0.1, "lr_min": 0.0, "batch_size": 256, "arch_lr": 6e-4, "partial_k": 4}
    #: ImageNet: K = 2 (its other settings are the data-set preset's, `DATASET_PRESETS`)
    DATASET_DEFAULTS = {"imagenet": {"partial_k": 2}}
    #: alpha and beta stay fixed for the first 15 of 50 epochs (35 of 50 on ImageNet);
    #: shorter runs keep the ratio.
    WARMUP_EPOCHS, WARMUP_OF = 15, 50
    IMAGENET_WARMUP_EPOCHS = 35

    summary = ("DARTS first order on partial-channel edges (1/K of the channels, shuffled) "
               "with edge-normalisation betas and an architecture warm-up")

    @classmethod
    def default_warmup(cls, values: dict) -> int:
        warm = (cls.IMAGENET_WARMUP_EPOCHS if values["dataset"] == "imagenet"
                else cls.WARMUP_EPOCHS)
        return round(warm * values["epochs"] / cls.WARMUP_OF)
