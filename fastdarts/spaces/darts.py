"""The DARTS CNN search space and RobustDARTS S1-S4, as plain PyTorch.

Structure, edge order, op construction and parameter counts follow the original DARTS
`cnn/model_search.py` (ALGORITHMS.md §1.1, §1.3). Differences, all deliberate:

* the architecture parameters are registered `nn.Parameter`s (`alphas_normal`,
  `alphas_reduce`), so they are saved in `state_dict`, moved by `.to()` and kept apart from
  the weights by `arch_parameters()` / `weight_parameters()`;
* `forward` takes optional mixing weights, so a method (softmax, Dirichlet sample, projected
  simplex point) decides how alphas become weights; the default is the DARTS softmax;
* per-edge op lists (S1-S4) are first-class.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..genotypes import DartsGenotype, derive_darts_genotype
from ..mixed import MixedOp, check_memory
from ..partial import PartialMixedOp, partial_node
from ..ops.darts import PRIMITIVES, FactorizedReduce, ReLUConvBN
from ..recompute import recompute, recompute_darts_cell

__all__ = ["MixedOp", "Cell", "DartsSupernet", "SPACE_OPS", "space_edge_ops", "NUM_EDGES",
           "NODE_EDGES", "edge_normalised", "with_aux_weight", "set_aux_beta"]

STEPS = 4
NUM_EDGES = sum(2 + i for i in range(STEPS))  # 14
#: The alpha rows of each node's incoming edges: [0:2], [2:5], [5:9], [9:14].
NODE_EDGES = [(sum(2 + j for j in range(i)), sum(2 + j for j in range(i + 1)))
              for i in range(STEPS)]


def with_aux_weight(weights: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """DARTS-: the mixing weights with one more column, the auxiliary skip's beta."""
    return torch.cat([weights, beta.to(weights.dtype).expand(weights.shape[0], 1)], dim=1)


def set_aux_beta(model: nn.Module, value: float) -> None:
    if not getattr(model, "aux_skip", False):
        raise ValueError("set_aux_beta: this supernet was built without aux_skip")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"value: the auxiliary skip's beta must be finite and >= 0; got {value}")
    model.aux_beta.fill_(value)


def edge_normalised(betas: torch.Tensor) -> torch.Tensor:
    """PC-DARTS's edge normalisation: a softmax over each node's incoming edges (14,)."""
    if betas.shape[-1] != NUM_EDGES:
        raise ValueError(f"betas must have {NUM_EDGES} entries (one per edge); got "
                         f"{tuple(betas.shape)}")
    return torch.cat([F.softmax(betas[..., a:b], dim=-1) for a, b in NODE_EDGES], dim=-1)

# RobustDARTS S1 (ALGORITHMS.md §1.3): two ops per edge, separate lists per cell type.
_S1_NORMAL = [
    ("skip_connect", "dil_conv_3x3"), ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"), ("skip_connect", "sep_conv_3x3"),
    ("skip_connect", "dil_conv_3x3"), ("max_pool_3x3", "skip_connect"),
    ("skip_connect", "sep_conv_3x3"), ("skip_connect", "sep_conv_3x3"),
    ("skip_connect", "dil_conv_3x3"), ("skip_connect", "sep_conv_3x3"),
    ("max_pool_3x3", "skip_connect"), ("skip_connect", "dil_conv_3x3"),
    ("dil_conv_3x3", "dil_conv_5x5"), ("dil_conv_3x3", "dil_conv_5x5"),
]
_S1_REDUCE = [
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "dil_conv_3x3"),
    ("max_pool_3x3", "avg_pool_3x3"), ("max_pool_3x3", "avg_pool_3x3"),
    ("skip_connect", "dil_conv_5x5"), ("max_pool_3x3", "avg_pool_3x3"),
    ("max_pool_3x3", "sep_conv_3x3"), ("skip_connect", "dil_conv_3x3"),
    ("skip_connect", "dil_conv_5x5"), ("max_pool_3x3", "avg_pool_3x3"),
    ("max_pool_3x3", "avg_pool_3x3"), ("skip_connect", "dil_conv_5x5"),
    ("skip_connect", "dil_conv_5x5"), ("skip_connect", "dil_conv_5x5"),
]


