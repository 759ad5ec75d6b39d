"""Search methods, one module each; the shared bilevel loop lives in `fastdarts.search`."""
from __future__ import annotations

from .base import SearchAlgorithm
from .darts import DARTS
from .darts_minus import DARTSMinus
from .drnas import DrNAS
from .pcdarts import PCDARTS
from .rfdarts import RFDARTS, RFPCDARTS
from .sdarts import SDARTSADV, SDARTSRS

__all__ = ["ALGORITHMS", "get_algorithm", "algorithm_class", "SearchAlgorithm", "DARTS",
           "PCDARTS", "RFDARTS", "RFPCDARTS", "SDARTSRS", "SDARTSADV", "DrNAS", "DARTSMinus"]

#: name -> class; the CLI offers exactly these.
ALGORITHMS = {cls.name: cls for cls in (DARTS, PCDARTS, RFDARTS, RFPCDARTS, SDARTSRS,
                                        SDARTSADV, DrNAS, DARTSMinus)}


def algorithm_class(name: str) -> type[SearchAlgorithm]:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(f"algo must be one of {sorted(ALGORITHMS)}; got {name!r}") from None


def get_algorithm(name: str, config) -> SearchAlgorithm:
    return algorithm_class(name)(config)
