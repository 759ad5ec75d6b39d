"""Search spaces: the DARTS CNN space with RobustDARTS S1-S4, and NAS-Bench-201."""
from __future__ import annotations

from torch import nn

from .darts import SPACE_OPS, Cell, DartsSupernet, MixedOp
from .nb201 import NB201MixedOp, NB201SearchCell, NB201Supernet

__all__ = ["SPACES", "DEFAULT_C", "DEFAULT_LAYERS", "build_supernet", "DartsSupernet",
           "NB201Supernet", "Cell", "MixedOp", "NB201MixedOp", "NB201SearchCell"]

SPACES = ("darts", "s1", "s2", "s3", "s4", "nb201")
#: each space's standard size: the first cells' channels C, and the cells (DARTS spaces) or
#: cells per stage N (NB201)
DEFAULT_C = 16
DEFAULT_LAYERS = {"nb201": 5, **{space: 8 for space in SPACE_OPS}}


def build_supernet(space: str, num_classes: int, in_channels: int = 3, C: int | None = None,
                   layers: int | None = None, stem: str = "cifar", **kwargs) -> nn.Module:
    """Build the search supernet of `space`.

    `C` and `layers` default to each space's standard (DARTS: C=16, L=8 cells; NB201: C=16,
    N=5 cells per stage). For NB201 `layers` is N.
    """
    if space == "nb201":
        if stem != "cifar":
            raise ValueError(f"stem: NAS-Bench-201 has only the CIFAR stem; got {stem!r}")
        return NB201Supernet(C=C or DEFAULT_C, N=layers or DEFAULT_LAYERS[space],
                             num_classes=num_classes, in_channels=in_channels, **kwargs)
    if space in SPACE_OPS:
        return DartsSupernet(C=C or DEFAULT_C, num_classes=num_classes,
                             layers=layers or DEFAULT_LAYERS[space],
                             space=space, stem=stem, in_channels=in_channels, **kwargs)
    raise ValueError(f"space must be one of {list(SPACES)}; got {space!r}")
