"""Partial-channel mixed op (PC-DARTS, Xu et al. 2020; ALGORITHMS.md §2.2, DESIGN.md §4).

With K partitions of C channels, the candidate ops (built for C/K channels) run on the first
C/K channels of the edge input; the other channels bypass them, max-pooled 2x2 at stride 2 on
reduction edges. The concatenation [mixed, bypass] is channel-shuffled with K groups: channel
c goes to position `(c % (C/K)) * K + c // (C/K)`, so the mixed channels land on 0, K, 2K, ...

The mixed part runs through the fused mixed op (`fastdarts.mixed`) in the module's memory
mode. The partial-channel combine kernels (`partial_combine_fwd/bwd`, csrc/partial_channel.h)
then write the mixed part and the bypass straight into their shuffled positions of the node
output, with no cat and no shuffle copy, and, in a PC-DARTS cell (`partial_node`), add every
incoming edge scaled by its edge-normalisation weight beta into the same buffer. beta scales
the mixed part through its mixing weights (beta * w: exact, since the mixed op is linear in
w) and the bypass inside the kernel, whose backward also returns the bypass's part of
d beta. `memory="reference"` runs the original's cat + shuffle. Parameters, buffers and
`state_dict` keys are the original PC-DARTS MixedOp's (`_ops.<k>`, `mp`).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from .backends import select_backend
from .mixed import FusedMixedOp, MixedOp, _as, _format_of

__all__ = ["PartialMixedOp", "channel_shuffle", "shuffle_positions", "partial_node",
           "partial_combine"]


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


class _PartialNodeFunction(torch.autograd.Function):
    """node = sum_e shuffle([m_e, beta_e * bypass(x_e)]) through the combine kernels.

    Keeps only the edge inputs x_e (and the betas); the mixed outputs m_e are not needed
    for backward, where the kernel gathers each m_e's gradient from the node gradient."""

    @staticmethod
    def forward(ctx, be, K, strides, n, *tensors):
        ms, xs, betas = tensors[:n], tensors[n:2 * n], tensors[2 * n:] or (None,) * n
        out = None
        for e, (m, x, beta) in enumerate(zip(ms, xs, betas)):
            out = be.partial_combine_fwd(out, m, x, beta, K, strides[e], e > 0)
        ctx.be, ctx.K, ctx.strides, ctx.n = be, K, strides, n
        ctx.has_betas = len(tensors) > 2 * n
        ctx.save_for_backward(*xs, *tensors[2 * n:])
        return out

    @staticmethod
    def backward(ctx, g):
        n = ctx.n
        xs, betas = ctx.saved_tensors[:n], ctx.saved_tensors[n:] or (None,) * n
        g = _as(g, _format_of(xs[0]))
        d_ms, d_xs, d_betas = [], [], []
        for e, (x, beta) in enumerate(zip(xs, betas)):
            g_m, dx, dbeta = ctx.be.partial_combine_bwd(g, x, beta, ctx.K, ctx.strides[e])
            d_ms.append(g_m)
            d_xs.append(dx)
            d_betas.append(dbeta.to(beta.dtype) if beta is not None else None)
        return (None, None, None, None, *d_ms, *d_xs, *(d_betas if ctx.has_betas else ()))


