"""Where a supernet step's time goes, per memory mode: a torch.profiler table of one step.

At the GPU benchmark's sizes the step is bound by the host, so the question a slow row asks
is which calls the host spends its time on. Per mode this prints the host time of the
profiled steps, the device time (on a GPU), and the ops with the most self host time, with
their call counts.

    python -m benchmarks.profile_step [--space darts] [--modes reference,fast,low]
        [--batch 64] [--steps 3] [--top 20] [--device cuda]
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.memory_probe import build, step

SUPERNETS = {"darts": 8, "nb201": 5}


def profile_mode(space: str, mode: str, batch: int, steps: int, device: str):
    model = build(space, mode, 16, SUPERNETS[space], torch.device(device), True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, 32, 32, generator=g).to(device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), generator=g).to(device)
    for _ in range(2):  # warm-up: plans, Triton compilation, allocator
        step(model, x, y)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    if device == "cuda":
        torch.cuda.synchronize()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(model, x, y)
        if device == "cuda":
            torch.cuda.synchronize()
    return prof.key_averages()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", choices=list(SUPERNETS), default="darts")
    ap.add_argument("--modes", default="reference,fast,low")
    ap.add_argument("--batch", type=int, default=None, help="64 on a GPU, 8 on the CPU")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=20)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    batch = args.batch or (64 if args.device == "cuda" else 8)
    for mode in args.modes.split(","):
        events = profile_mode(args.space, mode, batch, args.steps, args.device)
        host_ms = sum(e.self_cpu_time_total for e in events) / 1e3 / args.steps
        device_ms = sum(getattr(e, "self_device_time_total", 0) for e in events) / 1e3 / args.steps
        print(f"== {args.space} {mode} batch {batch}: self host time {host_ms:.1f} ms/step, "
              f"device time {device_ms:.1f} ms/step, {sum(e.count for e in events) // args.steps}"
              f" profiled calls/step")
        print(events.table(sort_by="self_cpu_time_total", row_limit=args.top,
                           max_name_column_width=60))


if __name__ == "__main__":
    main()
