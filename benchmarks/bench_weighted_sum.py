"""weighted_sum: forward and forward+backward per backend, ratios against the reference
of the same run (see benchmarks/summarize.py). Rows of one shape and mode share a group."""
import time

import pytest
import torch

from fastdarts.backends import BACKENDS
from fastdarts.weighted_sum import weighted_sum

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# (K, N, C, H, W): a DARTS CIFAR edge (batch 64, C=16, 32x32) and a PC-DARTS ImageNet edge
# (batch 256, C/K = 8 channels, 28x28), both with the 8 DARTS ops.
SHAPES = {"darts-cifar-edge": (8, 64, 16, 32, 32), "pcdarts-imagenet-edge": (8, 256, 8, 28, 28)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _backends():
    names = []
    for name, cls in BACKENDS.items():
        if not cls.is_available() or DEVICE not in cls.devices():
            continue
        if name == "triton" and DEVICE == "cpu":
            continue  # interpreter timings are meaningless
        names.append(name)
    return names


def _energy_mj(fn, seconds=1.0):
    """NVML total-energy difference (mJ per call) around a loop of at least `seconds`."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        start_energy = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:
        return None
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        calls += 1
    torch.cuda.synchronize()
    return (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - start_energy) / calls


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape_name", list(SHAPES))
@pytest.mark.parametrize("mode", ["fwd", "fwd+bwd"])
@pytest.mark.parametrize("backend", _backends())
def test_weighted_sum(benchmark, backend, mode, shape_name, dtype_name, sync):
    dtype = DTYPES[dtype_name]
    if dtype not in BACKENDS[backend].DTYPES:
        pytest.skip(f"{backend} does not take {dtype_name}")
    K, *shape = SHAPES[shape_name]
    ys = torch.randn(K, *shape, device=DEVICE, dtype=dtype, requires_grad=mode != "fwd")
    w = torch.softmax(torch.randn(K, device=DEVICE), 0).requires_grad_(mode != "fwd")
    g = torch.randn(*shape, device=DEVICE, dtype=dtype)

    def step():
        out = weighted_sum(ys, w, backend=backend)
        if mode != "fwd":
            torch.autograd.grad(out, (ys, w), g)
        sync()

    benchmark.group = f"weighted_sum/{shape_name}/{dtype_name}/{mode}"
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(step, rounds=20 if DEVICE == "cuda" else 5, iterations=5,
                       warmup_rounds=3)
    numel = ys.numel()
    # fwd reads K inputs, writes 1; bwd reads K inputs + g, writes K gradients
    elements = numel + numel // K + (0 if mode == "fwd" else 2 * numel + numel // K)
    data = sorted(benchmark.stats.stats.data)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "backend": backend, "device": DEVICE,
        "median_s": median, "p20_s": data[int(0.2 * (len(data) - 1))],
        "p80_s": data[int(0.8 * (len(data) - 1))],
        "GB_per_s": elements * ys.element_size() / median / 1e9,
    })
    if DEVICE == "cuda":
        benchmark.extra_info["peak_MiB"] = torch.cuda.max_memory_allocated() / 2**20
        benchmark.extra_info["energy_mJ_per_call"] = _energy_mj(step)
