"""DARTS CNN operations (Liu et al., 2019), as in the original `cnn/operations.py`.

Every op is built as `OPS[name](C, stride, affine)`. In the search supernet `affine=False`;
pools are then followed by a `BatchNorm2d(C, affine=False)` added by the mixed op, not here.
"""
from __future__ import annotations

import torch
from torch import nn

from fastdarts.ops.pointwise import strided_pointwise_conv
from fastdarts.ops.pooling import AvgPool2d

__all__ = [
    "PRIMITIVES", "OPS", "Zero", "Identity", "ReLUConvBN", "DilConv", "SepConv",
    "FactorizedReduce", "NoiseOp", "POOL_OPS",
]

#: The DARTS search space, in alpha column order (`none` is index 0).
PRIMITIVES = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)

#: Ops that the search mixed op follows with an affine-free BatchNorm.
POOL_OPS = frozenset({"max_pool_3x3", "avg_pool_3x3"})


class Zero(nn.Module):
    """The `none` op: zeros of the (possibly subsampled) input's shape.

    The original multiplies by zero (`x.mul(0.)`), which propagates NaN/Inf from `x`; we keep
    that behaviour so gradients and outputs match the original bit for bit.
    """

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            return x.mul(0.0)
        return x[:, :, :: self.stride, :: self.stride].mul(0.0)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class ReLUConvBN(nn.Module):
    """ReLU -> conv (no bias) -> BN; the cell preprocessing op."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class DilConv(nn.Module):
    """ReLU -> depthwise dilated conv (carries the stride) -> pointwise conv -> BN."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked ReLU-dw-pw-BN blocks; only the first depthwise conv carries the stride."""

    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 affine: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_in, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in,
                      bias=False),
            nn.Conv2d(C_in, C_out, kernel_size=1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class FactorizedReduce(nn.Module):
    """ReLU, two 1x1 stride-2 convs (the second on the input shifted by one pixel), concat, BN.

    Only defined for even spatial sizes: with odd sizes the shifted branch is one pixel
    smaller, which we report instead of failing inside `torch.cat`.
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out % 2 != 0:
            raise ValueError(f"FactorizedReduce: C_out must be even; got {C_out}")
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(
                f"FactorizedReduce needs an even spatial size; got {tuple(x.shape[-2:])}")
        x = self.relu(x)
        out = torch.cat([strided_pointwise_conv(self.conv_1, x),
                         strided_pointwise_conv(self.conv_2, x[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


def is_factorized_reduce(m: nn.Module) -> bool:
    """DARTS's FactorizedReduce, ours or a user's matched by structure: a module of that name
    with exactly `relu`, two convs `conv_1`, `conv_2` and a BatchNorm `bn`."""
    children = dict(m.named_children())
    return (type(m).__name__ == "FactorizedReduce"
            and set(children) == {"relu", "conv_1", "conv_2", "bn"}
            and isinstance(children["conv_1"], nn.Conv2d)
            and isinstance(children["conv_2"], nn.Conv2d)
            and isinstance(children["bn"], nn.BatchNorm2d))


class NoiseOp(nn.Module):
    """RobustDARTS S4 `noise`: a fresh N(0, 1) tensor shaped like the (subsampled) input.

    It ignores the input's values, so no gradient flows back to the input.
    """

    def __init__(self, stride: int, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.stride, self.mean, self.std = stride, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return torch.randn_like(x).mul_(self.std).add_(self.mean)


OPS = {
    "none": lambda C, stride, affine: Zero(stride),
    "noise": lambda C, stride, affine: NoiseOp(stride),
    "avg_pool_3x3": lambda C, stride, affine: AvgPool2d(
        3, stride=stride, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, stride, affine: nn.MaxPool2d(3, stride=stride, padding=1),
    "skip_connect": lambda C, stride, affine: (
        Identity() if stride == 1 else FactorizedReduce(C, C, affine=affine)),
    "sep_conv_3x3": lambda C, stride, affine: SepConv(C, C, 3, stride, 1, affine=affine),
    "sep_conv_5x5": lambda C, stride, affine: SepConv(C, C, 5, stride, 2, affine=affine),
    "sep_conv_7x7": lambda C, stride, affine: SepConv(C, C, 7, stride, 3, affine=affine),
    "dil_conv_3x3": lambda C, stride, affine: DilConv(C, C, 3, stride, 2, 2, affine=affine),
    "dil_conv_5x5": lambda C, stride, affine: DilConv(C, C, 5, stride, 4, 2, affine=affine),
    "conv_7x1_1x7": lambda C, stride, affine: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), bias=False),
        nn.BatchNorm2d(C, affine=affine),
    ),
}
