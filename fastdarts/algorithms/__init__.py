"""Search methods, one module each; the shared bilevel loop lives in `fastdarts.search`."""
from __future__ import annotations

from .base import SearchAlgorithm
from .darts import DARTS

__all__ = ["ALGORITHMS", "get_algorithm", "SearchAlgorithm", "DARTS"]

#: name -> class; the CLI offers exactly these.
ALGORITHMS = {cls.name: cls for cls in (DARTS,)}


def get_algorithm(name: str, config) -> SearchAlgorithm:
    try:
        cls = ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algo must be one of {sorted(ALGORITHMS)}; got {name!r}") from None
    return cls(config)
