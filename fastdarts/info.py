"""`python -m fastdarts.info`: backends and why each can or cannot run, device, build."""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
import sys
from pathlib import Path

import torch

from . import __version__
from ._ext import IMPORT_ERROR, build_info
from .backends import ENV_VAR, auto_picks, backend_report

__all__ = ["main", "collect", "provenance"]


def _source_commit() -> str | None:
    """The commit of the code that runs: the checkout's HEAD for an editable install (the
    build's commit goes stale once Python files change without a rebuild), with "-dirty"
    when tracked files differ from it; else the commit recorded at build time."""
    source = Path(__file__).resolve().parent.parent
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=source, capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        if (source / ".git").exists():
            head = git("rev-parse", "--short", "HEAD")
            dirty = git("status", "--porcelain", "--untracked-files=no")
            return head + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    commit = build_info().get("git_commit")
    return commit[:7] if commit else None


def _device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} CPU, {torch.get_num_threads()} threads"


def provenance(device: torch.device | str = "cpu") -> dict:
    """Where a result came from, for the files a run writes: code commit, date, device."""
    device = torch.device(device)
    return {"fastdarts": __version__, "commit": _source_commit(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
            "device": _device_description(device), "torch": torch.__version__}


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
