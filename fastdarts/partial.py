"""Partial-channel mixed op (PC-DARTS, Xu et al. 2020; ALGORITHMS.md §2.2, DESIGN.md §4).

With K partitions of C channels, the candidate ops (built for C/K channels) run on the first
C/K channels of the edge input; the other channels bypass them, max-pooled 2x2 at stride 2 on
reduction edges. The concatenation [mixed, bypass] is channel-shuffled with K groups: channel
c goes to position `(c % (C/K)) * K + c // (C/K)`, so the mixed channels land on 0, K, 2K, ...

The mixed part runs through the fused mixed op (`fastdarts.mixed`) in the module's memory
mode; the bypass, concatenation and shuffle are plain PyTorch for now (the one-pass kernel
that writes both parts straight into their shuffled positions is DESIGN.md §4's next step).
Parameters, buffers and `state_dict` keys are the original PC-DARTS MixedOp's (`_ops.<k>`,
`mp`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .mixed import FusedMixedOp, MixedOp

__all__ = ["PartialMixedOp", "channel_shuffle", "shuffle_positions"]


def shuffle_positions(C: int, K: int) -> torch.Tensor:
    """Output position of each channel of the concatenation: `(c % (C/K)) * K + c // (C/K)`."""
    _check_partition(C, K)
    c = torch.arange(C)
    return (c % (C // K)) * K + c // (C // K)


def channel_shuffle(x: torch.Tensor, K: int) -> torch.Tensor:
    """PC-DARTS's shuffle: view (N, K, C/K, H, W), swap the two channel axes, flatten."""
    N, C, H, W = x.shape
    _check_partition(C, K)
    return x.view(N, K, C // K, H, W).transpose(1, 2).reshape(N, C, H, W)


def _check_partition(C: int, K: int) -> None:
    if not isinstance(K, int) or K < 1:
        raise ValueError(f"k must be a positive int (the number of channel partitions); got {K!r}")
    if C % K:
        raise ValueError(f"k: the channels ({C}) must be divisible by k; got k={K}")


class PartialMixedOp(FusedMixedOp):
    """A PC-DARTS edge: `forward(x, weights)` exactly like PC-DARTS's MixedOp.

    Args:
        C: channels of the edge input and output. stride: 1, or 2 on reduction edges.
        k: channel partitions K (4 on CIFAR, 2 on ImageNet in PC-DARTS); C % k == 0.
        primitives, memory, affine, backend: as for `fastdarts.MixedOp`; the ops are built
            for C // k channels.
    """

    def __init__(self, C: int, stride: int, k: int, primitives: Optional[Sequence[str]] = None,
                 memory: str = "low", affine: bool = False, backend: Optional[str] = None):
        _check_partition(C, k)
        inner = MixedOp(C // k, stride, primitives, memory=memory, affine=affine,
                        backend=backend)
        super().__init__(inner._ops, memory, backend)
        self.primitives = inner.primitives
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k
        self.C, self.stride = C, stride

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.C:
            raise ValueError(f"PartialMixedOp.forward: argument 'x' must be (N, {self.C}, H, W); "
                             f"got {tuple(x.shape)}")
        if self.k == 1:  # no bypass (the original would max-pool an empty tensor)
            return super().forward(x, weights)
        part = self.C // self.k
        mixed = super().forward(x[:, :part], weights)
        bypass = x[:, part:]
        if mixed.shape[2] != x.shape[2]:
            bypass = self.mp(bypass)
        return channel_shuffle(torch.cat([mixed, bypass], dim=1), self.k)