def _uniform(ops: Sequence[str]):
    return [tuple(ops)] * NUM_EDGES


#: Per space: (normal edge op lists, reduce edge op lists), 14 lists each, in edge order.
SPACE_OPS = {
    "darts": (_uniform(PRIMITIVES), _uniform(PRIMITIVES)),
    "s1": (_S1_NORMAL, _S1_REDUCE),
    "s2": (_uniform(("skip_connect", "sep_conv_3x3")),) * 2,
    "s3": (_uniform(("none", "skip_connect", "sep_conv_3x3")),) * 2,
    "s4": (_uniform(("noise", "sep_conv_3x3")),) * 2,
}


def space_edge_ops(space: str):
    """Return `(normal, reduce)` per-edge op lists of a DARTS-family space."""
    try:
        normal, reduce = SPACE_OPS[space]
    except KeyError:
        raise ValueError(
            f"space must be one of {sorted(SPACE_OPS)}; got {space!r}") from None
    return [tuple(p) for p in normal], [tuple(p) for p in reduce]


class Cell(nn.Module):
    """A DARTS search cell: 2 inputs, `steps` nodes, 14 mixed edges, concat of the last nodes.

    With `memory="low"` the cell keeps only its inputs and output for backward and is
    recomputed there node by node (`fastdarts.recompute.recompute_darts_cell`), its edges
    running through the fused kernels. With `partial_k` the edges are PC-DARTS partial-channel
    edges (`fastdarts.PartialMixedOp`) and `forward` takes PC-DARTS's edge weights.
    """

    def __init__(self, steps: int, multiplier: int, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool, edge_ops: Sequence[Sequence[str]],
                 affine: bool = False, memory: str = "low", partial_k: int | None = None,
                 partial_selection: str = "first", aux_skip: bool = False):
        super().__init__()
        self.reduction = reduction
        self.memory = check_memory(memory)
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=affine)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=affine)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=affine)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        edge = 0
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                if partial_k is None:
                    op = MixedOp(C, stride, edge_ops[edge], memory=memory, affine=affine,
                                 aux_skip=aux_skip)
                else:
                    op = PartialMixedOp(C, stride, partial_k, edge_ops[edge], memory=memory,
                                        affine=affine, selection=partial_selection)
                self._ops.append(op)
                edge += 1

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: torch.Tensor,
                edge_weights: torch.Tensor | None = None) -> torch.Tensor:
        """`weights`: (14, n_ops) mixing weights; `edge_weights`: (14,) PC-DARTS edge weights
        (softmax per node, `edge_normalised`), None for plain DARTS."""
        if self.memory == "low":
            return recompute_darts_cell(self, s0, s1, weights, edge_weights)
        return self._forward(s0, s1, weights, edge_weights)

    def _node_sums_edges(self, edge_weights) -> bool:
        """Whether `_node` is a plain sum of its edges (`recompute_darts_cell`)."""
        return edge_weights is None and not isinstance(self._ops[0], PartialMixedOp)

    def _node(self, i: int, states, weights, edge_weights=None):
        """Node i from the states before it: sum over its incoming edges."""
        first = NODE_EDGES[i][0]
        if isinstance(self._ops[first], PartialMixedOp):
            n = len(states)
            return partial_node(self._ops[first:first + n], states, weights[first:first + n],
                                None if edge_weights is None else edge_weights[first:first + n])
        if edge_weights is None:
            return sum(self._ops[first + j](h, weights[first + j]) for j, h in enumerate(states))
        return sum(edge_weights[first + j] * self._ops[first + j](h, weights[first + j])
                   for j, h in enumerate(states))

    def _forward(self, s0, s1, weights, edge_weights=None):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            states.append(self._node(i, states, weights, edge_weights))
        return torch.cat(states[-self._multiplier:], dim=1)


