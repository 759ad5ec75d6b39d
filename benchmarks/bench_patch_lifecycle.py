"""`fastdarts.patch` on a DrNAS-style model across its stage change (issue 25's benchmark).

The model is the independently written DrNAS-style search network of the tests
(tests/drnas_style_model.py: partial channels K=4, seven ops, pool+BN wrappers, 5 cells,
C=16). Stage 1 runs it as built; then, in every copy, its own `pruning(4)` (mixing weights
of three ops per edge exactly 0) and `wider(2)` (Net2Wider: new parameters inside every
op), and stage 2 runs it again. Per stage and row (the original, patched `low`, patched
`fast`): the step time (forward + backward) as the median over interleaved rounds of its
ratio to the original's in the same round, the aten kernel calls of one step (what a
host-bound GPU step's time follows), and how many parameters got a gradient (the
original gives the pruned ops none).

    python -m benchmarks.bench_patch_lifecycle --out benchmarks/results/<name>.json

FASTDARTS_BENCH_BATCH (default 8), FASTDARTS_BENCH_AB_ROUNDS (default 7).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastdarts import patch  # noqa: E402
from fastdarts.info import provenance  # noqa: E402
from tests import drnas_style_model as drnas  # noqa: E402

BATCH = int(os.environ.get("FASTDARTS_BENCH_BATCH", "8"))
ROUNDS = int(os.environ.get("FASTDARTS_BENCH_AB_ROUNDS", "7"))
ROWS = ("original", "low", "fast")


def _step(model, x, y):
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()


def _kernel_calls(model, x, y) -> int:
    from torch.utils._python_dispatch import TorchDispatchMode

    count = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if not func.is_view:
                count[0] += 1
            return func(*args, **(kwargs or {}))

    with Count():
        _step(model, x, y)
    return count[0]


def _timed(model, x, y) -> float:
    t0 = time.perf_counter()
    _step(model, x, y)
    return time.perf_counter() - t0


def measure(models: dict, x, y) -> dict:
    for model in models.values():  # warm-up, and each patched op's first-call check
        for _ in range(2):
            _step(model, x, y)
    ratios = {r: [] for r in ROWS}
    seconds = {r: [] for r in ROWS}
    for n in range(ROUNDS):
        order = ROWS[n % len(ROWS):] + ROWS[:n % len(ROWS)]
        times = {r: _timed(models[r], x, y) for r in order}
        for r in ROWS:
            ratios[r].append(times[r] / times["original"])
            seconds[r].append(times[r])
    out = {}
    for r in ROWS:
        _step(models[r], x, y)
        out[r] = {"time_vs_original": statistics.median(ratios[r]),
                  "step_s": statistics.median(seconds[r]),
                  "aten_kernel_calls": _kernel_calls(models[r], x, y),
                  "parameters_with_grad": sum(p.grad is not None
                                              for p in models[r].parameters()),
                  "parameters": sum(1 for _ in models[r].parameters())}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON file to write")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    original = drnas.Network(C=16, num_classes=10, layers=5, steps=4, multiplier=4, k=4)
    models = {"original": original}
    for memory in ("low", "fast"):
        models[memory] = copy.deepcopy(original)
        for a in ("alphas_normal", "alphas_reduce"):
            setattr(models[memory], a, getattr(original, a).detach().clone().requires_grad_())
        patch(models[memory], memory=memory)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (BATCH,), generator=g)
    result = {"benchmark": "patch_lifecycle", "batch": BATCH, "rounds": ROUNDS,
              "model": "tests/drnas_style_model.py Network(C=16, layers=5, steps=4, k=4)",
              "provenance": provenance(torch.device("cpu"))}
    result["stage 1 (K=4, 7 ops)"] = measure(models, x, y)
    for model in models.values():
        model.pruning(4)
        torch.manual_seed(7)
        model.wider(2)
    result["stage 2 (pruned to 4 ops, widened to K=2)"] = measure(models, x, y)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