def partial_node(edges: Sequence["PartialMixedOp"], xs, weights,
                 edge_weights: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """sum_e edge_weights[e] * edges[e](xs[e], weights[e]): a PC-DARTS node (or, with one
    edge and no edge weights, one edge) through the fused mixed ops and the combine kernels.
    `edge_weights` holds 0-dim tensors (the node's slice of the edge normalisation)."""
    first = edges[0]
    es = list(edge_weights) if edge_weights is not None else [None] * len(edges)
    if first.memory == "reference" or first.k == 1:
        return sum(edge(x, w) if e is None else e * edge(x, w)
                   for edge, x, w, e in zip(edges, xs, weights, es))
    for edge, x in zip(edges, xs):
        edge._check_input(x)
    fmt = _format_of(xs[0])
    xs = [_as(edge._select(x), fmt) for edge, x in zip(edges, xs)]
    ms = []
    for edge, x, w, e in zip(edges, xs, weights, es):
        ms.append(edge.mixed(x[:, :edge.C // edge.k], w if e is None else w * e.to(w.dtype)))
    acc = torch.float64 if xs[0].dtype == torch.float64 else torch.float32
    betas = None if edge_weights is None else [e.to(acc) for e in es]
    return partial_combine(ms, xs, first.k, [edge.stride for edge in edges], betas,
                           first.backend)


def partial_combine(ms, xs, K: int, strides, betas=None, backend: Optional[str] = None):
    """sum_e shuffle([ms[e], betas[e] * bypass(xs[e])]) through the combine kernels (xs dense,
    one layout; betas 0-dim in the accumulation dtype, or None for 1)."""
    be = select_backend(xs[0], backend=backend)
    return _PartialNodeFunction.apply(be, K, tuple(strides), len(xs), *ms, *xs,
                                      *(betas or ()))


class PartialMixedOp(FusedMixedOp):
    """A PC-DARTS edge: `forward(x, weights)` exactly like PC-DARTS's MixedOp.

    Args:
        C: channels of the edge input and output. stride: 1, or 2 on reduction edges.
        k: channel partitions K (4 on CIFAR, 2 on ImageNet in PC-DARTS); C % k == 0.
        primitives, memory, affine, backend: as for `fastdarts.MixedOp`; the ops are built
            for C // k channels.
        inner: the mixed op over C/k channels to use instead of a DARTS-space `MixedOp`
            (the NAS-Bench-201 supernet passes its own); primitives and affine are then
            ignored.
        selection: ``first`` (the original: the ops see the first C/k channels) or
            ``sampled`` (in training, every forward draws a random channel permutation on
            x's device and the ops see its first C/k channels; eval uses the first ones).
            Sampling draws from torch's RNG, so the cell-level recompute replays it.
    """

    def __init__(self, C: int, stride: int, k: int, primitives: Optional[Sequence[str]] = None,
                 memory: str = "low", affine: bool = False, backend: Optional[str] = None,
                 selection: str = "first", inner: Optional[FusedMixedOp] = None):
        _check_partition(C, k)
        if selection not in ("first", "sampled"):
            raise ValueError(f"selection must be 'first' or 'sampled'; got {selection!r}")
        if inner is None:
            inner = MixedOp(C // k, stride, primitives, memory=memory, affine=affine,
                            backend=backend)
        super().__init__(inner._ops, memory, backend)
        self.primitives = inner.primitives
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k
        self.C, self.stride = C, stride
        self.selection = selection
        self.draws_random_numbers = selection == "sampled"  # read by the recompute

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.C:
            raise ValueError(f"PartialMixedOp.forward: argument 'x' must be (N, {self.C}, H, W); "
                             f"got {tuple(x.shape)}")
        if self.stride == 2 and self.k > 1 and (x.shape[2] % 2 or x.shape[3] % 2):
            raise ValueError(f"PartialMixedOp.forward: argument 'x' must have an even height and "
                             f"width on a reduction edge (the bypass is max-pooled 2x2 and the "
                             f"ops round up); got {tuple(x.shape[2:])}")

    def wider(self, k: int, optimizer: Optional[torch.optim.Optimizer] = None,
              generator: Optional[torch.Generator] = None):
        """Change K to k <= K at run time, widening the ops to C/k channels (DrNAS progressive
        learning; `fastdarts.wider`, which does this for every edge of a model at once)."""
        from .widen import wider
        return wider(self, k, optimizer, generator)

    def _select(self, x: torch.Tensor) -> torch.Tensor:
        """x with its channels in the order the edge uses: as given, or a random
        permutation (selection='sampled', training)."""
        if self.selection == "first" or not self.training or self.k == 1:
            return x
        return x.index_select(1, torch.randperm(self.C, device=x.device))

    def mixed(self, x_part: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """The mixed op over the first C/k channels (fused, in this module's memory mode)."""
        return super().forward(x_part, weights)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self.k == 1:  # no bypass (the original would max-pool an empty tensor)
            return self.mixed(x, weights)
        if self.memory != "reference":
            return partial_node([self], [x], [weights])
        x = self._select(x)
        part = self.C // self.k
        mixed = self.mixed(x[:, :part], weights)
        bypass = x[:, part:]
        if mixed.shape[2] != x.shape[2]:
            bypass = self.mp(bypass)
        return channel_shuffle(torch.cat([mixed, bypass], dim=1), self.k)
