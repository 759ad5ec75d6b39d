"""The accuracy rule every fused path is judged by (flash-attention's, issue 22).

Run the same model and inputs three ways: `exact` (the plain reference in fp64, or in fp32
when judging bf16/fp16), `reference` (the plain PyTorch reference in the precision under
test) and `fused` (fastdarts in that precision). Each fused gradient tensor must be no
farther from the exact one than `factor` (3) times the reference is, in relative norm;
below `floor` (1e-5 in fp32) nothing is judged, since there both are at rounding level.
Matching the reference bit for bit is not the goal: the fused kernels sum in another order,
and a different order is no less accurate.

The reference's error is taken as the worst of several equally valid fp32 runs of it: the
plain run and runs on inputs perturbed at fp32's rounding level (`perturbed`). One run is
not enough in a ReLU network: an activation that lies within fp32's rounding noise of the
kink (about 4e-6 absolute after a few cells) may land on either side, and the gradients
of every tensor upstream of it then move by about 1e-3 relative. Issue 22's 500x figures
were such flips (found by tracing one to a single pre-ReLU value of 1.0e-6 in the last
cell, where the fp64 run, the fp32 reference and the fused fp32 run gave 1.0e-6, 2.5e-6 and
-5.8e-7, with the same per-channel noise in both fp32 runs). A lost digit in a kernel shows
in every perturbed run alike; a flip does not, and the perturbed references show its size.
"""
from __future__ import annotations

import copy
import statistics
from typing import Callable

import torch

FACTOR = 3.0
FLOORS = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    want = want.double()
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


def gradients(model: torch.nn.Module, loss_of: Callable, dtype: torch.dtype,
              extra: Callable = lambda model: {}) -> dict[str, torch.Tensor]:
    """{name: gradient} of every parameter of a copy of `model` in `dtype` (and of the
    tensors `extra(model)` names: unregistered alphas), after `loss_of(model, dtype)`."""
    model = copy.deepcopy(model).to(dtype)
    tensors = dict(extra(model))
    for name, t in tensors.items():
        tensors[name] = t.detach().to(dtype).requires_grad_()
        setattr(model, name, tensors[name])
    model.zero_grad(set_to_none=True)
    loss_of(model, dtype).backward()
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    out.update({n: t.grad.detach().clone() for n, t in tensors.items()})
    return out


def perturbed(x: torch.Tensor, seed: int, scale: float = 1e-6) -> torch.Tensor:
    """`x` moved by `scale` relative noise (about the precision's rounding): another
    rounding of the same problem."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float32).to(x.device, x.dtype)
    return x * (1 + scale * noise)


def accuracy_report(fused: dict, reference, exact: dict, dtype=torch.float32,
                    factor: float = FACTOR) -> dict:
    """Per-tensor errors against `exact` (the reference's: the worst of its runs, if
    `reference` is a list of them) and the tensors that break the rule."""
    references = reference if isinstance(reference, list) else [reference]
    assert all(set(fused) == set(r) == set(exact) for r in references), \
        "the runs differ in tensors"
    floor = FLOORS[dtype]
    errors = {n: (relative_error(fused[n], exact[n]),
                  max(relative_error(r[n], exact[n]) for r in references)) for n in exact}
    broken = {n: e for n, e in errors.items() if e[0] > floor and e[0] > factor * e[1]}
    return {"median_fused": statistics.median(e[0] for e in errors.values()),
            "median_reference": statistics.median(e[1] for e in errors.values()),
            "broken": broken, "tensors": len(errors)}


def assert_as_accurate_as_reference(fused: dict, reference, exact: dict,
                                    dtype=torch.float32, what: str = "") -> dict:
    """The rule (module docstring); the message lists the worst tensors that break it."""
    report = accuracy_report(fused, reference, exact, dtype)
    worst = sorted(report["broken"].items(), key=lambda kv: -kv[1][0])[:8]
    assert not worst, (
        f"{what}: {len(report['broken'])} of {report['tensors']} gradients are farther from "
        f"the exact ones than {FACTOR:g}x the plain reference (floor {FLOORS[dtype]:g}): "
        + "; ".join(f"{n}: {f:.2e} vs {r:.2e}" for n, (f, r) in worst))
    return report
