"""Depthwise convolutions of the candidate ops, run with fastdarts's backward.

SepConv runs two depthwise convs per stage and DilConv one. On the CPU, PyTorch's backward of
a 5x5 or dilated depthwise conv takes 6 to 30 times its forward, and was three quarters of
the convolution backward time of a DARTS supernet step (csrc/depthwise_conv.h). The fused
edge's bodies (`fastdarts.plans`) therefore call `conv(module, x)`: the forward is PyTorch's,
the backward the `depthwise_conv_bwd` of the selected backend (the C++ kernel on the CPU;
PyTorch's own convolution backward on the reference and GPU backends). The module, its
parameters and `state_dict` are untouched; the plain `module(x)` runs instead whenever
something could tell the difference (hooks, autocast) or there is no gradient to take.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable
from torch.nn.modules import module as _module

from .backends import select_backend
from .reference.depthwise_conv import depthwise_conv_bwd_ref

__all__ = ["is_depthwise", "conv", "backward", "hooked"]

_KERNEL_DTYPES = (torch.float32, torch.float64)


def is_depthwise(m: nn.Module) -> bool:
    """A bias-free, zero-padded Conv2d with one filter per channel."""
    return (type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels
            and m.out_channels == m.in_channels and m.bias is None
            and m.padding_mode == "zeros" and not isinstance(m.padding, str))


class _DepthwiseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, stride, padding, dilation):
        ctx.geometry = (stride, padding, dilation)
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, None, stride, padding, dilation, x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        x, weight = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[:2]
        dx, dw = backward(g, x, weight, *ctx.geometry, need_x, need_w)
        return dx, dw, None, None, None


def backward(g, x, weight, stride, padding, dilation, need_x: bool, need_w: bool):
    """(dx, dweight) of `F.conv2d(x, weight, None, stride, padding, dilation, C)`: the
    backend's kernel for fp32/fp64 on the CPU, PyTorch's convolution backward otherwise."""
    if x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES and weight.dtype == x.dtype:
        return select_backend(x).depthwise_conv_bwd(g, x, weight, stride, padding, dilation,
                                                    need_x, need_w)
    return depthwise_conv_bwd_ref(g, x, weight, stride, padding, dilation, need_x, need_w)


def hooked(m: nn.Module) -> bool:
    """Whether a hook (the module's or a global one) would see `m`'s call."""
    return bool(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                or m._backward_pre_hooks or _module._global_forward_hooks
                or _module._global_forward_pre_hooks or _module._global_backward_hooks
                or _module._global_backward_pre_hooks)


def conv(m: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`m(x)` for a depthwise conv `m` (`is_depthwise(m)`), with the backend's backward."""
    w = m.weight
    if (x.device.type != "cpu" or x.dtype not in _KERNEL_DTYPES or w.dtype != x.dtype
            or not torch.is_grad_enabled() or not (x.requires_grad or w.requires_grad)
            or hooked(m) or torch.is_autocast_enabled("cpu")):
        return m(x)
    return _DepthwiseConvFunction.apply(x, w, m.stride, m.padding, m.dilation)
