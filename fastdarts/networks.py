"""The evaluation networks a DARTS-family genotype is retrained in (ALGORITHMS.md §1.1.6).

`build_network(genotype, dataset)` returns the network the original code trains from
scratch: NetworkCIFAR (C=36, 20 cells, the 3x3 stem) for 32x32 data, NetworkImageNet (C=48,
14 cells, the three-conv stride-8 stem) for ImageNet. Differences from the search cell:
every BN is affine, pools have no BN, each node is the sum of exactly the genotype's two
ops, drop-path on every op that is not an identity, and an auxiliary head after cell 2L/3
(its loss weighted 0.4 in training). Module names and parameter counts are the original's
(`parameter_count` leaves the auxiliary head out, as the original's
`count_parameters_in_MB` does): DARTS_V2 on CIFAR-10 has 3,349,342.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
from torch import nn

from .genotypes import DartsGenotype, load_genotype
from .ops.darts import OPS, FactorizedReduce, Identity, ReLUConvBN

__all__ = ["EvalCell", "NetworkCIFAR", "NetworkImageNet", "build_network", "parameter_count",
           "drop_path", "resolve_genotype"]


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero each sample's path with probability `drop_prob`, scaling the kept ones up."""
    if drop_prob <= 0.0:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    """One cell of a genotype: node i sums its two ops, each applied to an earlier state."""

    def __init__(self, genotype: DartsGenotype, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(C_prev_prev, C) if reduction_prev
                            else ReLUConvBN(C_prev_prev, C, 1, 1, 0))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        ops, concat = ((genotype.reduce, genotype.reduce_concat) if reduction
                       else (genotype.normal, genotype.normal_concat))
        if len(ops) % 2:
            raise ValueError(f"genotype: each node takes two ops; got {len(ops)} ops")
        self._steps = len(ops) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = [index for _, index in ops]
        self._ops = nn.ModuleList()
        for n, (name, index) in enumerate(ops):
            if name not in OPS:
                raise ValueError(f"genotype: unknown op {name!r}; known: {sorted(OPS)}")
            if not 0 <= index < 2 + n // 2:
                raise ValueError(f"genotype: op {n} ({name}) reads state {index}, which node "
                                 f"{n // 2} cannot see (states 0..{1 + n // 2})")
            stride = 2 if reduction and index < 2 else 1
            self._ops.append(OPS[name](C, stride, True))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            node = 0
            for j in (2 * i, 2 * i + 1):
                h = self._ops[j](states[self._indices[j]])
                if self.training and drop_prob > 0 and not isinstance(self._ops[j], Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self._concat], dim=1)


class _AuxiliaryHead(nn.Module):
    """The original's auxiliary classifier on the 8x8 (CIFAR) or 14x14 (ImageNet) features."""

    def __init__(self, C: int, num_classes: int, imagenet: bool):
        super().__init__()
        stride = 2 if imagenet else 3
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=stride, padding=0, count_include_pad=False),
            nn.Conv2d(C, 128, 1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            # the ImageNet head has no BN here in the original (it is commented out there)
            *(() if imagenet else (nn.BatchNorm2d(768),)),
            nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class _Network(nn.Module):
    """The cells, the auxiliary head and the classifier, shared by both networks."""

    def _build_cells(self, genotype, C: int, layers: int, C_prev_prev: int, C_prev: int,
                     reduction_prev: bool, num_classes: int, auxiliary: bool, imagenet: bool):
        self._layers, self.drop_path_prob = layers, 0.0
        self.cells = nn.ModuleList()
        C_curr, C_aux = C, None
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = EvalCell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            self.cells.append(cell)
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == 2 * layers // 3:
                C_aux = C_prev
        self.auxiliary_head = (_AuxiliaryHead(C_aux, num_classes, imagenet) if auxiliary
                               else None)
        self.classifier = nn.Linear(C_prev, num_classes)

    def _run_cells(self, s0, s1):
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == 2 * self._layers // 3 and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux


class NetworkCIFAR(_Network):
    """DARTS's CIFAR evaluation network; forward returns (logits, auxiliary logits or None)."""

    def __init__(self, genotype: DartsGenotype, C: int = 36, num_classes: int = 10,
                 layers: int = 20, auxiliary: bool = True, in_channels: int = 3,
                 stem_multiplier: int = 3):
        super().__init__()
        C_stem = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, C_stem, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_stem))
        self._build_cells(genotype, C, layers, C_stem, C_stem, False, num_classes, auxiliary,
                          imagenet=False)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        s = self.stem(x)
        out, logits_aux = self._run_cells(s, s)
        return self.classifier(self.global_pooling(out).flatten(1)), logits_aux


