"""The compiled extension `fastdarts._C`, imported once; the failure is kept, not raised."""
from __future__ import annotations

import json
from pathlib import Path

__all__ = ["C", "IMPORT_ERROR", "build_info", "BUILD_HINT"]

BUILD_HINT = ("build it with: pip install --no-build-isolation -e .  "
              "(from the fastdarts checkout, with torch installed first)")

try:
    from . import _C as C  # type: ignore[attr-defined]
    IMPORT_ERROR: Exception | None = None
except ImportError as e:  # not built, or built against another torch
    C = None
    IMPORT_ERROR = e


def build_info() -> dict:
    """Build metadata written by setup.py (torch/CUDA versions, archs, flags, commit)."""
    path = Path(__file__).with_name("_build_info.json")
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
