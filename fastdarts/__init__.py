"""fastdarts: fast, memory-lean differentiable architecture search."""
from __future__ import annotations

__version__ = "0.1.0"  # before the imports: fastdarts.info, imported below, reads it

from .flat import FlatParameters
from .genotypes import (DartsGenotype, NB201Genotype, load_genotype, nb201_arch_index,
                        save_genotype)
from .graphs import CapturedStep, make_capturable
from .hvp import fd_hvp
from .mixed import MEMORY_MODES, FusedMixedOp, MixedOp
from .networks import build_network
from .partial import PartialMixedOp
from .patch import PatchReport, patch, unpatch
from .recompute import recompute
from .search import SearchConfig, run_search
from .spaces import DartsSupernet, NB201Supernet, build_supernet
from .structure import refresh
from .widen import wider

__all__ = ["MixedOp", "FusedMixedOp", "PartialMixedOp", "MEMORY_MODES", "patch", "unpatch",
           "PatchReport", "refresh", "recompute", "wider", "fd_hvp", "FlatParameters",
           "build_supernet", "build_network", "DartsSupernet", "NB201Supernet",
           "SearchConfig", "run_search", "CapturedStep", "make_capturable",
           "DartsGenotype", "NB201Genotype", "save_genotype", "load_genotype",
           "nb201_arch_index", "__version__"]
