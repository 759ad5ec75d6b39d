"""Test set-up. The first lines must run before anything imports Triton: without a GPU,
Triton kernels run in its interpreter on the CPU."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastdarts.backends import BACKENDS  # noqa: E402


def available_backends() -> list[str]:
    """The backend axis of kernel tests: every registered backend that can run here."""
    return [name for name, cls in BACKENDS.items() if cls.is_available()]


def devices_of(backend: str) -> list[str]:
    devices = list(BACKENDS[backend].devices())
    if not torch.cuda.is_available():
        devices = [d for d in devices if d != "cuda"]
    return devices


def backend_device_pairs():
    return [pytest.param(b, d, id=f"{b}-{d}") for b in available_backends()
            for d in devices_of(b)]


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
