"""The ImageNet direct-search supernets' step at 224x224, reference / fast / low in one run
(issue 4's benchmark): PC-DARTS's (ImageNet stem, C=16, L=8, K=2, 1000 classes) and DrNAS's
two progressive stages (C=48, L=14, no edge normalisation; stage 1: K=6 and its 7 ops;
stage 2: K=3 and 4 ops per edge, here the 4 heaviest, sep and dil convs, an upper bound
for any pruning).

Per row: the step time (forward + backward, pytest-benchmark) and, from a fresh process
(`memory_probe.py`), the bytes autograd keeps per image, the peak memory over the whole step
and the batch that would fit in 80 GiB at that peak per image (a projection: peak / batch
scaled linearly; on a GPU, measure the largest batch directly with FASTDARTS_BENCH_BATCH).
The original PC-DARTS keeps about 55 MiB per image, which is why it needed 8 GPUs for batch
1024; the target for `low` is at most 1/8 of that (DESIGN.md §5; the same for DrNAS's
110-126 MiB).

    python -m pytest benchmarks/bench_pcdarts.py --benchmark-json=benchmarks/results/X.json
    python benchmarks/summarize.py benchmarks/results/X.json

FASTDARTS_BENCH_BATCH (default 4 on the CPU, 64 on a GPU), FASTDARTS_BENCH_ROUNDS (3 / 10).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.memory_probe import build, probe_env, step

ROOT = Path(__file__).resolve().parents[1]
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BATCH = int(os.environ.get("FASTDARTS_BENCH_BATCH", "64" if DEVICE == "cuda" else "4"))
ROUNDS = int(os.environ.get("FASTDARTS_BENCH_ROUNDS", "10" if DEVICE == "cuda" else "3"))
SIZE = 224
DRNAS_STAGE1_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                    "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")
NETS = {
    "pcdarts-imagenet": dict(C=16, layers=8, partial_k=2),
    "drnas-imagenet-stage1": dict(C=48, layers=14, partial_k=6, primitives=DRNAS_STAGE1_OPS,
                                  edge_normalisation=False),
    "drnas-imagenet-stage2": dict(C=48, layers=14, partial_k=3, primitives=(
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"),
        edge_normalisation=False),
}
GPU_BYTES = 80 * 2**30


def _build(net, mode):
    n = NETS[net]
    return build("darts", mode, n["C"], n["layers"], torch.device(DEVICE), True,
                 stem="imagenet", num_classes=1000, partial_k=n["partial_k"],
                 primitives=n.get("primitives"),
                 edge_normalisation=n.get("edge_normalisation", True))


def _probe(net, mode):
    n = NETS[net]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "memory_probe.py"), "--space", "darts",
           "--mode", mode, "--batch", str(BATCH), "--size", str(SIZE), "--C", str(n["C"]),
           "--layers", str(n["layers"]), "--stem", "imagenet", "--num-classes", "1000",
           "--partial-k", str(n["partial_k"]), "--device", DEVICE, "--repeats", "1"]
    if "primitives" in n:
        cmd += ["--primitives", ",".join(n["primitives"])]
    if not n.get("edge_normalisation", True):
        cmd.append("--no-edge-normalisation")
    # the ImageNet cells' tensors are small: see probe_env
    out = subprocess.run(cmd, capture_output=True, text=True, env=probe_env(ROOT), cwd=ROOT,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["reference", "fast", "low"])
@pytest.mark.parametrize("net", list(NETS))
def test_imagenet_supernet_step(benchmark, net, mode):
    model = _build(net, mode)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, SIZE, SIZE, generator=g).to(DEVICE).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (BATCH,), generator=g).to(DEVICE)

    def run():
        step(model, x, y)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{net} step"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    probe = _probe(net, mode)
    per_image_peak = probe["peak_bytes"] / BATCH
    benchmark.extra_info.update(
        kind="supernet_step", space=net, mode=mode, batch=BATCH, device=DEVICE,
        backend=os.environ.get("FASTDARTS_BACKEND", "auto"),
        median_s=benchmark.stats.stats.median,
        saved_MiB_per_image=probe["saved_bytes_per_image"] / 2**20,
        peak_MiB=probe["peak_bytes"] / 2**20,
        bn_batches_tracked_per_bn=probe["bn_batches_tracked_per_bn"],
        probe_steps=probe["steps_run"], host_work=probe["host_work"],
        projected_batch_80GiB=int(GPU_BYTES // max(per_image_peak, 1.0)),
        num_weights=sum(p.numel() for p in model.weight_parameters()))
