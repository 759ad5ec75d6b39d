"""Genotypes: deriving discrete cells from mixing weights, strings, benchmark indices, JSON.

* DARTS family (ALGORITHMS.md §1.1.7-1.1.8): per node keep the 2 incoming edges whose best
  non-`none` weight is largest, and on each the argmax non-`none` op. `none` is excluded
  only on edges whose op list contains it (RobustDARTS S1-S4 rule).
* NAS-Bench-201 (§1.2.5-1.2.6, §1.2.10): argmax op per edge (`none` included), the
  benchmark's architecture string, and its index among the 15,625 architectures: the
  lexicographic enumeration (last edge fastest) shuffled with `random.seed(88)`.
"""
from __future__ import annotations

import functools
import json
import os
import random
from collections import namedtuple
from typing import Sequence

import torch

from .ops.nb201 import PRIMITIVES as NB201_PRIMITIVES

__all__ = [
    "DartsGenotype", "NB201Genotype", "derive_darts_genotype", "derive_nb201_genotype",
    "nb201_all_arch_strings", "nb201_arch_index", "nb201_arch_string", "save_genotype",
    "load_genotype", "genotype_to_dict", "genotype_from_dict", "DARTS_V1", "DARTS_V2",
    "PC_DARTS_CIFAR", "PC_DARTS_IMAGE",
]

DartsGenotype = namedtuple("Genotype", "normal normal_concat reduce reduce_concat")

#: Published cells (DARTS cnn/genotypes.py: DARTS_V1 first order, DARTS_V2 second order;
#: PC-DARTS genotypes.py: PC_DARTS_cifar, PC_DARTS_image), for `fastdarts.build_network`.
DARTS_V1 = DartsGenotype(
    normal=[("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
            ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)],
    reduce_concat=[2, 3, 4, 5],
)
DARTS_V2 = DartsGenotype(
    normal=[("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
            ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
            ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)],
    reduce_concat=[2, 3, 4, 5],
)
PC_DARTS_CIFAR = DartsGenotype(
    normal=[("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_3x3", 0), ("dil_conv_3x3", 1),
            ("sep_conv_5x5", 0), ("sep_conv_3x3", 1), ("avg_pool_3x3", 0), ("dil_conv_3x3", 1)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_5x5", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 1), ("sep_conv_5x5", 2),
            ("sep_conv_3x3", 0), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("sep_conv_3x3", 2)],
    reduce_concat=[2, 3, 4, 5],
)
PC_DARTS_IMAGE = DartsGenotype(
    normal=[("skip_connect", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 0), ("skip_connect", 1),
            ("sep_conv_3x3", 1), ("sep_conv_3x3", 3), ("sep_conv_3x3", 1), ("dil_conv_5x5", 4)],
    normal_concat=[2, 3, 4, 5],
    reduce=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_5x5", 2), ("max_pool_3x3", 1),
            ("sep_conv_3x3", 2), ("sep_conv_3x3", 1), ("sep_conv_5x5", 0), ("sep_conv_3x3", 3)],
    reduce_concat=[2, 3, 4, 5],
)


def _as_rows(weights) -> list[list[float]]:
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().to(torch.float64).cpu().tolist()
    return [list(map(float, row)) for row in weights]


def _check_finite(rows: list[list[float]], name: str) -> None:
    for e, row in enumerate(rows):
        for v in row:
            if v != v or v in (float("inf"), float("-inf")):
                raise ValueError(f"{name} must be finite; got {v} at edge {e}")


def _parse_darts_cell(rows: list[list[float]], edge_ops: Sequence[Sequence[str]], steps: int):
    gene = []
    start, n = 0, 2
    for _ in range(steps):
        end = start + n

        def candidates(e):
            ops = edge_ops[e]
            return [k for k in range(len(ops)) if ops[k] != "none"]

        def best_weight(j):
            e = start + j
            return max(rows[e][k] for k in candidates(e))

        # `sorted` is stable: ties keep the lower input index first, as in the original.
        edges = sorted(range(n), key=lambda j: -best_weight(j))[:2]
        for j in edges:
            e = start + j
            k_best = None
            for k in candidates(e):  # strict '>' keeps the first maximum, as the original
                if k_best is None or rows[e][k] > rows[e][k_best]:
                    k_best = k
            gene.append((edge_ops[e][k_best], j))
        start, n = end, n + 1
    return gene


