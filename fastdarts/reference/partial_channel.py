"""Plain-PyTorch reference of the partial-channel combine (formulas in
csrc/partial_channel.h): PC-DARTS's cat + channel shuffle, written the original's way."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

__all__ = ["partial_channel_ref", "partial_combine_fwd_ref", "partial_combine_bwd_ref"]


def _fmt(t: torch.Tensor):
    channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


def _shuffle(t: torch.Tensor, K: int) -> torch.Tensor:
    N, C, H, W = t.shape
    return t.view(N, K, C // K, H, W).transpose(1, 2).reshape(N, C, H, W)


def partial_channel_ref(m: torch.Tensor, x: torch.Tensor, beta: Optional[torch.Tensor], K: int,
                        stride: int) -> torch.Tensor:
    """shuffle([m, beta * bypass(x)]): differentiable in m, x and beta."""
    P = x.shape[1] // K
    bypass = x[:, P:] if stride == 1 else F.max_pool2d(x[:, P:], 2, 2)
    if beta is not None:
        bypass = beta.to(bypass.dtype) * bypass
    return _shuffle(torch.cat([m, bypass], dim=1), K)


def partial_combine_fwd_ref(out, m, x, beta, K: int, stride: int, accumulate: bool):
    y = partial_channel_ref(m, x, beta, K, stride)
    if out is None:
        return y.contiguous(memory_format=_fmt(m))
    with torch.no_grad():
        if accumulate:
            out.add_(y)
        else:
            out.copy_(y)
    return out


def partial_combine_bwd_ref(g, x, beta, K: int, stride: int):
    """(g_m, dx, dbeta) by autograd through the reference; dbeta is 0 without beta."""
    P = x.shape[1] // K
    H, W = g.shape[2:]
    with torch.enable_grad():
        m = torch.zeros(x.shape[0], P, H, W, dtype=x.dtype, device=x.device,
                        requires_grad=True)
        xx = x.detach().requires_grad_()
        bb = None if beta is None else beta.detach().requires_grad_()
        y = partial_channel_ref(m, xx, bb, K, stride)
        ins = [m, xx] + ([bb] if bb is not None else [])
        got = torch.autograd.grad(y, ins, g)
    dbeta = got[2] if bb is not None else torch.zeros((), dtype=g.dtype, device=g.device)
    return (got[0].contiguous(memory_format=_fmt(g)),
            got[1].contiguous(memory_format=_fmt(x)), dbeta.reshape(()))
