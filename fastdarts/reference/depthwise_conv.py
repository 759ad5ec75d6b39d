"""Plain-PyTorch reference of the depthwise-convolution backward (csrc/depthwise_conv.h)."""
from __future__ import annotations

import torch

__all__ = ["depthwise_conv_bwd_ref"]


def depthwise_conv_bwd_ref(g, x, weight, stride, padding, dilation, need_dx, need_dweight):
    """-> (dx or None, dweight or None) of `F.conv2d(x, weight, None, stride, padding,
    dilation, groups=C)` given the output gradient g: PyTorch's own convolution backward."""
    dx, dw, _ = torch.ops.aten.convolution_backward(
        g, x, weight, None, list(stride), list(padding), list(dilation), False, [0, 0],
        x.shape[1], [need_dx, need_dweight, False])
    return dx, dw
