"""Flat parameter buffers: the parameters of one device and dtype as views into one buffer.

`FlatParameters(params)` moves the values of `params` into one contiguous buffer `.data`
and their gradients into another, `.grad`; each parameter's `.data` and `.grad` become views
into them, with the parameter's own strides (channels_last conv weights stay channels_last).
The parameters stay the same `nn.Parameter` objects, so optimisers, `state_dict`,
`load_state_dict` (an in-place copy) and hooks keep working, and a whole-model operation is
one kernel on the buffer: the virtual step and the perturbations of second-order DARTS
(`fastdarts.hvp`), or the gradient all-reduce of data-parallel training (one call).

What can break the views, and what `ensure()` (called before every use) does about it:
* `module.to(...)` / `.cuda()` / `.double()` give the parameters new tensors: the buffers are
  rebuilt from the parameters' current values (and device and dtype);
* `zero_grad(set_to_none=True)` or `p.grad = g` detach a gradient: it is re-attached (its
  value copied in when there was one).
Gradients keep landing in the buffer as long as `.grad` is a view when backward runs:
autograd accumulates into an existing `.grad` in place. Zero them with `zero_grad()` here,
and backpropagate with `loss.backward(inputs=params)` (not `torch.autograd.grad`, which
returns new tensors).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["FlatParameters"]


def _is_dense(t: torch.Tensor) -> bool:
    """Whether `t` covers exactly numel consecutive elements (contiguous in some dimension
    order, as NCHW and channels_last are)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride()) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


