"""`python -m fastdarts.info`: backends and why each can or cannot run, device, build."""
from __future__ import annotations

import json
import platform
import sys

import torch

from . import __version__
from ._ext import IMPORT_ERROR, build_info
from .backends import ENV_VAR, auto_picks, backend_report

__all__ = ["main", "collect"]


def collect() -> dict:
    info = {
        "fastdarts": __version__, "python": platform.python_version(),
        "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "extension_import_error": None if IMPORT_ERROR is None else str(IMPORT_ERROR),
        "build": build_info(),
        "backends": {name: {"available": ok, "reasons": reasons}
                     for name, ok, reasons in backend_report()},
        "auto": auto_picks(),
    }
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception as e:  # report, do not fail
        info["triton"] = f"not importable: {e}"
    return info


def main() -> int:
    info = collect()
    if "--json" in sys.argv[1:]:
        print(json.dumps(info, indent=2))
        return 0
    print(f"fastdarts {info['fastdarts']}  python {info['python']}  torch {info['torch']} "
          f"(CUDA {info['torch_cuda']})  triton {info['triton']}")
    print(f"device: {info['device']}")
    build = info["build"]
    if build:
        print(f"build: torch {build.get('torch')}, with_cuda={build.get('with_cuda')}, "
              f"archs={build.get('cuda_archs')}, commit={build.get('git_commit')}")
    else:
        print("build: no build metadata (extension not built)")
    print(f"backends ({ENV_VAR} selects one; default auto):")
    for name, entry in info["backends"].items():
        state = "available" if entry["available"] else "unavailable"
        reasons = f": {'; '.join(entry['reasons'])}" if entry["reasons"] else ""
        print(f"  {name:<10} {state}{reasons}")
    picks = ", ".join(f"{device} tensors -> {name}" for device, name in info["auto"].items())
    print(f"auto picks here: {picks}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
