"""benchmarks.memory_probe.host_work: the per-step host work the benchmarks report (what the
fused modes must not add to on a host-bound GPU) is counted exactly and leaves the backends
as it found them."""
import torch

from benchmarks.memory_probe import build, host_work
from fastdarts.backends import BACKENDS
from fastdarts.mixed import FusedMixedOp


def _edges(model):
    return sum(1 for m in model.modules() if isinstance(m, FusedMixedOp))


def test_counts_every_fused_kernel_call_and_restores_the_backends():
    before = {(n, k): v for n, cls in BACKENDS.items() for k, v in vars(cls).items()}
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    low = build("darts", "low", 4, 3, torch.device("cpu"), False)
    got = host_work(low, x, y)
    calls = got["fastdarts_calls"]
    edges = _edges(low)
    # One call per edge for all its ops: statistics once (the recompute reuses them), the
    # weighted sum in the forward only (the node-wise replay never reads it), one backward
    # reduction and one input gradient. No per-op call is left.
    tails = {k: n for k, n in calls.items() if k.startswith("bn_")}
    assert tails == {"bn_stats_edge": edges, "bn_accumulate_edge": edges,
                     "bn_grad_reduce_edge": edges, "bn_grad_input_edge": edges}
    assert got["aten_ops"] > got["aten_kernel_ops"] > 0
    assert got["cuda_launches_estimate"] == (got["aten_kernel_ops"] + 6 * edges
                                             + calls.get("depthwise_conv_bwd", 0))
    after = {(n, k): v for n, cls in BACKENDS.items() for k, v in vars(cls).items()}
    assert after == before

    ref = build("darts", "reference", 4, 3, torch.device("cpu"), False)
    plain = host_work(ref, x, y)
    assert plain["fastdarts_calls"] == {}
    assert plain["cuda_launches_estimate"] == plain["aten_kernel_ops"]
