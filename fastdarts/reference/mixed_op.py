"""Plain-PyTorch references of the fused mixed-op kernels (formulas in csrc/mixed_op.h).

`mixed_op_ref` is the whole edge as the original DARTS code computes it; the `bn_*_ref`
functions are the per-op kernel primitives, with the same signatures as the backends'. They
compute in the accumulation dtype (fp32, fp64 for fp64) and are what the tests trust. The
`bn_*_edge_ref` functions run every op of an edge in one call, as one launch set of the CUDA
kernels does: by definition the per-op primitive applied to each op in order (`op=` picks
the primitive, so a backend without edge kernels loops over its own).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["mixed_op_ref", "bn_stats_ref", "running_stats_update_ref", "bn_accumulate_ref",
           "bn_grad_reduce_ref", "bn_grad_input_ref", "bn_stats_edge_ref",
           "bn_accumulate_edge_ref", "bn_grad_reduce_edge_ref", "bn_grad_input_edge_ref",
           "acc_dtype"]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _c(v: torch.Tensor) -> torch.Tensor:
    return v[None, :, None, None]


def mixed_op_ref(x: torch.Tensor, weights: torch.Tensor, ops: Sequence[nn.Module]):
    """The original DARTS edge: `sum_k w_k * op_k(x)`."""
    return sum(w * op(x) for w, op in zip(weights, ops))


def bn_stats_ref(z: torch.Tensor, eps: float, running_mean=None, running_var=None,
                 num_batches_tracked=None, momentum: float = 0.1):
    zf = z.to(acc_dtype(z.dtype))
    mean = zf.mean(dim=(0, 2, 3))
    var = (zf - _c(mean)).square().mean(dim=(0, 2, 3))
    if running_mean is not None:
        running_stats_update_ref(running_mean, running_var, num_batches_tracked, mean, var,
                                 z.numel() // z.shape[1], momentum)
    return mean, var, torch.rsqrt(var + eps)


def running_stats_update_ref(running_mean, running_var, num_batches_tracked, mean, var,
                             count: int, momentum) -> None:
    """nn.BatchNorm2d's training update from the biased batch `var` over `count` values:
    `running = (1 - m) * running + m * (mean, unbiased var)`, `num_batches_tracked += 1`;
    momentum None: the cumulative average (m = 1 / num_batches_tracked, on the device)."""
    with torch.no_grad():
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)
        unbiased = var * (count / max(count - 1, 1))
        if momentum is None:
            f = 1.0 / num_batches_tracked.to(mean.dtype)
            running_mean.mul_(1 - f).add_((mean * f).to(running_mean.dtype))
            running_var.mul_(1 - f).add_((unbiased * f).to(running_var.dtype))
        else:
            running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            running_var.mul_(1 - momentum).add_(unbiased.to(running_var.dtype), alpha=momentum)


def _xhat(z, mean, rstd):
    zf = z.to(acc_dtype(z.dtype))
    return zf if mean is None else (zf - _c(mean)) * _c(rstd)


def bn_accumulate_ref(acc, z, w, k, mean, rstd, gamma, beta, init):
    val = _xhat(z, mean, rstd)
    if gamma is not None:
        val = val * _c(gamma)
    if beta is not None:
        val = val + _c(beta)
    val = w[k] * val
    if init:
        acc.copy_(val)
    else:
        acc.add_(val)


def bn_grad_reduce_ref(g, z, mean, rstd, gamma=None, beta=None, dw=None, k=0):
    """-> (sum g, sum g * xhat) per channel; with `dw` also writes the mixing-weight gradient
    dw[k] = sum_c gamma_c * sum_gx_c + beta_c * sum_g_c (gamma None: 1, beta None: 0)."""
    gf = g.to(acc_dtype(g.dtype))
    sum_g, sum_gx = gf.sum(dim=(0, 2, 3)), (gf * _xhat(z, mean, rstd)).sum(dim=(0, 2, 3))
    if dw is not None:
        total = (sum_gx if gamma is None else sum_gx * gamma).sum()
        if beta is not None:
            total = total + (sum_g * beta).sum()
        dw[k] = total
    return sum_g, sum_gx


def bn_grad_input_ref(g, z, w, k, mean, rstd, gamma, sum_g, sum_gx, batch_stats):
    gf = g.to(acc_dtype(g.dtype))
    a = w[k].expand(g.shape[1])
    if gamma is not None:
        a = a * gamma
    if rstd is not None:
        a = a * rstd
    dz = _c(a) * gf
    if batch_stats and mean is not None:
        count = g.numel() // g.shape[1]
        dz = dz - _c(a) * (_c(sum_g) + _xhat(z, mean, rstd) * _c(sum_gx)) / count
    return dz.to(g.dtype).contiguous(memory_format=_format_of(z))


def bn_stats_edge_ref(zs, eps, running_means, running_vars, num_batches_tracked, momenta,
                      op=bn_stats_ref):
    """-> ([mean_j], [var_j], [rstd_j]): (C,) per op."""
    rows = [op(*args) for args in zip(zs, eps, running_means, running_vars, num_batches_tracked,
                                      momenta)]
    return tuple(list(r) for r in zip(*rows))


def bn_accumulate_edge_ref(acc, zs, w, ks, means, rstds, gammas, betas, init,
                           op=bn_accumulate_ref):
    """acc (=|+=) the sum of every op's term, added in op order."""
    for j, args in enumerate(zip(zs, ks, means, rstds, gammas, betas)):
        z, k, mean, rstd, gamma, beta = args
        op(acc, z, w, k, mean, rstd, gamma, beta, init and j == 0)


def bn_grad_reduce_edge_ref(g, zs, means, rstds, gammas, betas, dw, ks, op=bn_grad_reduce_ref):
    """-> ([sum g], [sum g * xhat_j]): (C,) per op; with `dw` also every dw[k_j]."""
    rows = [op(g, *args, dw, k) for *args, k in zip(zs, means, rstds, gammas, betas, ks)]
    return tuple(list(r) for r in zip(*rows))


def bn_grad_input_edge_ref(g, zs, w, ks, means, rstds, gammas, sum_gs, sum_gxs, batch_stats,
                           op=bn_grad_input_ref):
    """-> [dz_j] in op order."""
    return [op(g, z, w, k, *args) for z, k, *args in
            zip(zs, ks, means, rstds, gammas, sum_gs, sum_gxs, batch_stats)]


def _format_of(t: torch.Tensor):
    if t.is_contiguous():
        return torch.contiguous_format
    return torch.channels_last
