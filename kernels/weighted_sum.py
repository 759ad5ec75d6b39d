"""Triton twin of the weighted-sum kernels (formulas in csrc/weighted_sum.h).

    forward:  out[m]   = sum_k w[k] * y[k, m]
    backward: dy[k, m] = w[k] * g[m];   dw[k] = sum_m g[m] * y[k, m]

Loads upcast to fp32; offsets are int64. The dw reduction writes one partial per
(k, program) and sums them with a fixed-order torch reduction: deterministic.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["weighted_sum_fwd", "weighted_sum_bwd"]

BLOCK = 1024


@triton.jit
def _weighted_sum_fwd_kernel(
    Y_ptr,          # (K, M) stacked inputs
    W_ptr,          # (K,) fp32 weights
    Out_ptr,        # (M,) output
    K,              # number of inputs
    M,              # elements per input
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < M
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k in range(K):
        w = tl.load(W_ptr + k).to(tl.float32)
        y = tl.load(Y_ptr + k * M + offs, mask=mask, other=0.0).to(tl.float32)
        acc += w * y
    tl.store(Out_ptr + offs, acc.to(Out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _weighted_sum_bwd_kernel(
    Y_ptr,          # (K, M) stacked inputs
    W_ptr,          # (K,) fp32 weights
    G_ptr,          # (M,) upstream gradient
    DY_ptr,         # (K, M) gradient of y (unused when not NEED_DY)
    Partials_ptr,   # (K, num_programs) fp32 partial sums of dw
    K,
    M,
    num_programs,
    NEED_DY: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < M
    g = tl.load(G_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for k in range(K):
        y = tl.load(Y_ptr + k * M + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(Partials_ptr + k * num_programs + pid, tl.sum(g * y, axis=0))
        if NEED_DY:
            w = tl.load(W_ptr + k).to(tl.float32)
            tl.store(DY_ptr + k * M + offs, (w * g).to(DY_ptr.dtype.element_ty), mask=mask)


def weighted_sum_fwd(y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """y (K, M) contiguous, w (K,) fp32 -> out (M,) in y's dtype."""
    K, M = y.shape
    out = torch.empty(M, device=y.device, dtype=y.dtype)
    grid = (triton.cdiv(M, BLOCK),)
    _weighted_sum_fwd_kernel[grid](y, w, out, K, M, BLOCK=BLOCK)
    return out


def weighted_sum_bwd(y: torch.Tensor, w: torch.Tensor, g: torch.Tensor, need_dy: bool):
    """Returns (dy or None, dw fp32 (K,))."""
    K, M = y.shape
    n = triton.cdiv(M, BLOCK)
    partials = torch.empty((K, n), device=y.device, dtype=torch.float32)
    dy = torch.empty_like(y) if need_dy else partials  # dummy pointer when unused
    _weighted_sum_bwd_kernel[(n,)](y, w, g, dy, partials, K, M, n, NEED_DY=need_dy,
                                   BLOCK=BLOCK)
    return (dy if need_dy else None), partials.sum(dim=1)
