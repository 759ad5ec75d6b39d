"""The NAS-Bench-201 search space (Dong & Yang, 2020), as plain PyTorch.

Follows xautodl's `NAS201SearchCell` and `TinyNetworkDarts` (ALGORITHMS.md §1.2): a 4-node
cell whose output is node 3, 6 edges in the sorted `i<-j` order, C=16 and N=5 by default,
ResNet reduction blocks between the three stages, BN+ReLU before the classifier.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..genotypes import NB201Genotype, derive_nb201_genotype
from ..mixed import FusedMixedOp, check_memory
from ..ops.nb201 import OPS, PRIMITIVES, ResNetBasicblock
from ..partial import PartialMixedOp, _check_partition, partial_node
from ..recompute import recompute, summed_into_output
from .darts import set_aux_beta, with_aux_weight

__all__ = ["NB201MixedOp", "NB201SearchCell", "NB201Supernet", "edge_keys"]


def edge_keys(max_nodes: int = 4) -> list[str]:
    """Edge names in alpha row order: '1<-0', '2<-0', '2<-1', '3<-0', ..."""
    return sorted(f"{i}<-{j}" for i in range(1, max_nodes) for j in range(i))


class NB201MixedOp(FusedMixedOp):
    """One NB201 edge: `sum_k w_k * op_k(x)`; `weights` already normalised by the caller."""

    def __init__(self, C_in: int, C_out: int, stride: int, primitives: Sequence[str],
                 affine: bool, track_running_stats: bool, memory: str = "low",
                 aux_skip: bool = False):
        ops = nn.ModuleList()
        for name in primitives:
            if name not in OPS:
                raise ValueError(f"primitives: unknown op {name!r}; known: {sorted(OPS)}")
            ops.append(OPS[name](C_in, C_out, stride, affine, track_running_stats))
        if aux_skip:  # DARTS-'s auxiliary skip, last, weighted by its beta
            ops.append(OPS["skip_connect"](C_in, C_out, stride, False, track_running_stats))
        super().__init__(ops, memory)
        self.primitives = tuple(primitives)
        self.aux_skip = aux_skip


class NB201SearchCell(nn.Module):
    """Node i = sum_{j<i} edge(i<-j)(node j); the output is the last node."""

    def __init__(self, C: int, max_nodes: int, primitives: Sequence[str], affine: bool,
                 track_running_stats: bool, memory: str = "low", partial_k: int | None = None,
                 partial_selection: str = "first", aux_skip: bool = False):
        super().__init__()
        self.max_nodes = max_nodes
        self.memory = check_memory(memory)
        self.partial = partial_k is not None
        self.edges = nn.ModuleDict()
        for key in edge_keys(max_nodes):
            if partial_k is None:
                edge = NB201MixedOp(C, C, 1, primitives, affine, track_running_stats, memory,
                                    aux_skip)
            else:  # DrNAS: PC-DARTS-style partial channels with the shuffle, no betas
                _check_partition(C, partial_k)
                inner = NB201MixedOp(C // partial_k, C // partial_k, 1, primitives, affine,
                                     track_running_stats, memory)
                edge = PartialMixedOp(C, 1, partial_k, memory=memory,
                                      selection=partial_selection, inner=inner)
            self.edges[key] = edge
        self.edge_keys = edge_keys(max_nodes)
        self.edge2index = {key: i for i, key in enumerate(self.edge_keys)}

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        if self.memory == "low":
            return recompute(self, self._forward, x, weights)
        return self._forward(x, weights)

    def _forward(self, x, weights):
        nodes = [x]
        for i in range(1, self.max_nodes):
            terms = []
            keys = [f"{i}<-{j}" for j in range(i)]
            rows = [weights[self.edge2index[key]] for key in keys]
            if self.partial:  # the node's edges through one fused combine
                nodes.append(partial_node([self.edges[k] for k in keys], nodes[:i], rows))
                continue
            with summed_into_output(self, i == self.max_nodes - 1):  # the output node
                for key, j, w in zip(keys, range(i), rows):
                    terms.append(self.edges[key](nodes[j], w))
            nodes.append(sum(terms))
        return nodes[-1]


class NB201Supernet(nn.Module):
    """NAS-Bench-201 supernet: stem, 3 stages of N search cells, ResNet reductions, classifier.

    Args:
        C: channels of the first stage (16).
        N: search cells per stage (5).
        num_classes: classifier outputs (10, 100 or 120 for the benchmark's data sets).
        in_channels: image channels.
        max_nodes: nodes per cell including the input (4, so 6 edges).
        primitives: op list (the 5 NB201 ops by default).
        affine, track_running_stats: BN settings of the search cells (False, True as in
            xautodl's DARTS scripts with BN=1, DrNAS and SDARTS).
        memory: `low`, `fast` or `reference`, as for the DARTS supernet.
        partial_k, partial_selection: partial-channel edges with K = partial_k, as DrNAS's
            progressive NB201 search uses (no edge-normalisation betas).
        aux_skip: DARTS-: an auxiliary identity on every edge weighted by the buffer
            `aux_beta` (`set_aux_beta`), outside the architecture and the genotype.
    """

    def __init__(self, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3,
                 max_nodes: int = 4, primitives: Sequence[str] = PRIMITIVES,
                 affine: bool = False, track_running_stats: bool = True, memory: str = "low",
                 partial_k: int | None = None, partial_selection: str = "first",
                 aux_skip: bool = False):
        super().__init__()
        if aux_skip and partial_k is not None:
            raise ValueError("aux_skip: the auxiliary skip (DARTS-) is not defined for "
                             "partial-channel edges (partial_k)")
        self.partial_k = partial_k
        self.memory = check_memory(memory)
        self.primitives = tuple(primitives)
        self.max_nodes = max_nodes
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        layer_channels = [C] * N + [C * 2] + [C * 2] * N + [C * 4] + [C * 4] * N
        layer_reductions = [False] * N + [True] + [False] * N + [True] + [False] * N
        C_prev = C
        self.cells = nn.ModuleList()
        for C_curr, reduction in zip(layer_channels, layer_reductions):
            if reduction:
                cell = ResNetBasicblock(C_prev, C_curr, 2)
            else:
                cell = NB201SearchCell(C_curr, max_nodes, self.primitives, affine,
                                       track_running_stats, memory, partial_k,
                                       partial_selection, aux_skip)
            self.cells.append(cell)
            C_prev = C_curr
        self.lastact = nn.Sequential(nn.BatchNorm2d(C_prev), nn.ReLU(inplace=True))
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)
        self.edge_keys = edge_keys(max_nodes)
        self.alphas = nn.Parameter(1e-3 * torch.randn(len(self.edge_keys), len(self.primitives)))
        self.aux_skip = aux_skip
        if aux_skip:
            self.register_buffer("aux_beta", torch.tensor(1.0))

    def arch_parameters(self) -> list[nn.Parameter]:
        return [self.alphas]

    def weight_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p is not self.alphas]

    def mixing_weights(self) -> tuple[torch.Tensor]:
        return (F.softmax(self.alphas, dim=-1),)

    def forward(self, x: torch.Tensor, weights: tuple[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits for `x` (N, C_in, H, W); `weights` = (6 x n_ops mixing weights,)."""
        (w,) = self.mixing_weights() if weights is None else weights
        if self.aux_skip:
            w = with_aux_weight(w, self.aux_beta)
        feature = self._kept_input_only(self.stem, x)
        for cell in self.cells:
            if isinstance(cell, NB201SearchCell):
                feature = cell(feature, w)  # recomputed by the cell itself in `low`
            else:
                feature = self._kept_input_only(cell, feature)
        out = self.global_pooling(self.lastact(feature))
        return self.classifier(out.flatten(1))

    def _kept_input_only(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`block(x)`; in `low` mode keeping only `x` (which the previous block's recompute
        keeps anyway) and recomputed in backward with BN statistics updated once. For the
        stem and the two residual reduction blocks, whose activations are about a quarter of
        what the recomputed search cells leave."""
        return recompute(block, block, x) if self.memory == "low" else block(x)

    def set_aux_beta(self, value: float) -> None:
        """DARTS-: the auxiliary skips' weight from now on (a buffer: saved, moved, no grad)."""
        set_aux_beta(self, value)

    def genotype(self, weights: tuple[torch.Tensor] | None = None) -> NB201Genotype:
        """Argmax op per edge (`none` not excluded), as xautodl, SDARTS and DrNAS derive."""
        with torch.no_grad():
            (w,) = self.mixing_weights() if weights is None else weights
        return derive_nb201_genotype(w, self.primitives, self.max_nodes)

    def edge_labels(self) -> list[str]:
        return list(self.edge_keys)
