"""Recompute without side effects: cell-level recomputation, frozen BN statistics, RNG replay.

`torch.utils.checkpoint` re-runs a block in backward, so every BatchNorm in it updates its
running statistics twice (`num_batches_tracked` doubles) and a dropout or noise op draws new
numbers unless the RNG is restored. Here a recompute runs with the block's BN statistics
frozen (training-mode BNs normalise with batch statistics, as in the first pass, but leave
their buffers alone) and with the RNG state of the first pass when the block draws random
numbers.

`recompute(module, fn, *args)` keeps only the tensor arguments of `fn` for backward and
returns the gradients of the arguments and of `module`'s parameters through autograd
Function outputs (not by accumulating `.grad` inside backward), so `torch.autograd.grad`
and DistributedDataParallel's reducer see them as usual. Mixed ops run inside a recompute
keep their bodies' graphs (`fast`), since the cell as a whole keeps nothing.
"""
from __future__ import annotations

import contextlib
import threading
import types
from typing import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["recompute", "frozen_bn_stats", "is_recomputing", "module_uses_rng", "RngState",
           "enable_cell_recompute"]

_state = threading.local()


def is_recomputing() -> bool:
    """True inside the backward recomputation of a `recompute` block."""
    return getattr(_state, "depth", 0) > 0


@contextlib.contextmanager
def _recomputing():
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        yield
    finally:
        _state.depth -= 1


@contextlib.contextmanager
def frozen_bn_stats(module: nn.Module):
    """Training-mode BNs of `module` use batch statistics without updating running ones."""
    frozen = [m for m in module.modules()
              if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
    for m in frozen:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in frozen:
            m.track_running_stats = True


_RNG_MODULES = (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout)


def module_uses_rng(module: nn.Module) -> bool:
    """Whether a forward of `module` draws random numbers (dropout, the S4 noise op)."""
    return any(isinstance(m, _RNG_MODULES) or "Noise" in type(m).__name__
               for m in module.modules())


class RngState:
    """The CPU and (for CUDA inputs) the device RNG state, to replay random ops."""

    def __init__(self, cpu, device, cuda):
        self.cpu, self.device, self.cuda = cpu, device, cuda

    @classmethod
    def capture(cls, device: torch.device) -> "RngState":
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), device, cuda)

    @staticmethod
    @contextlib.contextmanager
    def restored(state: "RngState | None"):
        """Run with `state` set, leaving the caller's RNG stream as it was."""
        if state is None:
            yield
            return
        devices = [state.device] if state.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(state.cpu)
            if state.cuda is not None:
                torch.cuda.set_rng_state(state.cuda, state.device)
            yield


class _RecomputeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, module, rng, n_args, *tensors_and_params):
        args = tensors_and_params[:n_args]
        ctx.run, ctx.module, ctx.n_args = run, module, n_args
        ctx.rng = RngState.capture(args[0].device) if rng else None
        with torch.no_grad():
            out = run(*args)
        ctx.save_for_backward(*args)
        return out

    @staticmethod
    def backward(ctx, g):
        args = ctx.saved_tensors
        n = ctx.n_args
        params = [p for p in ctx.module.parameters() if p.requires_grad]
        need = ctx.needs_input_grad[4:]
        with torch.enable_grad(), frozen_bn_stats(ctx.module), _recomputing(), \
                RngState.restored(ctx.rng):
            detached = [a.detach().requires_grad_(need[i]) for i, a in enumerate(args)]
            out = ctx.run(*detached)
        inputs = [a for a in detached if a.requires_grad] + params
        got = iter(torch.autograd.grad(out, inputs, g, allow_unused=True) if inputs else ())
        arg_grads = [next(got) if a.requires_grad else None for a in detached]
        param_grads = [next(got) for _ in params]
        return (None, None, None, None, *arg_grads, *param_grads)


def recompute(module: nn.Module, fn: Callable, *args):
    """`fn(*args)` (a forward of `module`) keeping only the tensor `args` for backward.

    Non-tensor arguments are passed through unchanged. Without grad mode, or when nothing
    needs a gradient, it is a plain call.
    """
    params = [p for p in module.parameters() if p.requires_grad]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not torch.is_grad_enabled() or is_recomputing() or not (
            params or any(t.requires_grad for t in tensors)):
        return fn(*args)
    slots = [isinstance(a, torch.Tensor) for a in args]

    def run(*ts):
        it = iter(ts)
        return fn(*[next(it) if s else a for s, a in zip(slots, args)])

    return _RecomputeFunction.apply(run, module, module_uses_rng(module), len(tensors),
                                    *tensors, *params)


def _recomputed_forward(self, *args):
    return recompute(self, type(self).forward.__get__(self), *args)


def enable_cell_recompute(cell: nn.Module) -> nn.Module:
    """Make `cell` (any module returning one tensor) keep only its inputs for backward.

    Installs an instance-level `forward`; the class, submodules and `state_dict` are
    unchanged. Undo with `del cell.forward`.
    """
    cell.forward = types.MethodType(_recomputed_forward, cell)
    return cell
