"""`weighted_sum(ys, weights)`: the edge sum `sum_k weights[k] * ys[k]` with the weight
gradient `sum(g * ys[k])` computed in the same backward pass, on the selected backend."""
from __future__ import annotations

import math

import torch

from .backends import select_backend

__all__ = ["weighted_sum", "WeightedSumFunction"]


class WeightedSumFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ys: torch.Tensor, weights: torch.Tensor, backend: str | None):
        K = ys.shape[0]
        acc = torch.float64 if ys.dtype == torch.float64 else torch.float32
        y2d = ys.reshape(K, -1).contiguous()
        w = weights.to(device=ys.device, dtype=acc).contiguous()
        impl = select_backend(y2d, w, backend=backend)
        out = impl.weighted_sum_fwd(y2d, w)
        ctx.impl, ctx.shape, ctx.weights_dtype = impl, ys.shape, weights.dtype
        ctx.weights_device = weights.device
        # Inside forward grad mode is off; ctx is simply dropped when no graph is built.
        ctx.save_for_backward(y2d, w)
        return out.view(ys.shape[1:])

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        y2d, w = ctx.saved_tensors
        g = grad_out.reshape(-1).contiguous().to(y2d.dtype)
        need_dy = ctx.needs_input_grad[0]
        dy, dw = ctx.impl.weighted_sum_bwd(y2d, w, g, need_dy)
        dys = dy.view(ctx.shape) if need_dy else None
        dweights = (dw.to(device=ctx.weights_device, dtype=ctx.weights_dtype)
                    if ctx.needs_input_grad[1] else None)
        return dys, dweights, None


def weighted_sum(ys: torch.Tensor, weights: torch.Tensor,
                 backend: str | None = None) -> torch.Tensor:
    """Weighted sum of K stacked tensors.

    Args:
        ys: (K, *shape) float32/float16/bfloat16/float64, e.g. the K op outputs of an edge.
        weights: (K,) mixing weights, already normalised by the caller (no softmax here);
            may live on another device; must be finite.
        backend: None (FASTDARTS_BACKEND or auto), 'triton', 'cuda', 'cpu' or 'reference'.

    Returns:
        (*shape) tensor in ys's dtype; accumulation is in float32 (float64 for float64).
        Gradients flow to `ys` (w_k * g) and `weights` (sum(g * ys[k]), accumulated in fp32).
    """
    if not isinstance(ys, torch.Tensor) or ys.dim() < 2:
        raise ValueError(f"ys must be a tensor (K, *shape) with at least 2 dims; got "
                         f"{getattr(ys, 'shape', type(ys))}")
    if not ys.is_floating_point():
        raise ValueError(f"ys must be a floating tensor; got {ys.dtype}")
    if weights.dim() != 1 or weights.shape[0] != ys.shape[0]:
        raise ValueError(f"weights must have shape ({ys.shape[0]},); got {tuple(weights.shape)}")
    if math.prod(ys.shape[1:]) == 0:
        raise ValueError(f"ys must not be empty; got shape {tuple(ys.shape)}")
    if not torch.isfinite(weights).all():  # host sync: a check for user input, not the hot path
        bad = (~torch.isfinite(weights)).nonzero().flatten().tolist()
        raise ValueError(f"weights must be finite; got non-finite values at {bad}")
    return WeightedSumFunction.apply(ys, weights, backend)
