"""Benchmark set-up: environment metadata on every record (device, versions, commit)."""
import os
import platform
import subprocess

import pytest
import torch

if not torch.cuda.is_available():
    # On the CPU the Triton rows would time the interpreter, which says nothing useful.
    os.environ.setdefault("TRITON_INTERPRET", "1")


def git_commit() -> str:
    if os.environ.get("FASTDARTS_COMMIT"):  # copies of the tree without .git
        return os.environ["FASTDARTS_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return platform.processor() or platform.machine()


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["device"] = device_name()
    machine_info["torch"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["git_commit"] = git_commit()
    try:
        import triton
        machine_info["triton"] = triton.__version__
    except ImportError:
        machine_info["triton"] = None
    if torch.cuda.is_available():
        try:
            import pynvml
            pynvml.nvmlInit()
            machine_info["driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception as e:  # NVML may be absent; record why
            machine_info["driver"] = f"unknown ({e})"


@pytest.fixture
def sync():
    return torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
