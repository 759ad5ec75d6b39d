"""Strided 1x1 convolution whose CPU weight gradient is right for channels_last inputs.

oneDNN's 1x1 backward-weights kernel for a strided convolution first gathers the strided
input into a workspace ("rtus"); for NHWC inputs with fewer input channels than its block
(8 with AVX2, 16 with AVX-512) it writes past that workspace (oneDNN issue 6035, open;
PyTorch 2.13's CPU build). With one thread that corrupts the heap and the process aborts
in `free()`; with more it returns wrong weight gradients (off by 20x here) that change from
run to run. DARTS's FactorizedReduce is exactly that convolution, and a partial-channel
search (PC-DARTS, DrNAS: C/K = 4 channels) on the CPU in channels_last hits it every step.

A 1x1 convolution without padding reads only the pixels its stride lands on, so on the CPU
`conv(x)` runs as the stride-1 convolution of `x[:, :, ::s, ::s]`, the same function, which
takes another oneDNN kernel; its input gradient is scattered back to those pixels. GPUs keep
the strided convolution (one kernel fewer: the step there is bound by kernel launches).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["subsamples_first", "subsample", "unsubsample", "strided_pointwise_conv"]


def subsamples_first(x: torch.Tensor, weight: torch.Tensor, stride, padding,
                     weight_grad: bool) -> bool:
    """Whether this convolution's weight gradient must come from the subsampled input."""
    return (weight_grad and x.device.type == "cpu" and tuple(weight.shape[-2:]) == (1, 1)
            and tuple(stride) != (1, 1) and tuple(padding) == (0, 0))


def subsample(x: torch.Tensor, stride) -> torch.Tensor:
    return x[:, :, ::stride[0], ::stride[1]]


def unsubsample(g: torch.Tensor, like: torch.Tensor, stride) -> torch.Tensor:
    """The gradient of `like` whose subsample (`subsample(like, stride)`) got gradient `g`."""
    out = torch.zeros_like(like, dtype=g.dtype)
    subsample(out, stride).copy_(g)
    return out


def strided_pointwise_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """`conv(x)` for a 1x1 convolution, its CPU weight gradient right (module docstring)."""
    if not subsamples_first(x, conv.weight, conv.stride, conv.padding,
                            torch.is_grad_enabled() and conv.weight.requires_grad):
        return conv(x)
    return F.conv2d(subsample(x, conv.stride), conv.weight, conv.bias, 1, 0, conv.dilation,
                    conv.groups)
