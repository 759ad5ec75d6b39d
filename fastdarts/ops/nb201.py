"""NAS-Bench-201 operations (Dong & Yang, 2020), as in xautodl's `cell_operations.py`.

Every op is built as `OPS[name](C_in, C_out, stride, affine, track_running_stats)`.
Unlike the DARTS space there is no BatchNorm after the pool, and the conv ops are a single
ReLU-Conv-BN.
"""
from __future__ import annotations

import torch
from torch import nn

from fastdarts.ops.pointwise import strided_pointwise_conv
from fastdarts.ops.pooling import AvgPool2d

__all__ = ["PRIMITIVES", "OPS", "ReLUConvBN", "Pooling", "Zero", "FactorizedReduce",
           "ResNetBasicblock"]

#: NAS-Bench-201 ops in alpha column order.
PRIMITIVES = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")


class ReLUConvBN(nn.Module):
    def __init__(self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int,
                 dilation: int, affine: bool, track_running_stats: bool = True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding,
                      dilation=dilation, bias=False),
            nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Pooling(nn.Module):
    """3x3 average pool (count_include_pad=False); a 1x1 ReLUConvBN first if C changes."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        self.preprocess = (None if C_in == C_out else
                           ReLUConvBN(C_in, C_out, 1, 1, 0, 1, affine, track_running_stats))
        self.op = AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.preprocess is not None:
            x = self.preprocess(x)
        return self.op(x)


class Zero(nn.Module):
    def __init__(self, C_in: int, C_out: int, stride: int):
        super().__init__()
        self.C_in, self.C_out, self.stride = C_in, C_out, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.C_in == self.C_out:
            if self.stride == 1:
                return x.mul(0.0)
            return x[:, :, :: self.stride, :: self.stride].mul(0.0)
        shape = list(x.shape)
        shape[1] = self.C_out
        shape[2] = (shape[2] + self.stride - 1) // self.stride
        shape[3] = (shape[3] + self.stride - 1) // self.stride
        return x.new_zeros(shape)


class Identity(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class FactorizedReduce(nn.Module):
    """NB201's reducing skip: two shifted 1x1 stride-2 convs concatenated, then BN."""

    def __init__(self, C_in: int, C_out: int, stride: int, affine: bool,
                 track_running_stats: bool):
        super().__init__()
        if stride != 2:
            raise ValueError(f"FactorizedReduce: stride must be 2; got {stride}")
        self.relu = nn.ReLU(inplace=False)
        C_outs = [C_out // 2, C_out - C_out // 2]
        self.convs = nn.ModuleList(
            nn.Conv2d(C_in, c, 1, stride=2, padding=0, bias=False) for c in C_outs)
        self.pad = nn.ConstantPad2d((0, 1, 0, 1), 0)
        self.bn = nn.BatchNorm2d(C_out, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(x)
        y = self.pad(x)
        out = torch.cat([strided_pointwise_conv(self.convs[0], x),
                         strided_pointwise_conv(self.convs[1], y[:, :, 1:, 1:])], dim=1)
        return self.bn(out)


class ResNetBasicblock(nn.Module):
    """Pre-activation residual block used between NB201 stages (affine BN)."""

    def __init__(self, inplanes: int, planes: int, stride: int, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"ResNetBasicblock: stride must be 1 or 2; got {stride}")
        self.conv_a = ReLUConvBN(inplanes, planes, 3, stride, 1, 1, affine, track_running_stats)
        self.conv_b = ReLUConvBN(planes, planes, 3, 1, 1, 1, affine, track_running_stats)
        if stride == 2:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(kernel_size=2, stride=2, padding=0),
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=1, padding=0, bias=False),
            )
        elif inplanes != planes:
            self.downsample = ReLUConvBN(inplanes, planes, 1, 1, 0, 1, affine,
                                         track_running_stats)
        else:
            self.downsample = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv_b(self.conv_a(x))
        residual = x if self.downsample is None else self.downsample(x)
        return residual + out


def _skip(C_in, C_out, stride, affine, track):
    if stride == 1 and C_in == C_out:
        return Identity()
    return FactorizedReduce(C_in, C_out, stride, affine, track)


OPS = {
    "none": lambda C_in, C_out, stride, affine, track: Zero(C_in, C_out, stride),
    "skip_connect": _skip,
    "nor_conv_1x1": lambda C_in, C_out, stride, affine, track: ReLUConvBN(
        C_in, C_out, 1, stride, 0, 1, affine, track),
    "nor_conv_3x3": lambda C_in, C_out, stride, affine, track: ReLUConvBN(
        C_in, C_out, 3, stride, 1, 1, affine, track),
    "avg_pool_3x3": lambda C_in, C_out, stride, affine, track: Pooling(
        C_in, C_out, stride, affine, track),
}
