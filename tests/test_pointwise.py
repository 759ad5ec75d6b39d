"""`fastdarts.ops.pointwise`: oneDNN's strided 1x1 weight gradient for channels_last inputs
with few input channels writes past its workspace (wrong weight gradients with several
threads, a corrupted heap with one). Every strided 1x1 convolution we run on the CPU (the
FactorizedReduce convs of both spaces, a fused edge's last conv) must equal the fp64
computation, at the channel counts that hit the bug (below the AVX2 and AVX-512 blocks)."""
import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdarts.mixed import FusedMixedOp
from fastdarts.ops import darts, nb201
from fastdarts.ops.pointwise import strided_pointwise_conv

FORMATS = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}


def _grads(module, x, g):
    x = x.detach().clone().requires_grad_()
    module.zero_grad()
    out = module(x)
    out.backward(g.to(out.dtype))
    return [out.detach().double(), x.grad.double()] + [p.grad.double()
                                                       for p in module.parameters()]


def _assert_equals_fp64(module, shape, fmt, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    exact = copy.deepcopy(module).double()
    with torch.no_grad():
        g = torch.randn(exact(x).shape, generator=gen, dtype=torch.float64)
    module = module.float().to(memory_format=FORMATS[fmt])
    got = _grads(module, x.float().contiguous(memory_format=FORMATS[fmt]), g)
    want = _grads(exact, x, g)
    names = ["out", "dx"] + [n for n, _ in module.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape, name
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
        assert err < 1e-5, (name, err)


class _Pointwise(nn.Module):
    def __init__(self, C_in, C_out, stride):
        super().__init__()
        self.conv = nn.Conv2d(C_in, C_out, 1, stride=stride, bias=False)

    def forward(self, x):
        return strided_pointwise_conv(self.conv, x)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("C_in,C_out,stride,size", [
    (4, 2, 2, 8), (4, 8, 2, 16), (6, 3, 2, 8), (15, 16, 2, 8), (16, 16, 2, 8),
    (4, 4, 3, 7), (4, 2, 1, 8), (3, 5, (2, 1), 9)])
def test_strided_pointwise_conv_equals_fp64(C_in, C_out, stride, size, fmt):
    _assert_equals_fp64(_Pointwise(C_in, C_out, stride), (32, C_in, size, size), fmt)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("C", [2, 4, 6, 16])
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_factorized_reduce_gradients_equal_fp64(space, C, fmt):
    module = (darts.FactorizedReduce(C, C, affine=True) if space == "darts"
              else nb201.FactorizedReduce(C, C, 2, True, True))
    _assert_equals_fp64(module, (32, C, 8, 8), fmt)


@pytest.mark.parametrize("memory", ["low", "fast"])
def test_fused_edge_with_strided_pointwise_ops_equals_fp64(memory):
    """A reduction edge whose ops end in a strided 1x1 conv: the FactorizedReduce skip and a
    ReLU-Conv1x1-BN, whose conv is the fused backward's last conv of the segment."""
    C = 4
    ops = nn.ModuleList([darts.FactorizedReduce(C, C, affine=False),
                         darts.ReLUConvBN(C, C, 1, 2, 0, affine=False)])
    edge = FusedMixedOp(ops, memory=memory)
    weights = torch.tensor([0.3, 0.7], dtype=torch.float64)

    class Edge(nn.Module):
        def __init__(self, op):
            super().__init__()
            self.op = op

        def forward(self, x):
            return self.op(x, weights.to(x.dtype))

    _assert_equals_fp64(Edge(edge), (32, C, 8, 8), "channels_last")


def test_one_thread_does_not_corrupt_the_heap(tmp_path):
    """With one thread the unguarded kernel corrupts the heap (glibc aborts in free()): run
    the modules above in a child with one thread and require a clean exit."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(f"""
        import sys
        sys.path.append({root!r})  # for tests/, after the installed fastdarts
        import torch
        torch.set_num_threads(1)
        from tests.test_pointwise import (_assert_equals_fp64, _Pointwise, darts, nb201,
                                          test_fused_edge_with_strided_pointwise_ops_equals_fp64)
        for _ in range(3):
            _assert_equals_fp64(_Pointwise(4, 2, 2), (64, 4, 8, 8), "channels_last")
            _assert_equals_fp64(darts.FactorizedReduce(4, 4), (64, 4, 8, 8), "channels_last")
            _assert_equals_fp64(nb201.FactorizedReduce(4, 4, 2, True, True), (64, 4, 8, 8),
                                "channels_last")
            test_fused_edge_with_strided_pointwise_ops_equals_fp64("low")
        print("ok")
        """)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
