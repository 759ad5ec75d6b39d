from __future__ import annotations

import torch

__all__ = ["weighted_sum_ref"]


def weighted_sum_ref(ys: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`sum_k weights[k] * ys[k]`: ys (K, *shape), weights (K,) -> (*shape)."""
    w = weights.to(ys.dtype).view(-1, *([1] * (ys.dim() - 1)))
    return (w * ys).sum(dim=0)