class NetworkImageNet(_Network):
    """DARTS's ImageNet evaluation network (224x224 input; stem stride 8)."""

    def __init__(self, genotype: DartsGenotype, C: int = 48, num_classes: int = 1000,
                 layers: int = 14, auxiliary: bool = True, in_channels: int = 3):
        super().__init__()
        self.stem0 = nn.Sequential(
            nn.Conv2d(in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2), nn.ReLU(inplace=True),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(C))
        self.stem1 = nn.Sequential(nn.ReLU(inplace=True),
                                   nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
                                   nn.BatchNorm2d(C))
        self._build_cells(genotype, C, layers, C, C, True, num_classes, auxiliary,
                          imagenet=True)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)  # the original's AvgPool2d(7) at 224

    def forward(self, x):
        s0 = self.stem0(x)
        out, logits_aux = self._run_cells(s0, self.stem1(s0))
        return self.classifier(self.global_pooling(out).flatten(1)), logits_aux


def parameter_count(model: nn.Module) -> int:
    """Trained parameters without the auxiliary head, as the original reports them."""
    return sum(p.numel() for n, p in model.named_parameters() if "auxiliary" not in n)


def resolve_genotype(genotype) -> DartsGenotype:
    """A DartsGenotype from itself, a genotype.json, a search run directory or a published
    name (`fastdarts.genotypes`)."""
    if isinstance(genotype, DartsGenotype):
        return genotype
    if isinstance(genotype, str) and not os.path.exists(genotype):
        from . import genotypes
        named = {n: getattr(genotypes, n) for n in genotypes.__all__
                 if isinstance(getattr(genotypes, n), DartsGenotype)}
        if genotype not in named:
            raise ValueError(f"genotype: {genotype!r} is neither a genotype.json file nor a "
                             f"published genotype ({', '.join(sorted(named))})")
        return named[genotype]
    if isinstance(genotype, (str, os.PathLike)):
        path = os.fspath(genotype)
        if os.path.isdir(path):
            path = os.path.join(path, "genotype.json")
        loaded = load_genotype(path)
        if not isinstance(loaded, DartsGenotype):
            raise ValueError(f"genotype: {path} holds a NAS-Bench-201 architecture, which is "
                             f"trained in the NB201 network, not a DARTS evaluation network")
        return loaded
    raise TypeError(f"genotype: expected a DartsGenotype, a genotype.json path or a published "
                    f"name; got {type(genotype).__name__}")


def build_network(genotype, dataset: str = "cifar10", C: Optional[int] = None,
                  layers: Optional[int] = None, auxiliary: bool = True,
                  num_classes: Optional[int] = None, in_channels: int = 3) -> nn.Module:
    """The evaluation network of `genotype` (a DartsGenotype, a `genotype.json` file or run
    directory, or a published name such as "DARTS_V2") for `dataset`: NetworkImageNet for
    "imagenet", NetworkCIFAR otherwise, with the original's C and depth unless given."""
    genotype = resolve_genotype(genotype)
    classes = {"cifar10": 10, "cifar100": 100, "svhn": 10, "imagenet": 1000,
               "imagenet16-120": 120, "digits": 10}
    if num_classes is None:
        if dataset not in classes:
            raise ValueError(f"dataset must be one of {sorted(classes)}; got {dataset!r}")
        num_classes = classes[dataset]
    if dataset == "imagenet":
        return NetworkImageNet(genotype, C or 48, num_classes, layers or 14, auxiliary,
                               in_channels)
    return NetworkCIFAR(genotype, C or 36, num_classes, layers or 20, auxiliary, in_channels)
