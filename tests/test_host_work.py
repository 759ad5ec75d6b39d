"""benchmarks.memory_probe.host_work: the per-step host work the benchmarks report (what the
fused modes must not add to on a host-bound GPU) is counted exactly and leaves the backends
as it found them."""
import torch

from benchmarks.memory_probe import build, host_work
from fastdarts.backends import BACKENDS
from fastdarts.mixed import FusedMixedOp
from fastdarts.plans import plans_of


def _ops(model, tails_only):
    return sum(1 for m in model.modules() if isinstance(m, FusedMixedOp) for p in plans_of(m)
               if p.kind != "zero" and (not tails_only or (p.kind == "body" and p.tail)))


def test_counts_every_fused_kernel_call_and_restores_the_backends():
    before = {(n, k): v for n, cls in BACKENDS.items() for k, v in vars(cls).items()}
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    low = build("darts", "low", 4, 3, torch.device("cpu"), False)
    got = host_work(low, x, y)
    calls = got["fastdarts_calls"]
    tails, active = _ops(low, True), _ops(low, False)
    # Statistics once per tail (the recompute reuses them), the weighted sum in the forward
    # only (the node-wise replay never reads it), one backward reduction per active op, dz
    # per tail op.
    assert calls["bn_stats"] == tails
    assert calls["bn_accumulate"] == active
    assert calls["bn_grad_reduce"] == active
    assert calls["bn_grad_input"] == tails
    assert got["aten_ops"] > got["aten_kernel_ops"] > 0
    assert got["cuda_launches_estimate"] == got["aten_kernel_ops"] + sum(
        n * (2 if k in ("bn_stats", "bn_grad_reduce") else 1) for k, n in calls.items())
    after = {(n, k): v for n, cls in BACKENDS.items() for k, v in vars(cls).items()}
    assert after == before

    ref = build("darts", "reference", 4, 3, torch.device("cpu"), False)
    plain = host_work(ref, x, y)
    assert plain["fastdarts_calls"] == {}
    assert plain["cuda_launches_estimate"] == plain["aten_kernel_ops"]