def derive_darts_genotype(weights_normal, weights_reduce,
                          normal_ops: Sequence[Sequence[str]],
                          reduce_ops: Sequence[Sequence[str]],
                          steps: int = 4, multiplier: int = 4) -> DartsGenotype:
    """DARTS derivation from (14, n_ops) mixing weights and the per-edge op lists.

    Pass softmax(alpha) for DARTS, softmax(alpha) * softmax(beta_node) for PC-DARTS, or
    softmax(theta) for DrNAS: any per-edge monotone score works.
    """
    rows_n, rows_r = _as_rows(weights_normal), _as_rows(weights_reduce)
    _check_finite(rows_n, "weights_normal")
    _check_finite(rows_r, "weights_reduce")
    num_edges = sum(2 + i for i in range(steps))
    for name, rows, ops in (("weights_normal", rows_n, normal_ops),
                            ("weights_reduce", rows_r, reduce_ops)):
        if len(rows) != num_edges or len(ops) != num_edges:
            raise ValueError(f"{name}: expected {num_edges} edge rows; got {len(rows)}")
        for e, (row, edge) in enumerate(zip(rows, ops)):
            if len(row) != len(edge):
                raise ValueError(
                    f"{name}: edge {e} has {len(edge)} ops but {len(row)} weights")
            if all(op == "none" for op in edge):
                raise ValueError(f"{name}: edge {e} has only 'none' ops")
    concat = list(range(2 + steps - multiplier, steps + 2))
    return DartsGenotype(normal=_parse_darts_cell(rows_n, normal_ops, steps),
                         normal_concat=concat,
                         reduce=_parse_darts_cell(rows_r, reduce_ops, steps),
                         reduce_concat=concat)


# -- NAS-Bench-201 ---------------------------------------------------------------------------

class NB201Genotype:
    """A NAS-Bench-201 cell: for each node i=1..3, the (op, input) pairs of inputs 0..i-1."""

    def __init__(self, nodes: Sequence[Sequence[tuple[str, int]]]):
        self.nodes = [tuple((str(op), int(j)) for op, j in node) for node in nodes]
        for i, node in enumerate(self.nodes, start=1):
            if sorted(j for _, j in node) != list(range(i)):
                raise ValueError(f"node {i} must list inputs 0..{i - 1} once each; got {node}")

    @classmethod
    def from_string(cls, arch_str: str) -> "NB201Genotype":
        """Parse '|op~0|+|op~0|op~1|+|op~0|op~1|op~2|'."""
        nodes = []
        for part in arch_str.split("+"):
            if not (part.startswith("|") and part.endswith("|")):
                raise ValueError(f"arch_str: malformed node {part!r} in {arch_str!r}")
            node = []
            for item in part[1:-1].split("|"):
                op, sep, j = item.partition("~")
                if not sep or not j.isdigit():
                    raise ValueError(f"arch_str: malformed edge {item!r} in {arch_str!r}")
                if op not in NB201_PRIMITIVES:
                    raise ValueError(f"arch_str: unknown op {op!r}; known: {NB201_PRIMITIVES}")
                node.append((op, int(j)))
            nodes.append(node)
        return cls(nodes)

    def tostr(self) -> str:
        return "+".join("|" + "|".join(f"{op}~{j}" for op, j in node) + "|"
                        for node in self.nodes)

    @property
    def index(self) -> int:
        """Index in the 15,625-architecture NAS-Bench-201 benchmark."""
        return nb201_arch_index(self.tostr())

    def __eq__(self, other) -> bool:
        return isinstance(other, NB201Genotype) and self.nodes == other.nodes

    def __hash__(self) -> int:
        return hash(self.tostr())

    def __repr__(self) -> str:
        return f"NB201Genotype({self.tostr()!r})"


