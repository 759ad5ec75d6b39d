"""PC-DARTS's ImageNet supernet step (ImageNet stem, C=16, L=8, K=2, 1000 classes, 224x224):
reference / fast / low, in one run (issue 4's benchmark).

Per row: the step time (forward + backward, pytest-benchmark) and, from a fresh process
(`memory_probe.py`), the bytes autograd keeps per image, the peak memory over the whole step
and the batch that would fit in 80 GiB at that peak per image (a projection: peak / batch
scaled linearly; on a GPU, measure the largest batch directly with FASTDARTS_BENCH_BATCH).
The original PC-DARTS keeps about 55 MiB per image, which is why it needed 8 GPUs for batch
1024; the target for `low` is at most 1/8 of that.

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
NET = dict(space="darts", C=16, layers=8, stem="imagenet", num_classes=1000, partial_k=2,
           size=224)
GPU_BYTES = 80 * 2**30


def _probe(mode):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "memory_probe.py"), "--space",
           NET["space"], "--mode", mode, "--batch", str(BATCH), "--size", str(NET["size"]),
           "--C", str(NET["C"]), "--layers", str(NET["layers"]), "--stem", NET["stem"],
           "--num-classes", str(NET["num_classes"]), "--partial-k", str(NET["partial_k"]),
           "--device", DEVICE, "--repeats", "1"]
    # the ImageNet cells' tensors are small: see probe_env
    out = subprocess.run(cmd, capture_output=True, text=True, env=probe_env(ROOT), cwd=ROOT,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["reference", "fast", "low"])
def test_pcdarts_imagenet_step(benchmark, mode):
    model = build(NET["space"], mode, NET["C"], NET["layers"], torch.device(DEVICE), True,
                  stem=NET["stem"], num_classes=NET["num_classes"], partial_k=NET["partial_k"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, NET["size"], NET["size"], generator=g).to(DEVICE).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, NET["num_classes"], (BATCH,), generator=g).to(DEVICE)

    def run():
        step(model, x, y)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = "pcdarts-imagenet step"
    benchmark.pedantic(run, rounds=ROUNDS, warmup_rounds=1, iterations=1)
    probe = _probe(mode)
    per_image_peak = probe["peak_bytes"] / BATCH
    benchmark.extra_info.update(
        kind="supernet_step", space="pcdarts-imagenet", mode=mode, batch=BATCH, device=DEVICE,
        backend=os.environ.get("FASTDARTS_BACKEND", "auto"),
        median_s=benchmark.stats.stats.median,
        saved_MiB_per_image=probe["saved_bytes_per_image"] / 2**20,
        peak_MiB=probe["peak_bytes"] / 2**20,
        bn_batches_tracked_per_bn=probe["bn_batches_tracked_per_bn"],
        probe_steps=probe["steps_run"],
        projected_batch_80GiB=int(GPU_BYTES // max(per_image_peak, 1.0)),
        num_weights=sum(p.numel() for p in model.weight_parameters()))