class FlatParameters:
    """Parameters of one device and dtype as views into one contiguous buffer.

    Args:
        params: the parameters (each a dense tensor: contiguous in some dimension order).
        name: what they are, for error messages ("weights", "architecture parameters").
    """

    def __init__(self, params: Iterable[nn.Parameter], name: str = "parameters"):
        self.params = list(params)
        self.name = name
        if not self.params:
            raise ValueError(f"FlatParameters: no {name} given")
        if len({id(p) for p in self.params}) != len(self.params):
            raise ValueError(f"FlatParameters: the {name} contain the same tensor twice")
        self.data: torch.Tensor
        self.grad: torch.Tensor
        self._build()

    # -- layout ----------------------------------------------------------------------------
    def _build(self) -> None:
        first = self.params[0]
        for i, p in enumerate(self.params):
            if p.device != first.device or p.dtype != first.dtype:
                raise ValueError(
                    f"FlatParameters: all {self.name} must share one device and dtype; "
                    f"{self.name}[0] is {first.dtype} on {first.device}, {self.name}[{i}] is "
                    f"{p.dtype} on {p.device}")
            if not _is_dense(p):
                raise ValueError(f"FlatParameters: {self.name}[{i}] (shape {tuple(p.shape)}, "
                                 f"strides {p.stride()}) is not dense")
        self.offsets = []
        total = 0
        for p in self.params:
            self.offsets.append(total)
            total += p.numel()
        self.numel = total
        self.data = torch.empty(total, device=first.device, dtype=first.dtype)
        self.grad = torch.zeros_like(self.data)
        self._grad_views = []
        with torch.no_grad():
            for p, off in zip(self.params, self.offsets):
                view = self._view(self.data, p, off)
                view.copy_(p.data)
                grad = self._view(self.grad, p, off)
                if p.grad is not None:
                    grad.copy_(p.grad)
                p.data = view
                p.grad = grad
                self._grad_views.append(grad)
        # Cheap checks per step (a walk over thousands of parameters): the value's address,
        # and the gradient's identity (autograd keeps accumulating into the same tensor).
        self._data_ptrs = [p.data_ptr() for p in self.params]
        self._momentum: torch.Tensor | None = None

    @staticmethod
    def _view(buffer: torch.Tensor, p: torch.Tensor, offset: int) -> torch.Tensor:
        # A dense tensor with any dimension order covers exactly numel consecutive elements.
        return buffer.as_strided(p.shape, p.stride(), buffer.storage_offset() + offset)

    def _is_view(self, t: torch.Tensor | None, buffer: torch.Tensor, offset: int) -> bool:
        return (t is not None and t.untyped_storage().data_ptr() ==
                buffer.untyped_storage().data_ptr() and
                t.storage_offset() == buffer.storage_offset() + offset)

    def views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        """A flat tensor of `numel` elements seen as one tensor per parameter."""
        if flat.dim() != 1 or flat.numel() != self.numel:
            raise ValueError(f"views: flat must be 1-D with {self.numel} elements; got shape "
                             f"{tuple(flat.shape)}")
        return [self._view(flat, p, off) for p, off in zip(self.params, self.offsets)]

    def _values_intact(self) -> bool:
        # The buffer is alive, so no other tensor can have these addresses.
        return all(p.data_ptr() == ptr and p.dtype == self.data.dtype
                   for p, ptr in zip(self.params, self._data_ptrs))

    def intact(self) -> bool:
        """Whether every parameter's value and gradient are still views into the buffers."""
        return self._values_intact() and all(
            p.grad is g for p, g in zip(self.params, self._grad_views))

    def ensure(self) -> "FlatParameters":
        """Re-attach detached gradients, and rebuild the buffers if a value moved."""
        if not self._values_intact():
            self._build()
            return self
        with torch.no_grad():
            for p, view in zip(self.params, self._grad_views):
                if p.grad is not view:
                    if p.grad is None:
                        view.zero_()
                    else:
                        view.copy_(p.grad)
                    p.grad = view
        return self

    # -- gradients -------------------------------------------------------------------------
    def zero_grad(self) -> None:
        """All gradients to zero in one kernel (views re-attached first)."""
        self.ensure()
        self.grad.zero_()

    def all_reduce_grad(self, group=None, average: bool = True) -> None:
        """Sum (or average) the gradients over the processes of `group`: one collective call
        on the whole buffer instead of one per parameter."""
        self.ensure()
        dist.all_reduce(self.grad, group=group)
        if average:
            self.grad.div_(dist.get_world_size(group))

    # -- optimiser state -------------------------------------------------------------------
    def momentum(self, optimizer: torch.optim.Optimizer) -> torch.Tensor | None:
        """The SGD momentum buffers of the parameters as one flat tensor (None before the
        first step), shared with the optimiser: its per-parameter buffers become views
        into it, which SGD updates in place. After `optimizer.load_state_dict` (new tensors)
        the buffers are adopted again. A parameter without a buffer gets zeros, which is
        what SGD's first step starts from when dampening is 0."""
        if not isinstance(optimizer, torch.optim.SGD):
            raise TypeError(f"momentum: optimizer must be torch.optim.SGD; got "
                            f"{type(optimizer).__name__}")
        bufs = [optimizer.state.get(p, {}).get("momentum_buffer") for p in self.params]
        if all(b is None for b in bufs):
            return None
        m = self._momentum
        if m is not None and all(self._is_view(b, m, off) for b, off in zip(bufs, self.offsets)):
            return m
        groups = {id(p): g for g in optimizer.param_groups for p in g["params"]}
        for i, p in enumerate(self.params):
            group = groups.get(id(p))
            if group is None:
                raise ValueError(f"momentum: {self.name}[{i}] is not in the optimiser")
            if bufs[i] is None and group.get("dampening", 0) != 0:
                raise ValueError("momentum: with dampening != 0 a missing momentum buffer "
                                 "cannot be represented by zeros")
        m = torch.zeros_like(self.data)
        with torch.no_grad():
            for p, b, off in zip(self.params, bufs, self.offsets):
                view = self._view(m, p, off)
                if b is not None:
                    view.copy_(b)
                optimizer.state[p]["momentum_buffer"] = view
        self._momentum = m
        return m
