"""Widening partial-channel edges at run time (DrNAS progressive learning, ALGORITHMS.md
§2.5): `wider(model, k)` turns every `PartialMixedOp` of `model`, and every partial-channel
mixed op of a patched model (one with an int `k`, as DrNAS's own has), from C/K_old to
C/k channels.

Net2Wider without rescaling, as DrNAS does: new channel j of an op copies old channel idx[j],
with idx[j] = j for the old channels and a random old channel for each new one; conv
filters, depthwise filters, biases and BN affine parameters and running statistics follow
idx. A FactorizedReduce keeps its two halves: each half widens with its own mapping. The new
input channels of each op are the edge's previously bypassed channels, initialised the same
way. An optimiser's parameters and per-parameter state (momentum buffers, Adam moments) are
carried over through the same mappings, so training continues where it was.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .ops.darts import is_factorized_reduce
from .structure import invalidate_caches

__all__ = ["wider", "Widened"]

#: (old parameter, new parameter, the map from a tensor shaped like the old one to the new)
Widened = tuple[nn.Parameter, nn.Parameter, Callable[[torch.Tensor], torch.Tensor]]


def _mapping(old: int, new: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    extra = torch.randint(old, (new - old,), generator=generator)
    return torch.cat([torch.arange(old), extra])


def _indexer(dims: list[tuple[int, torch.Tensor]]) -> Callable[[torch.Tensor], torch.Tensor]:
    def apply(t: torch.Tensor) -> torch.Tensor:
        for dim, idx in dims:
            t = t.index_select(dim, idx.to(t.device))
        return t.contiguous(memory_format=torch.channels_last) if (
            t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
            and not t.is_contiguous()) else t
    return apply


def _replace(module: nn.Module, name: str, fn, out: list) -> None:
    old = getattr(module, name)
    if old is None:
        return
    if isinstance(old, nn.Parameter):
        new = nn.Parameter(fn(old.detach()), requires_grad=old.requires_grad)
        setattr(module, name, new)
        out.append((old, new, fn))
    else:
        setattr(module, name, fn(old))


def _widen_conv(conv: nn.Conv2d, out_idx, in_idx, out: list) -> None:
    dims = []
    if out_idx is not None:
        dims.append((0, out_idx))
        conv.out_channels = len(out_idx)
    if conv.groups > 1:  # depthwise: one input channel per group, widened with the output
        if conv.groups != conv.in_channels or in_idx is None:
            raise ValueError(f"wider: cannot widen a grouped conv that is not depthwise "
                             f"({conv})")
        conv.groups = conv.in_channels = len(in_idx)
    elif in_idx is not None:
        dims.append((1, in_idx))
        conv.in_channels = len(in_idx)
    _replace(conv, "weight", _indexer(dims), out)
    if conv.bias is not None and out_idx is not None:
        _replace(conv, "bias", _indexer([(0, out_idx)]), out)


def _widen_bn(bn: nn.BatchNorm2d, idx, out: list) -> None:
    fn = _indexer([(0, idx)])
    for name in ("weight", "bias", "running_mean", "running_var"):
        _replace(bn, name, fn, out)
    bn.num_features = len(idx)


def _widen_ops(ops: nn.Module, old: int, new: int, generator) -> list[Widened]:
    idx = _mapping(old, new, generator)
    out: list[Widened] = []
    done: set[int] = set()
    for m in ops.modules():
        if id(m) in done:
            continue
        if is_factorized_reduce(m):
            half = _mapping(old // 2, new // 2, generator)
            for conv in (m.conv_1, m.conv_2):
                _widen_conv(conv, half, idx, out)
            _widen_bn(m.bn, torch.cat([half, old // 2 + half]), out)
            done.update(id(s) for s in m.modules())
        elif isinstance(m, nn.Conv2d):
            _widen_conv(m, idx if m.out_channels == old else None,
                        idx if m.in_channels == old else None, out)
        elif isinstance(m, nn.BatchNorm2d) and m.num_features == old:
            _widen_bn(m, idx, out)
    return out


def _carry_optimizer(optimizer: torch.optim.Optimizer, widened: list[Widened]) -> None:
    new_of = {id(old): (new, fn) for old, new, fn in widened}
    for group in optimizer.param_groups:
        group["params"] = [new_of[id(p)][0] if id(p) in new_of else p for p in group["params"]]
    for old, new, fn in widened:
        state = optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[new] = {
                k: fn(v) if isinstance(v, torch.Tensor) and v.shape == old.shape else v
                for k, v in state.items()}


def wider(model: nn.Module, k: int, optimizer: Optional[torch.optim.Optimizer] = None,
          generator: Optional[torch.Generator] = None) -> list[Widened]:
    """Set K = k on every `PartialMixedOp` in `model` (k must divide C and be <= the current
    K): its ops are widened to C/k channels (module docstring). With `optimizer`, its
    parameter lists and state follow. Returns the (old, new, map) triples of the replaced
    parameters."""
    from .partial import PartialMixedOp, _check_partition
    from .patch import patched_partial_width

    widened: list[Widened] = []
    for name, m in model.named_modules():
        if isinstance(m, PartialMixedOp):
            C, k_old = m.C, m.k
        else:
            width = patched_partial_width(m, name)
            if width is None:
                continue
            k_old = m.k
            C = width * k_old
        if k_old == k:
            continue
        _check_partition(C, k)
        if k > k_old:
            raise ValueError(f"k: wider() only widens (fewer partitions); {name or 'the model'} "
                             f"has k={k_old}, got {k}")
        old, new = C // k_old, C // k
        if any(is_factorized_reduce(s) for s in m._ops.modules()) and new % 2:
            raise ValueError(f"k: a reduction edge's FactorizedReduce needs an even width; "
                             f"C/k = {new}")
        widened += _widen_ops(m._ops, old, new, generator)
        m.k = k
    invalidate_caches()
    if optimizer is not None:
        _carry_optimizer(optimizer, widened)
    return widened
