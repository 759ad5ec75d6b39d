"""Supernet step with the fused mixed op: reference / torch.utils.checkpoint on every cell /
fast / low, in one run, for the DARTS CIFAR supernet (C=16, L=8) and NB201 (C=16, N=5).

Per row: the step time (forward + backward, pytest-benchmark), and from a fresh process
(`memory_probe.py`, so one row's allocations do not hide another's) the bytes autograd keeps
per image, the peak memory over the whole step and the BN `num_batches_tracked` per BN after
the probe's steps (checkpoint updates statistics twice per step). On a GPU also NVML energy.

    python -m pytest benchmarks/bench_mixed_op.py --benchmark-json=benchmarks/results/X.json
    python benchmarks/summarize.py benchmarks/results/X.json

Load on a shared machine drifts over the minutes between rows, so each row also gets its
time ratio to the reference from an interleaved run: all four modes built side by side, one
step of each per round in rotating order, the median over rounds of (mode / reference) of the
same round (FASTDARTS_BENCH_AB_ROUNDS rounds, default 9 on the CPU, 20 on a GPU).

On a GPU, rows `test_supernet_step_cuda_graph` replay the step of reference, fast and low as
a CUDA graph (`fastdarts.graphs`), which takes the host's launch work out of the step time;
their ratios are against the reference replayed the same way and against the eager one.

Shapes: FASTDARTS_BENCH_BATCH (default 8 on the CPU, 64 on a GPU), 32x32 images;
FASTDARTS_BENCH_ROUNDS timed steps per row (default 5 on the CPU, 20 on a GPU).
"""
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.memory_probe import MODES, build, step
from fastdarts.graphs import CapturedStep

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = int(os.environ.get("FASTDARTS_BENCH_BATCH", "64" if DEVICE == "cuda" else "8"))
ROUNDS = int(os.environ.get("FASTDARTS_BENCH_ROUNDS", "20" if DEVICE == "cuda" else "5"))
AB_ROUNDS = int(os.environ.get("FASTDARTS_BENCH_AB_ROUNDS", "20" if DEVICE == "cuda" else "9"))
SUPERNETS = {"darts": dict(C=16, layers=8), "nb201": dict(C=16, layers=5)}
GRAPH_MODES = ("reference", "fast", "low")  # checkpoint's rows say enough without a graph


def _inputs(batch: int = BATCH, size: int = 32):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g).to(DEVICE).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g).to(DEVICE)
    return x, y


def _cpu_ticks():
    """(steal, total) jiffies of this machine (/proc/stat), or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except OSError:
        return None
    return fields[7], sum(fields)


def steal_fraction(before, after):
    """Share of CPU time the hypervisor took from this VM between two `_cpu_ticks()`: on a
    shared machine the timings of a row are only comparable at similar steal."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1])


def _timed(run) -> float:
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run()
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def runner(model, x, y, graphed: bool = False):
    """One supernet step of `model` on (x, y) as a call; `graphed`: replayed as a CUDA graph
    (`fastdarts.graphs.CapturedStep`, captured on the third call)."""
    if not graphed:
        return lambda: step(model, x, y)
    captured = CapturedStep(lambda x, y: step(model, x, y).detach())
    return lambda: captured(None, x, y)


def interleaved(space: str, modes=MODES, batch: int = BATCH, size: int = 32,
                rounds: int = AB_ROUNDS, graphed: bool = False) -> dict:
    """mode -> median over rounds of (its step time / the reference's in the same round),
    with every mode built side by side and run once per round in rotating order; "steal":
    the CPU share the hypervisor took meanwhile. `graphed`: every mode's step is a CUDA
    graph replay, and "eager reference" is the reference without one."""
    cfg = SUPERNETS[space]
    runs = {m: runner(build(space, m, cfg["C"], cfg["layers"], torch.device(DEVICE), True),
                      *_inputs(batch, size), graphed) for m in modes}
    if graphed:
        modes = (*modes, "eager reference")
        runs["eager reference"] = runner(build(space, "reference", cfg["C"], cfg["layers"],
                                               torch.device(DEVICE), True), *_inputs(batch, size))
    for run in runs.values():  # warm-up (and the captures)
        for _ in range(3):
            run()
    ratios = {m: [] for m in modes}
    ticks = _cpu_ticks()
    for r in range(rounds):
        order = modes[r % len(modes):] + modes[:r % len(modes)]
        times = {m: _timed(runs[m]) for m in order}
        for m in modes:
            ratios[m].append(times[m] / times["reference"])
    out = {m: statistics.median(v) for m, v in ratios.items()}
    out["steal"] = steal_fraction(ticks, _cpu_ticks())
    return out


