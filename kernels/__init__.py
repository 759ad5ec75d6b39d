"""Triton kernels of fastdarts, installed as `fastdarts.kernels`.

Importing this package never touches CUDA. Triton is imported lazily by the kernel
modules; `TRITON_INTERPRET=1` (set before Triton is imported) runs them on the CPU.
"""
from __future__ import annotations

import os

__all__ = ["is_interpreting", "triton_import_error"]


def is_interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (mirrors Triton's own helper)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_import_error() -> Exception | None:
    """None if Triton imports, else the exception it raised."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as e:  # ImportError, or a broken install raising at import
        return e
    return None
