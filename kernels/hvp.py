"""Triton twin of the finite-difference HVP kernels (formulas in csrc/hvp.h).

Flat contiguous buffers; loads upcast to fp32, offsets int64. eps = r / ||v|| is computed by
every program from the device-side squared norm: no host synchronisation. The norm writes one
partial per program, summed in order by torch: deterministic, no atomics.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["hvp_virtual_step", "hvp_sq_norm", "hvp_perturb", "hvp_combine"]

BLOCK = 1024


@triton.jit
def _offsets(n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    return offs, offs < n


@triton.jit
def _epsilon(Sq_ptr, r):
    sq = tl.load(Sq_ptr).to(tl.float32)
    return tl.where(sq > 0.0, r / tl.sqrt(tl.maximum(sq, 1e-38)), r)


@triton.jit
def _virtual_step_kernel(W, G, M, Out, n, lr, mu, wd, HAS_M: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    d = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32) + wd * w
    if HAS_M:
        d = mu * tl.load(M + offs, mask=mask, other=0.0).to(tl.float32) + d
    tl.store(Out + offs, (w - lr * d).to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _sq_partial_kernel(V, Partials, n, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    v = tl.load(V + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Partials + tl.program_id(0), tl.sum(v * v, axis=0))


@triton.jit
def _perturb_kernel(W, V, Sq, Out, n, r, sign, BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    step = sign * _epsilon(Sq, r)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(V + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Out + offs, (w + step * v).to(Out.dtype.element_ty), mask=mask)


@triton.jit
def _combine_kernel(GVal, GPlus, GMinus, Sq, Out, n, r, scale, HAS_VAL: tl.constexpr,
                    BLOCK: tl.constexpr):
    offs, mask = _offsets(n, BLOCK)
    # Divide by (2 eps), parenthesised: `/ 2 * eps` multiplies by eps (a bug shipped before).
    two_eps = 2.0 * _epsilon(Sq, r)
    gp = tl.load(GPlus + offs, mask=mask, other=0.0).to(tl.float32)
    gm = tl.load(GMinus + offs, mask=mask, other=0.0).to(tl.float32)
    out = scale * ((gp - gm) / two_eps)
    if HAS_VAL:
        out = tl.load(GVal + offs, mask=mask, other=0.0).to(tl.float32) + out
    tl.store(Out + offs, out.to(Out.dtype.element_ty), mask=mask)


def _grid(n: int):
    return (max(1, triton.cdiv(n, BLOCK)),)


def hvp_virtual_step(out, w, g, m, lr, momentum, weight_decay):
    n = w.numel()
    _virtual_step_kernel[_grid(n)](w, g, w if m is None else m, out, n, float(lr),
                                   float(momentum), float(weight_decay), HAS_M=m is not None,
                                   BLOCK=BLOCK)


def hvp_sq_norm(v):
    n = v.numel()
    partials = torch.empty(_grid(n)[0], device=v.device, dtype=torch.float32)
    _sq_partial_kernel[_grid(n)](v, partials, n, BLOCK=BLOCK)
    return partials.sum().reshape(1)


def hvp_perturb(out, w, v, sq_norm, r, sign):
    n = w.numel()
    _perturb_kernel[_grid(n)](w, v, sq_norm, out, n, float(r), float(sign), BLOCK=BLOCK)


def hvp_combine(g_val, g_plus, g_minus, sq_norm, r, scale):
    n = g_plus.numel()
    out = torch.empty_like(g_plus)
    _combine_kernel[_grid(n)](g_plus if g_val is None else g_val, g_plus, g_minus, sq_norm,
                              out, n, float(r), float(scale), HAS_VAL=g_val is not None,
                              BLOCK=BLOCK)
    return out