@functools.lru_cache(maxsize=None)
def interleaved_ratios(space: str, graphed: bool = False) -> dict:
    return interleaved(space, GRAPH_MODES if graphed else MODES, graphed=graphed)


def _probe(space, mode):
    cfg = SUPERNETS[space]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "memory_probe.py"), "--space", space,
           "--mode", mode, "--batch", str(BATCH), "--C", str(cfg["C"]), "--layers",
           str(cfg["layers"]), "--device", DEVICE, "--repeats", "1"]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONPATH=str(ROOT))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _energy_mj(fn, calls=5):
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        torch.cuda.synchronize()
        start = pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        power = []
        for _ in range(calls):
            fn()
            power.append(pynvml.nvmlDeviceGetPowerUsage(handle) / 1000)
        torch.cuda.synchronize()
        return (pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) - start) / calls, \
            sum(power) / len(power)
    except Exception:  # NVML absent: leave the fields out rather than guess
        return None, None


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("space", list(SUPERNETS))
def test_supernet_step(benchmark, space, mode):
    cfg = SUPERNETS[space]
    model = build(space, mode, cfg["C"], cfg["layers"], torch.device(DEVICE), True)
    x, y = _inputs()

    def run():
        step(model, x, y)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{space} step"
    ticks = _cpu_ticks()
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=2, iterations=1)
    steal = steal_fraction(ticks, _cpu_ticks())
    stats = benchmark.stats.stats
    probe = _probe(space, mode)
    ab = interleaved_ratios(space)
    info = benchmark.extra_info
    info.update(kind="supernet_step", space=space, mode=mode, batch=BATCH, device=DEVICE,
                backend=os.environ.get("FASTDARTS_BACKEND", "auto"),
                median_s=stats.median,
                time_vs_reference_interleaved=ab[mode], ab_rounds=AB_ROUNDS,
                cpu_steal=steal, cpu_steal_interleaved=ab["steal"],
                saved_MiB_per_image=probe["saved_bytes_per_image"] / 2**20,
                peak_MiB=probe["peak_bytes"] / 2**20,
                bn_batches_tracked_per_bn=probe["bn_batches_tracked_per_bn"],
                probe_steps=probe["steps_run"], host_work=probe["host_work"])
    if DEVICE == "cuda":
        info["energy_mJ_per_step"], info["power_W"] = _energy_mj(run)


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("mode", GRAPH_MODES)
@pytest.mark.parametrize("space", list(SUPERNETS))
def test_supernet_step_cuda_graph(benchmark, space, mode):
    """The same step replayed as a CUDA graph: what each mode costs once the host's launch
    work is gone, against the reference replayed the same way and against the eager one."""
    cfg = SUPERNETS[space]
    model = build(space, mode, cfg["C"], cfg["layers"], torch.device(DEVICE), True)
    x, y = _inputs()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run_step = runner(model, x, y, graphed=True)

    def run():
        run_step()
        torch.cuda.synchronize()

    benchmark.group = f"{space} step, CUDA graph"
    # the warm-up rounds include the two eager steps and the capture; the graph's private
    # pool then holds the step's memory between replays, which the peak below includes
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=3, iterations=1)
    peak_mib = (torch.cuda.max_memory_allocated() - before) / 2**20
    ab = interleaved_ratios(space, graphed=True)
    ab_reference_eager = ab["eager reference"]
    info = benchmark.extra_info
    info.update(kind="supernet_step_graph", space=space, mode=mode, batch=BATCH, device=DEVICE,
                backend=os.environ.get("FASTDARTS_BACKEND", "auto"),
                median_s=benchmark.stats.stats.median, ab_rounds=AB_ROUNDS, peak_MiB=peak_mib,
                time_vs_graphed_reference_interleaved=ab[mode],
                time_vs_eager_reference_interleaved=ab[mode] / ab_reference_eager)
    info["energy_mJ_per_step"], info["power_W"] = _energy_mj(run)


def host_bound_proxy(rounds: int = 15) -> dict:
    """The step where compute is small and the host's work decides, as at the GPU sizes of
    this benchmark: batch 1, 8x8 images, one CPU thread; interleaved ratios of `fast` and
    `low` to the reference (`interleaved`)."""
    torch.set_num_threads(1)
    return {space: interleaved(space, ("reference", "fast", "low"), batch=1, size=8,
                               rounds=rounds) for space in SUPERNETS}


if __name__ == "__main__":
    # python -m benchmarks.bench_mixed_op [ROUNDS]: the host-bound proxy, as JSON
    print(json.dumps(host_bound_proxy(*(int(a) for a in sys.argv[1:2])), indent=1))
