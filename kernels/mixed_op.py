"""Triton twin of the fused mixed-op kernels (formulas in csrc/mixed_op.h).

Every activation is (N, C, H, W), contiguous in NCHW or channels_last; all activations of one
call share z's layout. Loads upcast to fp32, offsets are int64. Reductions write one partial
per (row chunk, channel) and merge the chunks in order: deterministic, no atomics, no host
synchronisation (chunk counts are computed inside the kernels).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["bn_stats", "bn_accumulate", "bn_grad_reduce", "bn_grad_input", "num_chunks"]

BLOCK_R = 64      # rows per reduction tile
BLOCK_C = 16      # channels per reduction tile
BLOCK = 1024      # elements per elementwise program
ROWS_PER_CHUNK = 2048


def num_chunks(rows: int) -> int:
    return max(1, min(512, triton.cdiv(rows, ROWS_PER_CHUNK)))


@triton.jit
def _tile_offsets(rows, cols, C, S, CHANNELS_LAST: tl.constexpr):
    n = rows // S
    s = rows - n * S
    if CHANNELS_LAST:
        return (n * S + s)[:, None] * C + cols[None, :]
    return (n * C * S + s)[:, None] + cols[None, :] * S


@triton.jit
def _stats_partial_kernel(Z, PartMean, PartM2, C, S, R, rows_per_chunk,
                          CHANNELS_LAST: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_C: tl.constexpr):
    q = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    cmask = cols < C
    begin = q * rows_per_chunk
    end = tl.minimum(begin + rows_per_chunk, R)
    total = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for r0 in range(begin, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        m = (rows < end)[:, None] & cmask[None, :]
        v = tl.load(Z + _tile_offsets(rows, cols, C, S, CHANNELS_LAST), mask=m, other=0.0)
        total += tl.sum(v.to(tl.float32), axis=0)
    count = tl.maximum(end - begin, 1).to(tl.float32)
    mean = total / count
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for r0 in range(begin, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        m = (rows < end)[:, None] & cmask[None, :]
        v = tl.load(Z + _tile_offsets(rows, cols, C, S, CHANNELS_LAST), mask=m, other=0.0)
        d = tl.where(m, v.to(tl.float32) - mean[None, :], 0.0)
        m2 += tl.sum(d * d, axis=0)
    tl.store(PartMean + q * C + cols, mean, mask=cmask)
    tl.store(PartM2 + q * C + cols, m2, mask=cmask)


@triton.jit
def _stats_finalize_kernel(PartMean, PartM2, Mean, Var, Rstd, RunMean, RunVar, Nbt, C, R,
                           rows_per_chunk, chunks, eps, momentum, unbias,
                           HAS_RUNNING: tl.constexpr, HAS_NBT: tl.constexpr,
                           BLOCK_C: tl.constexpr):
    cols = tl.program_id(0).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    cmask = cols < C
    count = tl.zeros((BLOCK_C,), dtype=tl.float32)
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for q in range(0, chunks):
        nb = (tl.minimum((q + 1) * rows_per_chunk, R) - q * rows_per_chunk).to(tl.float32)
        mb = tl.load(PartMean + q * C + cols, mask=cmask, other=0.0)
        m2b = tl.load(PartM2 + q * C + cols, mask=cmask, other=0.0)
        tot = count + nb
        delta = mb - mean
        mean += delta * (nb / tot)
        m2 += m2b + delta * delta * (count * nb / tot)
        count = tot
    var = m2 / count
    tl.store(Mean + cols, mean, mask=cmask)
    tl.store(Var + cols, var, mask=cmask)
    tl.store(Rstd + cols, 1.0 / tl.sqrt(var + eps), mask=cmask)
    if HAS_RUNNING:  # nn.BatchNorm2d's update, unbiased variance
        rm = tl.load(RunMean + cols, mask=cmask, other=0.0)
        rv = tl.load(RunVar + cols, mask=cmask, other=0.0)
        tl.store(RunMean + cols, (1.0 - momentum) * rm + momentum * mean, mask=cmask)
        tl.store(RunVar + cols, (1.0 - momentum) * rv + momentum * var * unbias, mask=cmask)
    if HAS_NBT:
        if tl.program_id(0) == 0:
            tl.store(Nbt, tl.load(Nbt) + 1)


@triton.jit
def _grad_reduce_kernel(G, Z, MeanP, RstdP, PartG, PartGX, C, S, R, rows_per_chunk,
                        HAS_NORM: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    q = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    cmask = cols < C
    begin = q * rows_per_chunk
    end = tl.minimum(begin + rows_per_chunk, R)
    if HAS_NORM:
        mean = tl.load(MeanP + cols, mask=cmask, other=0.0)
        rstd = tl.load(RstdP + cols, mask=cmask, other=1.0)
    else:
        mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
        rstd = tl.full((BLOCK_C,), 1.0, dtype=tl.float32)
    sg = tl.zeros((BLOCK_C,), dtype=tl.float32)
    sgx = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for r0 in range(begin, end, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R).to(tl.int64)
        m = (rows < end)[:, None] & cmask[None, :]
        offs = _tile_offsets(rows, cols, C, S, CHANNELS_LAST)
        g = tl.load(G + offs, mask=m, other=0.0).to(tl.float32)
        z = tl.load(Z + offs, mask=m, other=0.0).to(tl.float32)
        sg += tl.sum(g, axis=0)
        sgx += tl.sum(g * (z - mean[None, :]) * rstd[None, :], axis=0)
    tl.store(PartG + q * C + cols, sg, mask=cmask)
    tl.store(PartGX + q * C + cols, sgx, mask=cmask)


@triton.jit
def _grad_reduce_finalize_kernel(PartG, PartGX, SumG, SumGX, GammaP, BetaP, DW, k, C, chunks,
                                 HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
                                 HAS_DW: tl.constexpr, BLOCK_C: tl.constexpr):
    # Merges each channel's chunk partials in chunk order. With DW (one program) it also
    # forms dw[k] = sum_c gamma_c * sum_gx_c + beta_c * sum_g_c.
    pid = tl.program_id(0)
    dw = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for c0 in range(pid * BLOCK_C, C, tl.num_programs(0) * BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C).to(tl.int64)
        cmask = cols < C
        sg = tl.zeros((BLOCK_C,), dtype=tl.float32)
        sgx = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for q in range(0, chunks):
            sg += tl.load(PartG + q * C + cols, mask=cmask, other=0.0)
            sgx += tl.load(PartGX + q * C + cols, mask=cmask, other=0.0)
        tl.store(SumG + cols, sg, mask=cmask)
        tl.store(SumGX + cols, sgx, mask=cmask)
        if HAS_DW:
            term = sgx
            if HAS_GAMMA:
                term = term * tl.load(GammaP + cols, mask=cmask, other=0.0)
            if HAS_BETA:
                term += sg * tl.load(BetaP + cols, mask=cmask, other=0.0)
            dw += tl.where(cmask, term, 0.0)
    if HAS_DW:
        tl.store(DW + k, tl.sum(dw, axis=0))


@triton.jit
def _accumulate_kernel(Z, Acc, W, k, MeanP, RstdP, GammaP, BetaP, C, inner_c, numel,
                       HAS_NORM: tl.constexpr, HAS_GAMMA: tl.constexpr, HAS_BETA: tl.constexpr,
                       INIT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    c = (offs // inner_c) % C
    wk = tl.load(W + k).to(tl.float32)
    z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
    scale = tl.full((BLOCK,), 1.0, dtype=tl.float32) * wk
    if HAS_NORM:
        z = z - tl.load(MeanP + c, mask=mask, other=0.0)
        scale = scale * tl.load(RstdP + c, mask=mask, other=1.0)
    if HAS_GAMMA:
        scale = scale * tl.load(GammaP + c, mask=mask, other=1.0)
    val = z * scale
    if HAS_BETA:
        val += wk * tl.load(BetaP + c, mask=mask, other=0.0)
    if not INIT:
        val += tl.load(Acc + offs, mask=mask, other=0.0)
    tl.store(Acc + offs, val, mask=mask)


@triton.jit
def _grad_input_kernel(G, Z, DZ, W, k, MeanP, RstdP, GammaP, SumG, SumGX, C, inner_c, numel,
                       inv_count, HAS_NORM: tl.constexpr, HAS_GAMMA: tl.constexpr,
                       CENTRE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    mask = offs < numel
    c = (offs // inner_c) % C
    wk = tl.load(W + k).to(tl.float32)
    g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
    a = tl.full((BLOCK,), 1.0, dtype=tl.float32) * wk
    rstd = tl.full((BLOCK,), 1.0, dtype=tl.float32)
    if HAS_NORM:
        rstd = tl.load(RstdP + c, mask=mask, other=1.0)
        a = a * rstd
    if HAS_GAMMA:
        a = a * tl.load(GammaP + c, mask=mask, other=1.0)
    v = a * g
    if CENTRE:
        z = tl.load(Z + offs, mask=mask, other=0.0).to(tl.float32)
        xhat = (z - tl.load(MeanP + c, mask=mask, other=0.0)) * rstd
        sg = tl.load(SumG + c, mask=mask, other=0.0)
        sgx = tl.load(SumGX + c, mask=mask, other=0.0)
        v -= a * (sg + xhat * sgx) * inv_count
    tl.store(DZ + offs, v.to(DZ.dtype.element_ty), mask=mask)


def _layout(z: torch.Tensor):
    N, C, H, W = z.shape
    channels_last = not z.is_contiguous()
    return N, C, H * W, channels_last


def bn_stats(z: torch.Tensor, eps: float, running_mean=None, running_var=None,
             num_batches_tracked=None, momentum: float = 0.1):
    N, C, S, cl = _layout(z)
    R = N * S
    chunks = num_chunks(R)
    rpc = triton.cdiv(R, chunks)
    part = torch.empty((2, chunks, C), device=z.device, dtype=torch.float32)
    _stats_partial_kernel[(chunks, triton.cdiv(C, BLOCK_C))](
        z, part[0], part[1], C, S, R, rpc, CHANNELS_LAST=cl, BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C)
    out = torch.empty((3, C), device=z.device, dtype=torch.float32)
    has_running = running_mean is not None
    _stats_finalize_kernel[(triton.cdiv(C, BLOCK_C),)](
        part[0], part[1], out[0], out[1], out[2],
        running_mean if has_running else out, running_var if has_running else out,
        num_batches_tracked if num_batches_tracked is not None else out,
        C, R, rpc, chunks, eps, float(momentum), R / max(R - 1, 1),
        HAS_RUNNING=has_running, HAS_NBT=num_batches_tracked is not None, BLOCK_C=BLOCK_C)
    return out[0], out[1], out[2]


def bn_accumulate(acc, z, w, k, mean, rstd, gamma, beta, init):
    N, C, S, cl = _layout(z)
    numel = z.numel()
    dummy = w
    _accumulate_kernel[(triton.cdiv(numel, BLOCK),)](
        z, acc, w, k, dummy if mean is None else mean, dummy if rstd is None else rstd,
        dummy if gamma is None else gamma, dummy if beta is None else beta, C,
        1 if cl else S, numel, HAS_NORM=mean is not None, HAS_GAMMA=gamma is not None,
        HAS_BETA=beta is not None, INIT=init, BLOCK=BLOCK)


def bn_grad_reduce(g, z, mean, rstd, gamma=None, beta=None, dw=None, k=0):
    N, C, S, cl = _layout(z)
    R = N * S
    chunks = num_chunks(R)
    rpc = triton.cdiv(R, chunks)
    part = torch.empty((2, chunks, C), device=z.device, dtype=torch.float32)
    dummy = part
    _grad_reduce_kernel[(chunks, triton.cdiv(C, BLOCK_C))](
        g, z, dummy if mean is None else mean, dummy if rstd is None else rstd, part[0],
        part[1], C, S, R, rpc, HAS_NORM=mean is not None, CHANNELS_LAST=cl, BLOCK_R=BLOCK_R,
        BLOCK_C=BLOCK_C)
    sums = torch.empty((2, C), device=z.device, dtype=torch.float32)
    has_dw = dw is not None
    # One program when it also forms dw (a sum over all channels).
    grid = (1,) if has_dw else (triton.cdiv(C, BLOCK_C),)
    _grad_reduce_finalize_kernel[grid](
        part[0], part[1], sums[0], sums[1], dummy if gamma is None else gamma,
        dummy if beta is None else beta, dw if has_dw else dummy, k, C, chunks,
        HAS_GAMMA=gamma is not None, HAS_BETA=beta is not None, HAS_DW=has_dw,
        BLOCK_C=BLOCK_C)
    return sums[0], sums[1]


def bn_grad_input(g, z, w, k, mean, rstd, gamma, sum_g, sum_gx, batch_stats):
    N, C, S, cl = _layout(z)
    numel = z.numel()
    dz = torch.empty_like(z)
    dummy = w
    centre = batch_stats and mean is not None
    _grad_input_kernel[(triton.cdiv(numel, BLOCK),)](
        g, z, dz, w, k, dummy if mean is None else mean, dummy if rstd is None else rstd,
        dummy if gamma is None else gamma, sum_g if centre else dummy,
        sum_gx if centre else dummy, C, 1 if cl else S, numel, 1.0 / (N * S),
        HAS_NORM=mean is not None, HAS_GAMMA=gamma is not None, CENTRE=centre, BLOCK=BLOCK)
    return dz