class DartsSupernet(nn.Module):
    """The DARTS search network (CIFAR or ImageNet stem) over a DARTS-family space.

    Args:
        C: initial channels (16 in DARTS).
        num_classes: classifier outputs.
        layers: number of cells L; cells L//3 and 2L//3 are reduction cells.
        space: `darts` (8 ops) or RobustDARTS `s1`..`s4` (per-edge op lists).
        stem: `cifar` (3x3 conv to 3C) or `imagenet` (two stride-2 stems, total stride 8).
        in_channels: image channels (3 for RGB; 1 for the embedded digits).
        steps, multiplier, stem_multiplier: as in DARTS (4, 4, 3).
        primitives: override the op list of every edge (e.g. DrNAS's 7 ops without `none`).
        memory: `low` (cells recomputed, fused edges), `fast` (fused edges keeping their
            bodies' graphs) or `reference` (the original plain-PyTorch edges).
        partial_k: PC-DARTS (ALGORITHMS.md §2.2): every edge is a partial-channel edge with K
            = partial_k (4 on CIFAR, 2 on ImageNet), and the supernet has edge-normalisation
            betas (`betas_normal`, `betas_reduce`, 14 each) next to the alphas.
        partial_selection: `first` (the original's fixed slice) or `sampled` (a random channel
            permutation per edge and step; `fastdarts.PartialMixedOp`).
        edge_normalisation: with partial_k, whether the supernet has PC-DARTS's betas (default
            True; DrNAS uses partial channels without them).
        affine: every BatchNorm of the cells (ops, pools, preprocessing) has affine
            parameters; False in DARTS search, True for RF-DARTS (`fastdarts.random_features`).
        aux_skip: DARTS- (ALGORITHMS.md §2.6): every edge gets an auxiliary skip weighted by
            the buffer `aux_beta` (`set_aux_beta`), outside the architecture and the genotype.
    """

    def __init__(self, C: int = 16, num_classes: int = 10, layers: int = 8,
                 space: str = "darts", stem: str = "cifar", in_channels: int = 3,
                 steps: int = STEPS, multiplier: int = 4, stem_multiplier: int = 3,
                 primitives: Sequence[str] | None = None, memory: str = "low",
                 partial_k: int | None = None, partial_selection: str = "first",
                 edge_normalisation: bool = True, affine: bool = False,
                 aux_skip: bool = False):
        super().__init__()
        if aux_skip and partial_k is not None:
            raise ValueError("aux_skip: the auxiliary skip (DARTS-) is not defined for "
                             "partial-channel edges (partial_k)")
        self.memory = check_memory(memory)
        if steps != STEPS:
            raise ValueError(f"steps: the DARTS space has {STEPS} nodes per cell; got {steps}")
        if layers < 3:
            raise ValueError(f"layers must be >= 3 (two reduction cells); got {layers}")
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet'; got {stem!r}")
        self.space, self.stem_type = space, stem
        self._C, self._num_classes, self._layers = C, num_classes, layers
        self._steps, self._multiplier = steps, multiplier
        self.partial_k = partial_k
        self.edge_normalisation = partial_k is not None and edge_normalisation
        if primitives is not None:
            normal_ops = reduce_ops = [tuple(primitives)] * NUM_EDGES
        else:
            normal_ops, reduce_ops = space_edge_ops(space)
        self.normal_ops, self.reduce_ops = normal_ops, reduce_ops

        C_curr = stem_multiplier * C
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
                nn.BatchNorm2d(C_curr),
            )
            reduction_prev = False
        else:
            self.stem0 = nn.Sequential(
                nn.Conv2d(in_channels, C_curr // 2, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C_curr // 2),
                nn.ReLU(inplace=True),
                nn.Conv2d(C_curr // 2, C_curr, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C_curr),
            )
            self.stem1 = nn.Sequential(
                nn.ReLU(inplace=True),
                nn.Conv2d(C_curr, C_curr, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(C_curr),
            )
            reduction_prev = True

        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction,
                        reduction_prev, reduce_ops if reduction else normal_ops,
                        affine=affine, memory=memory, partial_k=partial_k,
                        partial_selection=partial_selection, aux_skip=aux_skip)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, len(normal_ops[0])))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(NUM_EDGES, len(reduce_ops[0])))
        if self.edge_normalisation:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(NUM_EDGES))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(NUM_EDGES))
        self.aux_skip = aux_skip
        if aux_skip:
            self.register_buffer("aux_beta", torch.tensor(1.0))
        for ops in (*normal_ops, *reduce_ops):
            if len(ops) != len(normal_ops[0]):
                raise ValueError("every edge of a space must have the same number of ops "
                                 "(one alpha row per edge)")

    # -- parameters --------------------------------------------------------------------------
    def arch_parameters(self) -> list[nn.Parameter]:
        if self.edge_normalisation:
            return [self.alphas_normal, self.alphas_reduce, self.betas_normal,
                    self.betas_reduce]
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[nn.Parameter]:
        arch = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def mixing_weights(self) -> tuple[torch.Tensor, ...]:
        """The DARTS mixing weights: a softmax over each edge's ops, per cell type; with
        partial channels also the PC-DARTS edge weights (normal, reduce, e_normal, e_reduce)."""
        w = (F.softmax(self.alphas_normal, dim=-1), F.softmax(self.alphas_reduce, dim=-1))
        if not self.edge_normalisation:
            return w
        return w + (edge_normalised(self.betas_normal), edge_normalised(self.betas_reduce))

    # -- forward -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor,
                weights: tuple[torch.Tensor, ...] | None = None) -> torch.Tensor:
        """Logits for images `x` (N, C_in, H, W).

        `weights` = (normal, reduce) mixing weights, each (14, n_ops), already normalised;
        by default `mixing_weights()` (softmax of the alphas). With partial channels, also
        the edge weights (normal, reduce, e_normal, e_reduce); when left out they are the
        edge normalisation of the betas.
        """
        w_normal, w_reduce, e_normal, e_reduce = self._all_weights(weights)
        if self.aux_skip:
            w_normal, w_reduce = with_aux_weight(w_normal, self.aux_beta), with_aux_weight(
                w_reduce, self.aux_beta)
        if self.stem_type == "cifar":
            s0 = s1 = self._stem(self.stem, x)
        else:
            s0 = self._stem(self.stem0, x)
            s1 = self.stem1(s0)  # its in-place ReLU rectifies s0 too, as in the original
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, w_reduce, e_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, w_normal, e_normal)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def _stem(self, stem: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """`stem(x)`; in `low` mode keeping only `x` and recomputed in backward (BN statistics
        updated once): at 224x224 the ImageNet stem's activations are most of what the
        recomputed cells leave (about 12 of 16 MiB per image for DrNAS's C=48 supernet)."""
        return recompute(stem, stem, x) if self.memory == "low" else stem(x)

    def _all_weights(self, weights):
        """(w_normal, w_reduce, e_normal, e_reduce) from `weights` (2 or 4 tensors or None)."""
        weights = tuple(self.mixing_weights() if weights is None else weights)
        if len(weights) == 4:
            if not self.edge_normalisation:
                raise ValueError("weights: edge weights were given, but this supernet has no "
                                 "edge normalisation")
            return weights
        if len(weights) != 2:
            raise ValueError(f"weights must be (normal, reduce) or (normal, reduce, "
                             f"edge_normal, edge_reduce); got {len(weights)} tensors")
        if not self.edge_normalisation:
            return (*weights, None, None)
        return (*weights, edge_normalised(self.betas_normal), edge_normalised(self.betas_reduce))

    def set_aux_beta(self, value: float) -> None:
        """DARTS-: the auxiliary skips' weight from now on (a buffer: saved, moved, no grad)."""
        set_aux_beta(self, value)

    # -- derivation --------------------------------------------------------------------------
    def genotype(self, weights: tuple[torch.Tensor, ...] | None = None) -> DartsGenotype:
        """The DARTS-rule genotype (top-2 edges per node excluding `none`, argmax op). With
        edge normalisation (PC-DARTS) each op weight is scaled by its edge weight first."""
        with torch.no_grad():
            w_normal, w_reduce, e_normal, e_reduce = self._all_weights(weights)
            if e_normal is not None:
                w_normal, w_reduce = w_normal * e_normal[:, None], w_reduce * e_reduce[:, None]
        return derive_darts_genotype(w_normal, w_reduce, self.normal_ops, self.reduce_ops,
                                     steps=self._steps, multiplier=self._multiplier)

    def edge_labels(self) -> list[str]:
        """Human-readable edge names in alpha row order, e.g. 'n2<-c_{k-1}'."""
        names = ["c_{k-2}", "c_{k-1}"] + [f"n{i}" for i in range(self._steps)]
        return [f"n{i}<-{names[j]}" for i in range(self._steps) for j in range(2 + i)]
