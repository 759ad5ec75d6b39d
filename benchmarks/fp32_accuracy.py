"""fp32 gradient accuracy of the fused paths against PyTorch's (issue 22's table).

An independently written PC-DARTS-style (K=4) and DARTS-style (K=1) supernet
(tests/darts_style_model.py), patched in `fast` and `low`, against the plain model: per
gradient tensor the relative error against the fp64 run, for the plain fp32 reference
(once, and as the worst of it and two runs on inputs perturbed at 1e-6) and for the fused
fp32 run; the medians, and the tensors beyond 3x the reference (floor 1e-5) by the rule
of tests/accuracy.py, judged against the one plain run and against the worst of the three
(which absorbs ReLU-kink flips; see tests/accuracy.py).

    python -m benchmarks.fp32_accuracy --C 16 --layers 8 --out benchmarks/results/<name>.json
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastdarts import patch  # noqa: E402
from fastdarts.info import provenance  # noqa: E402
from tests import darts_style_model as dsm  # noqa: E402
from tests.accuracy import accuracy_report, gradients, perturbed  # noqa: E402


def measure(k: int, C: int, layers: int, batch: int, size: int) -> dict:
    torch.manual_seed(0)
    model = dsm.Network(C=C, num_classes=10, layers=layers, steps=4, multiplier=4,
                        k=None if k == 1 else k)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 10, (batch,), generator=g)
    arch = ["alphas_normal", "alphas_reduce"]
    arch += ["betas_normal", "betas_reduce"] if k > 1 else []

    def extra(m):
        return {a: getattr(model, a) for a in arch}

    def loss_on(inputs):
        return lambda m, dtype: F.cross_entropy(m(inputs.to(dtype)), y)

    exact = gradients(model, loss_on(x), torch.float64, extra)
    plain = gradients(model, loss_on(x), torch.float32, extra)
    references = [plain] + [gradients(model, loss_on(perturbed(x, s)), torch.float32, extra)
                            for s in (1, 2)]
    out = {"supernet": f"{'PC-DARTS' if k > 1 else 'DARTS'}-style, C={C}, {layers} cells, "
                       f"K={k}, batch {batch}, {size}x{size}"}
    for mode in ("fast", "low"):
        patched = copy.deepcopy(model)
        patch(patched, memory=mode)
        fused = gradients(patched, loss_on(x), torch.float32, extra)
        one = accuracy_report(fused, plain, exact)
        robust = accuracy_report(fused, references, exact)
        out[mode] = {
            "median_reference": one["median_reference"], "median_fused": one["median_fused"],
            "tensors": one["tensors"], "beyond_3x_one_reference": len(one["broken"]),
            "beyond_3x_perturbed_references": len(robust["broken"]),
            "arch_errors": {a: [accuracy_report({a: fused[a]}, {a: plain[a]},
                                                {a: exact[a]})["median_fused"],
                                accuracy_report({a: plain[a]}, {a: plain[a]},
                                                {a: exact[a]})["median_fused"]]
                            for a in arch}}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--C", type=int, default=16)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    result = {"benchmark": "fp32_accuracy", "provenance": provenance("cpu"),
              "rows": [measure(k, args.C, args.layers, args.batch, args.size) for k in (4, 1)]}
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
