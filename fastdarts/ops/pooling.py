"""Average pooling whose CUDA backward is right for channels_last inputs.

PyTorch's CUDA `avg_pool2d` backward for channels_last inputs with padding > 0 returns
silently wrong input gradients (pytorch/pytorch#188344; seen here with torch 2.11 on an H100:
the DARTS `avg_pool_3x3` edge's input gradient off by 120%). Every DARTS-family search that
runs channels_last on a GPU hits it. `AvgPool2d` keeps the forward (which is right) and runs
the backward through the NCHW kernel, which is right, converting the gradient's layout
around it; on the CPU, for NCHW inputs and without padding it is plain `nn.AvgPool2d`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AvgPool2d", "avg_pool2d", "needs_nchw_backward"]


def needs_nchw_backward(x: torch.Tensor, padding) -> bool:
    pads = (padding, padding) if isinstance(padding, int) else tuple(padding)
    return (x.is_cuda and any(p > 0 for p in pads) and x.dim() == 4 and not x.is_contiguous()
            and torch.is_grad_enabled() and x.requires_grad)


class _AvgPoolNCHWBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                divisor_override):
        ctx.args = (kernel_size, stride, padding, ceil_mode, count_include_pad,
                    divisor_override)
        ctx.input_shape, ctx.input_dtype = x.shape, x.dtype
        ctx.input_format = (torch.channels_last if x.is_contiguous(
            memory_format=torch.channels_last) else torch.contiguous_format)
        return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override)

    @staticmethod
    def backward(ctx, g):
        # The backward reads only the input's shape, not its values: nothing is saved.
        shape_only = g.new_empty(ctx.input_shape, dtype=ctx.input_dtype)
        grad = torch.ops.aten.avg_pool2d_backward(g.contiguous(), shape_only, *ctx.args)
        return (grad.contiguous(memory_format=ctx.input_format),
                None, None, None, None, None, None)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False,
               count_include_pad=True, divisor_override=None):
    """`F.avg_pool2d` with a correct CUDA channels_last backward (see the module docstring)."""
    if stride is None or stride == []:
        stride = kernel_size
    if not needs_nchw_backward(x, padding):
        return F.avg_pool2d(x, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override)
    pair = (lambda v: [v, v] if isinstance(v, int) else list(v))
    return _AvgPoolNCHWBackward.apply(x, pair(kernel_size), pair(stride), pair(padding),
                                      ceil_mode, count_include_pad, divisor_override)


class AvgPool2d(nn.AvgPool2d):
    """`nn.AvgPool2d` (same arguments, no state) with a correct CUDA channels_last backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                          self.count_include_pad, self.divisor_override)
