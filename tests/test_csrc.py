"""The CUDA sources stay torch-free, and compile with plain nvcc for sm_80 and sm_90."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[1] / "csrc"
CUDA_SOURCES = sorted(CSRC.glob("*.cu")) + sorted(CSRC.glob("*.cuh"))
TORCH_INCLUDE = re.compile(r'#\s*include\s*[<"](torch|ATen|c10)/')


def test_there_are_cuda_sources():
    assert [p.name for p in CSRC.glob("*.cu")], "no .cu files found in csrc/"


@pytest.mark.parametrize("path", CUDA_SOURCES, ids=lambda p: p.name)
def test_cuda_source_is_torch_free(path):
    offending = [line for line in path.read_text().splitlines() if TORCH_INCLUDE.search(line)]
    assert not offending, f"{path.name} includes torch headers: {offending}"


def test_only_bindings_include_torch():
    for path in sorted(CSRC.glob("*.cpp")) + sorted(CSRC.glob("*.h")):
        if path.name == "bindings.cpp":
            continue
        assert not TORCH_INCLUDE.search(path.read_text()), f"{path.name} includes torch"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("path", sorted(CSRC.glob("*.cu")), ids=lambda p: p.name)
def test_nvcc_compiles(path, tmp_path):
    cmd = ["nvcc", "-c", "-std=c++17", "-I", str(CSRC),
           "-gencode", "arch=compute_80,code=sm_80", "-gencode", "arch=compute_90,code=sm_90",
           str(path), "-o", str(tmp_path / (path.stem + ".o"))]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / (path.stem + ".o")).stat().st_size > 0
