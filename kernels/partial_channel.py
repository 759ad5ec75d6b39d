"""Triton twin of the partial-channel combine (formulas in csrc/partial_channel.h).

Tensors are addressed through their element strides (any layout); the element loop follows
out's (g's) memory order. Loads upcast to fp32, offsets are int64. dbeta: one partial per
program, summed in order by torch: deterministic, no atomics, no host synchronisation.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["partial_combine_fwd", "partial_combine_bwd"]

BLOCK = 1024


@triton.jit
def _decompose(i, C, H, W, CHANNELS_LAST: tl.constexpr):
    if CHANNELS_LAST:
        o = i % C
        r = i // C
        w = r % W
        r = r // W
        h = r % H
        n = r // H
    else:
        w = i % W
        r = i // W
        h = r % H
        r = r // H
        o = r % C
        n = r // C
    return n, o, h, w


@triton.jit
def _bypass(X, n, c, h, w, sx0, sx1, sx2, sx3, mask, STRIDE2: tl.constexpr):
    """(offset, value) of the bypass: x itself, or the 2x2 window's first maximum."""
    if STRIDE2:
        best = n * sx0 + c * sx1 + (2 * h) * sx2 + (2 * w) * sx3
        best_v = tl.load(X + best, mask=mask, other=0.0).to(tl.float32)
        for k in tl.static_range(1, 4):
            off = n * sx0 + c * sx1 + (2 * h + k // 2) * sx2 + (2 * w + k % 2) * sx3
            v = tl.load(X + off, mask=mask, other=0.0).to(tl.float32)
            take = ((v > best_v) | (v != v)) & (best_v == best_v)  # first max; NaN wins, stays
            best = tl.where(take, off, best)
            best_v = tl.where(take, v, best_v)
        return best, best_v
    off = n * sx0 + c * sx1 + h * sx2 + w * sx3
    return off, tl.load(X + off, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _fwd_kernel(Out, M, X, Beta, total, C, K, P, H, W, so0, so1, so2, so3, sm0, sm1, sm2, sm3,
                sx0, sx1, sx2, sx3, HAS_BETA: tl.constexpr, ACCUMULATE: tl.constexpr,
                CHANNELS_LAST: tl.constexpr, STRIDE2: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < total
    n, o, h, w = _decompose(i, C, H, W, CHANNELS_LAST)
    c = (o % K) * P + o // K
    is_m = c < P
    mv = tl.load(M + n * sm0 + c * sm1 + h * sm2 + w * sm3, mask=mask & is_m,
                 other=0.0).to(tl.float32)
    _, bv = _bypass(X, n, c, h, w, sx0, sx1, sx2, sx3, mask & (c >= P), STRIDE2)
    if HAS_BETA:
        bv = bv * tl.load(Beta).to(tl.float32)
    v = tl.where(is_m, mv, bv)
    off = n * so0 + o * so1 + h * so2 + w * so3
    if ACCUMULATE:
        v += tl.load(Out + off, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + off, v.to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(G, X, GM, DX, Beta, Part, total, C, K, P, H, W, sg0, sg1, sg2, sg3, sm0, sm1,
                sm2, sm3, sx0, sx1, sx2, sx3, HAS_BETA: tl.constexpr,
                CHANNELS_LAST: tl.constexpr, STRIDE2: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    i = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = i < total
    n, o, h, w = _decompose(i, C, H, W, CHANNELS_LAST)
    c = (o % K) * P + o // K
    is_m = c < P
    gv = tl.load(G + n * sg0 + o * sg1 + h * sg2 + w * sg3, mask=mask, other=0.0)
    tl.store(GM + n * sm0 + c * sm1 + h * sm2 + w * sm3, gv, mask=mask & is_m)
    by = mask & (c >= P)
    src, xv = _bypass(X, n, c, h, w, sx0, sx1, sx2, sx3, by, STRIDE2)
    g32 = gv.to(tl.float32)
    scaled = g32
    if HAS_BETA:
        scaled = g32 * tl.load(Beta).to(tl.float32)
    tl.store(DX + src, scaled.to(DX.dtype.element_ty), mask=by)
    tl.store(Part + pid, tl.sum(tl.where(by, g32 * xv, 0.0), axis=0))


def _channels_last(t: torch.Tensor) -> bool:
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def _out_size(x, stride):
    H, W = x.shape[2:]
    return (H, W) if stride == 1 else (H // 2, W // 2)


def partial_combine_fwd(out, m, x, beta, K, stride, accumulate):
    N, C = x.shape[:2]
    H, W = _out_size(x, stride)
    if out is None:
        fmt = torch.channels_last if _channels_last(m) else torch.contiguous_format
        out = torch.empty((N, C, H, W), device=m.device, dtype=m.dtype, memory_format=fmt)
    total = out.numel()
    _fwd_kernel[(triton.cdiv(total, BLOCK),)](
        out, m, x, x if beta is None else beta, total, C, K, C // K, H, W, *out.stride(),
        *m.stride(), *x.stride(), HAS_BETA=beta is not None, ACCUMULATE=accumulate,
        CHANNELS_LAST=_channels_last(out), STRIDE2=stride == 2, BLOCK=BLOCK)
    return out


def partial_combine_bwd(g, x, beta, K, stride):
    N, C, H, W = g.shape
    P = C // K
    fmt_g = torch.channels_last if _channels_last(g) else torch.contiguous_format
    g_m = torch.empty((N, P, H, W), device=g.device, dtype=g.dtype, memory_format=fmt_g)
    # addressed with x's strides: the same strides exactly, size-1 dims too
    dx = torch.empty_strided(x.shape, x.stride(), device=x.device, dtype=x.dtype).zero_()
    total = g.numel()
    programs = triton.cdiv(total, BLOCK)
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    part = torch.empty(programs, device=g.device, dtype=torch.float32)
    _bwd_kernel[(programs,)](
        g, x, g_m, dx, x if beta is None else beta, part, total, C, K, P, H, W, *g.stride(),
        *g_m.stride(), *x.stride(), HAS_BETA=beta is not None, CHANNELS_LAST=_channels_last(g),
        STRIDE2=stride == 2, BLOCK=BLOCK)
    return g_m, dx, part.sum().to(acc)