def derive_nb201_genotype(weights, primitives: Sequence[str] = NB201_PRIMITIVES,
                          max_nodes: int = 4) -> NB201Genotype:
    """Argmax op per edge; rows in the sorted 'i<-j' edge order."""
    rows = _as_rows(weights)
    _check_finite(rows, "weights")
    keys = sorted(f"{i}<-{j}" for i in range(1, max_nodes) for j in range(i))
    if len(rows) != len(keys):
        raise ValueError(f"weights: expected {len(keys)} edge rows; got {len(rows)}")
    nodes = []
    for i in range(1, max_nodes):
        node = []
        for j in range(i):
            row = rows[keys.index(f"{i}<-{j}")]
            k = max(range(len(row)), key=lambda k: (row[k], -k))  # first maximum
            node.append((primitives[k], j))
        nodes.append(node)
    return NB201Genotype(nodes)


@functools.lru_cache(maxsize=1)
def nb201_all_arch_strings() -> tuple[str, ...]:
    """The benchmark's 15,625 architecture strings in index order.

    Enumerate lexicographically (edges 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2, last fastest; ops in
    NB201 order), then shuffle with a private `random.Random(88)`, which is what
    `random.seed(88); random.shuffle(archs)` did when the benchmark was generated.
    """
    ops = NB201_PRIMITIVES
    archs = []
    for a in ops:
        for b in ops:
            for c in ops:
                for d in ops:
                    for e in ops:
                        for f in ops:
                            archs.append(f"|{a}~0|+|{b}~0|{c}~1|+|{d}~0|{e}~1|{f}~2|")
    rng = random.Random(88)
    rng.shuffle(archs)
    return tuple(archs)


@functools.lru_cache(maxsize=1)
def _nb201_index_map() -> dict[str, int]:
    return {s: i for i, s in enumerate(nb201_all_arch_strings())}


def nb201_arch_index(arch_str: str) -> int:
    """Benchmark index of an architecture string (exact match, as `archstr2index`)."""
    try:
        return _nb201_index_map()[arch_str]
    except KeyError:
        NB201Genotype.from_string(arch_str)  # raises a precise parse error if malformed
        raise ValueError(f"arch_str {arch_str!r} is not one of the 15,625 NAS-Bench-201 "
                         "architectures (4 nodes, 5 ops)") from None


def nb201_arch_string(index: int) -> str:
    archs = nb201_all_arch_strings()
    if not 0 <= index < len(archs):
        raise ValueError(f"index must be in [0, {len(archs)}); got {index}")
    return archs[index]


# -- JSON ----------------------------------------------------------------------------------

def genotype_to_dict(genotype) -> dict:
    if isinstance(genotype, NB201Genotype):
        return {"space": "nb201", "arch_str": genotype.tostr(), "index": genotype.index}
    if isinstance(genotype, DartsGenotype):
        return {"space": "darts",
                "normal": [[op, j] for op, j in genotype.normal],
                "normal_concat": list(genotype.normal_concat),
                "reduce": [[op, j] for op, j in genotype.reduce],
                "reduce_concat": list(genotype.reduce_concat),
                "repr": repr(genotype)}
    raise TypeError(f"genotype must be a DartsGenotype or NB201Genotype; got {type(genotype)}")


def genotype_from_dict(data: dict):
    space = data.get("space")
    if space == "nb201":
        return NB201Genotype.from_string(data["arch_str"])
    if space == "darts":
        return DartsGenotype(normal=[(op, int(j)) for op, j in data["normal"]],
                             normal_concat=[int(c) for c in data["normal_concat"]],
                             reduce=[(op, int(j)) for op, j in data["reduce"]],
                             reduce_concat=[int(c) for c in data["reduce_concat"]])
    raise ValueError(f"genotype JSON: 'space' must be 'darts' or 'nb201'; got {space!r}")


def save_genotype(path: str | os.PathLike, genotype) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(genotype_to_dict(genotype), f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def load_genotype(path: str | os.PathLike):
    with open(path) as f:
        return genotype_from_dict(json.load(f))
