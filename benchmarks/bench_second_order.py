"""Second-order DARTS: the architecture step with the flat-buffer FD-HVP (fastdarts) against
the copy-based reference written the original's way (`fastdarts.reference.second_order`: a
deep copy of the supernet per step, per-tensor perturbations), on the DARTS CIFAR supernet
(C=16, L=8, 32x32), in one run (issue 5's benchmark).

Rows: `copy` (the original's algorithm on the plain supernet), `flat` (fastdarts on the same
plain supernet: isolates the second-order machinery) and `flat-low` (fastdarts with the
supernet in `low` memory mode: the whole stack). Per row: the architecture step time
(gradient only; the Adam step is the same for both), the peak memory over one step from a
fresh process (CPU: resident-set high-water mark with MALLOC_MMAP_THRESHOLD_ fixed, as
memory_probe.py; GPU: max_memory_allocated), and the operations the HVP part launches
outside the model's forward and backward passes, counted with torch.profiler: every
`fastdarts::hvp_*` kernel call, plus every top-level tensor operation under the
`fastdarts::second_order_arithmetic` label both implementations put on their bookkeeping
(copies, zeroing, concatenation, the model copy, the per-tensor perturbation loops).

    python -m pytest benchmarks/bench_second_order.py --benchmark-json=benchmarks/results/X.json
    python benchmarks/summarize.py benchmarks/results/X.json

FASTDARTS_BENCH_BATCH (default 8 on the CPU, 64 on a GPU), FASTDARTS_BENCH_ROUNDS (3 / 10).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = int(os.environ.get("FASTDARTS_BENCH_BATCH", "64" if DEVICE == "cuda" else "8"))
ROUNDS = int(os.environ.get("FASTDARTS_BENCH_ROUNDS", "10" if DEVICE == "cuda" else "3"))
ROWS = {"copy": "reference", "flat": "reference", "flat-low": "low"}  # row -> memory mode


def _loss_of(model, x, y):
    return F.cross_entropy(model(x, model.mixing_weights()), y)


def setup(row: str, batch: int, device: str):
    """The supernet after one weight step (momentum buffers exist), its SGD, the batches and
    a function running one architecture gradient of `row`."""
    from fastdarts.algorithms import DARTS
    from fastdarts.flat import FlatParameters
    from fastdarts.reference.second_order import unrolled_arch_grads_ref
    from fastdarts.search import SearchConfig
    from fastdarts.spaces import build_supernet

    torch.manual_seed(0)
    model = build_supernet("darts", 10, C=16, layers=8, memory=ROWS[row]).to(device)
    model = model.to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(1)

    def batch_of():
        x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
        return (x.contiguous(memory_format=torch.channels_last),
                torch.randint(0, 10, (batch,), generator=gen).to(device))

    train, val = batch_of(), batch_of()
    flat = FlatParameters(model.weight_parameters(), "weights") if row != "copy" else None
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9,
                          weight_decay=3e-4)
    opt.zero_grad()
    _loss_of(model, *train).backward()
    opt.step()
    if row == "copy":
        def run():
            grads = unrolled_arch_grads_ref(model, _loss_of, train, val, opt)
            for a, g in zip(model.arch_parameters(), grads):
                a.grad = g
    else:
        algo = DARTS(SearchConfig(order=2).resolved())
        algo.setup(model, opt, flat)
        algo.mixing_weights = lambda m, phase: m.mixing_weights()

        def run():
            algo.second_order_grads(model, train, val)
    return model, run


def count_hvp_operations(run) -> dict:
    """Operations of the HVP part outside the model passes (module docstring)."""
    from fastdarts.hvp import ARITHMETIC
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
    events = prof.events()
    kernels = sum(1 for e in events if e.name.startswith("fastdarts::hvp_"))
    bookkeeping = sum(1 for e in events if e.name == ARITHMETIC for c in e.cpu_children
                      if not c.name.startswith("fastdarts::"))
    return {"hvp_kernel_calls": kernels, "bookkeeping_ops": bookkeeping,
            "hvp_operations": kernels + bookkeeping}


def probe(row: str, batch: int, device: str) -> dict:
    """Peak memory over one architecture step, measured after a warm-up step."""
    from benchmarks.memory_probe import _rss_kib
    model, run = setup(row, batch, device)
    run()  # warm-up: caches, allocator pools
    for a in model.arch_parameters():
        a.grad = None
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        run()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        base = _rss_kib("VmRSS")
        run()
        peak = (_rss_kib("VmHWM") - base) * 1024
    return {"peak_bytes": peak, "num_weights": sum(p.numel() for p in model.weight_parameters()),
            "num_weight_tensors": len(model.weight_parameters())}


def _probe_subprocess(row: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.bench_second_order", "--probe", row, "--batch",
           str(BATCH), "--device", DEVICE]
    from benchmarks.memory_probe import probe_env
    out = subprocess.run(cmd, capture_output=True, text=True, env=probe_env(ROOT), cwd=ROOT,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _bench(benchmark, row):
    model, run = setup(row, BATCH, DEVICE)

    def timed():
        run()
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = "second-order architecture step"
    benchmark.pedantic(timed, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    counts = count_hvp_operations(run)
    mem = _probe_subprocess(row)
    benchmark.extra_info.update(
        kind="second_order_step", space="darts", row=row, mode=ROWS[row], batch=BATCH,
        device=DEVICE, backend=os.environ.get("FASTDARTS_BACKEND", "auto"),
        median_s=benchmark.stats.stats.median, peak_MiB=mem["peak_bytes"] / 2**20,
        num_weights=mem["num_weights"], num_weight_tensors=mem["num_weight_tensors"],
        **counts)


def test_second_order_copy(benchmark):
    _bench(benchmark, "copy")


def test_second_order_flat(benchmark):
    _bench(benchmark, "flat")


def test_second_order_flat_low(benchmark):
    _bench(benchmark, "flat-low")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--probe", choices=sorted(ROWS), required=True)
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--device", default=DEVICE)
    args = parser.parse_args()
    print(json.dumps(probe(args.probe, args.batch, args.device)))
