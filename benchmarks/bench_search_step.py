"""The whole search step a user runs (architecture step, weight step, gradient clipping, both
optimisers: `fastdarts.search.search_step`), eager and replayed as a CUDA graph
(`--cuda-graph`, `fastdarts.graphs.CapturedStep`), per method and memory mode, on the DARTS
CIFAR supernet (C=16, L=8, 32x32 images).

bench_mixed_op times the supernet's forward and backward alone. This one answers the user's
question: how long does one iteration of my search take, and what does `--cuda-graph` buy.
Rows: method x memory mode x {eager, graph}; graph rows only on a GPU. Each row's time ratio
is against the eager original (memory="reference") of the same method in the same run.

    python -m pytest benchmarks/bench_search_step.py --benchmark-json=benchmarks/results/X.json
    python benchmarks/summarize.py benchmarks/results/X.json
    python -m benchmarks.bench_search_step [ROUNDS]   # interleaved ratios, as JSON

The last form times every memory mode of a method side by side, one step of each per round
in rotating order, and prints the median over rounds of (mode / eager reference): on a
shared machine only ratios taken this way compare.

FASTDARTS_BENCH_BATCH (default 4 on the CPU, 64 on a GPU), FASTDARTS_BENCH_ROUNDS (3 / 20).
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time

import pytest
import torch

from fastdarts.graphs import make_capturable
from fastdarts.search import SearchConfig, _captured_search_step, build_search, search_step

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = int(os.environ.get("FASTDARTS_BENCH_BATCH", "64" if DEVICE == "cuda" else "4"))
ROUNDS = int(os.environ.get("FASTDARTS_BENCH_ROUNDS", "20" if DEVICE == "cuda" else "3"))
METHODS = {"darts": {}, "darts-order2": dict(order=2), "pcdarts": dict(algo="pcdarts"),
           "drnas": dict(algo="drnas", init_channels=24)}  # C divisible by DrNAS's K=6
MEMORY = ("reference", "fast", "low")
GRAPHED = (False, True) if DEVICE == "cuda" else (False,)
_EAGER_REFERENCE: dict[str, float] = {}


def make_step(method: str, memory: str, graphed: bool, batch: int = BATCH):
    """A call running one search step of `method` in `memory` mode on fixed batches (a new
    draw would time the host's random generator, not the step)."""
    kw = {"init_channels": 16, **METHODS[method]}
    cfg = SearchConfig(dataset="synthetic", layers=8, memory=memory, device=DEVICE,
                       **kw).resolved()
    torch.manual_seed(0)
    device = torch.device(DEVICE)
    algo, model, training = build_search(cfg, 10, 3, device)
    g = torch.Generator().manual_seed(1)

    def batch_of():
        x = torch.randn(batch, 3, 32, 32, generator=g).to(device).contiguous(
            memory_format=torch.channels_last)
        return x, torch.randint(0, 10, (batch,), generator=g).to(device)

    train, val = batch_of(), batch_of()
    lr = training.start_epoch(0)
    if not graphed:
        return lambda: search_step(algo, model, training, train, val, lr, cfg.grad_clip)
    make_capturable(algo.arch_optimizer)  # as run_search does with --cuda-graph
    captured = _captured_search_step(cfg, algo, model, training, lambda: lr)
    return lambda: captured(None, *train, *val)


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("graphed", GRAPHED, ids=lambda g: "graph" if g else "eager")
@pytest.mark.parametrize("memory", MEMORY)
@pytest.mark.parametrize("method", list(METHODS))
def test_search_step(benchmark, method, memory, graphed):
    step = make_step(method, memory, graphed)

    def run():
        step()
        _sync()

    benchmark.group = f"search step {method}"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=3, iterations=1)
    median = benchmark.stats.stats.median
    if memory == "reference" and not graphed:
        _EAGER_REFERENCE[method] = median
    ref = _EAGER_REFERENCE.get(method)  # rows run in parametrisation order: reference first
    benchmark.extra_info.update(
        kind="search_step", method=method, memory=memory, graphed=graphed, batch=BATCH,
        device=DEVICE, backend=os.environ.get("FASTDARTS_BACKEND", "auto"), median_s=median,
        time_vs_eager_reference=None if ref is None else median / ref)


def interleaved(method: str, rounds: int, batch: int = BATCH) -> dict:
    """(mode, graphed) label -> median over rounds of its step time / the eager reference's
    in the same round."""
    rows = {f"{m}{' graph' if g else ''}": make_step(method, m, g, batch)
            for m in MEMORY for g in GRAPHED}
    labels = list(rows)
    for step in rows.values():  # warm-up (and, for graphs, the capture)
        for _ in range(3):
            step()
    ratios = {label: [] for label in labels}
    for r in range(rounds):
        times = {}
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            _sync()
            t0 = time.perf_counter()
            rows[label]()
            _sync()
            times[label] = time.perf_counter() - t0
        for label in labels:
            ratios[label].append(times[label] / times["reference"])
    return {label: round(statistics.median(v), 3) for label, v in ratios.items()}


if __name__ == "__main__":
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    print(json.dumps({m: interleaved(m, n) for m in METHODS}, indent=1))
