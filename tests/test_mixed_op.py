"""The fused MixedOp against the original plain-PyTorch edge: output, every gradient (input,
mixing weights, every op parameter) and the BN running statistics, for the op sets of every
space, both strides, odd channels and sizes, batch 1, both layouts, every backend on this
machine, fp64 / fp32 / bf16 / fp16; gradcheck; repeatability; named errors."""
import copy

import pytest
import torch

from fastdarts import MixedOp
from fastdarts.backends import BACKENDS
from fastdarts.spaces.darts import SPACE_OPS
from fastdarts.spaces.nb201 import NB201MixedOp
from tests.conftest import available_backends

CPU_BACKENDS = [b for b in available_backends() if "cpu" in BACKENDS[b].devices()]

# (label, factory(stride, C, memory)) for the op sets of every space
OP_SETS = {
    "darts": lambda s, C, m: MixedOp(C, s, memory=m),
    "s1-normal0": lambda s, C, m: MixedOp(C, s, SPACE_OPS["s1"][0][0], memory=m),
    "s1-reduce1": lambda s, C, m: MixedOp(C, s, SPACE_OPS["s1"][1][1], memory=m),
    "s2": lambda s, C, m: MixedOp(C, s, SPACE_OPS["s2"][0][0], memory=m),
    "s3": lambda s, C, m: MixedOp(C, s, SPACE_OPS["s3"][0][0], memory=m),
    "s4": lambda s, C, m: MixedOp(C, s, SPACE_OPS["s4"][0][0], memory=m),
    "nb201": lambda s, C, m: NB201MixedOp(C, C, s, ("none", "skip_connect", "nor_conv_1x1",
                                                    "nor_conv_3x3", "avg_pool_3x3"),
                                          False, True, m),
}


def _run(module, x, w, g_seed=1, rng_seed=7):
    """Forward + backward with a random upstream gradient; returns everything to compare."""
    x = x.detach().clone().requires_grad_()
    w = w.detach().clone().requires_grad_()
    torch.manual_seed(rng_seed)  # the S4 noise op draws the same numbers in every run
    out = module(x, w)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(g_seed),
                    dtype=torch.float64).to(device=out.device, dtype=out.dtype)
    params = [p for p in module.parameters()]
    grads = torch.autograd.grad(out, [x, w] + params, g, allow_unused=True)
    grads = [torch.zeros_like(t) if gr is None else gr for t, gr in zip([x, w] + params, grads)]
    buffers = [b.detach().clone() for b in module.buffers()]
    return [out] + grads, buffers


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _pair(op_set, stride, C, mode, backend, dtype):
    ref = OP_SETS[op_set](stride, C, "reference").to(dtype)
    fused = copy.deepcopy(ref)
    fused.memory, fused.backend = mode, backend
    return ref, fused


def _inputs(shape, dtype, layout, K):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    x = x.contiguous(memory_format=layout)
    w = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0)
    return x, w.to(torch.float64 if dtype == torch.float64 else torch.float32)


CASES = [  # (op set, stride, C, H, batch)
    ("darts", 1, 5, 7, 2), ("darts", 2, 6, 8, 1), ("s1-normal0", 1, 4, 6, 2),
    ("s1-reduce1", 2, 4, 6, 2), ("s2", 2, 4, 6, 1), ("s3", 1, 3, 5, 2), ("s4", 2, 4, 6, 2),
    ("nb201", 1, 5, 7, 1),
]


@pytest.mark.parametrize("mode", ["fast", "low"])
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("op_set,stride,C,H,N", CASES, ids=[f"{c[0]}-s{c[1]}" for c in CASES])
def test_fp64_equals_original(op_set, stride, C, H, N, layout, backend, mode):
    ref, fused = _pair(op_set, stride, C, mode, backend, torch.float64)
    x, w = _inputs((N, C, H, H), torch.float64, layout, len(ref._ops))
    want, want_buf = _run(ref, x, w)
    got, got_buf = _run(fused, x, w)
    names = ["out", "d_x", "d_weights"] + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert a.shape == b.shape and _rel(a, b) <= 1e-10, f"{name}: {_rel(a, b):.2e}"
    for (name, _), a, b in zip(fused.named_buffers(), got_buf, want_buf):
        assert torch.allclose(a.double(), b.double(), rtol=1e-12, atol=1e-14), name


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["fast", "low"])
@pytest.mark.parametrize("op_set,stride", [("darts", 1), ("darts", 2), ("nb201", 1)])
def test_fp32_within_1e5_of_fp64_original(op_set, stride, mode, backend):
    C, H = (6, 8)
    ref, _ = _pair(op_set, stride, C, "reference", None, torch.float64)
    fused = copy.deepcopy(ref).float()
    fused.memory, fused.backend = mode, backend
    x, w = _inputs((2, C, H, H), torch.float64, torch.channels_last, len(ref._ops))
    want, _ = _run(ref, x, w)
    got, _ = _run(fused, x.float(), w.float())
    names = ["out", "d_x", "d_weights"] + [n for n, _ in fused.named_parameters()]
    for name, a, b in zip(names, got, want):
        assert _rel(a, b) <= 1e-5, f"{name}: {_rel(a, b):.2e}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("triton", "reference")])
def test_half_precision_error_budget(dtype, backend):
    """Outputs within 2x, gradients within 3x of the original run in the same dtype."""
    ref64, _ = _pair("darts", 1, 4, "reference", None, torch.float64)
    x, w = _inputs((2, 4, 6, 6), torch.float64, torch.contiguous_format, 8)
    exact, _ = _run(ref64, x, w)
    ref_lp = copy.deepcopy(ref64).to(dtype)
    fused = copy.deepcopy(ref64).to(dtype)
    fused.memory, fused.backend = "low", backend
    base, _ = _run(ref_lp, x.to(dtype), w.float())
    got, _ = _run(fused, x.to(dtype), w.float())
    names = ["out", "d_x", "d_weights"] + [n for n, _ in fused.named_parameters()]
    for i, (name, a, b, e) in enumerate(zip(names, got, base, exact)):
        budget = 2.0 if i == 0 else 3.0
        err, err_base = _rel(a, e), _rel(b, e)
        assert err <= budget * err_base + 1e-3, f"{name}: {err:.2e} vs original {err_base:.2e}"


@pytest.mark.parametrize("mode", ["fast", "low"])
def test_triton_interpreter_matches_original(mode):
    if "triton" not in CPU_BACKENDS:
        pytest.skip("Triton cannot run here")
    ref, fused = _pair("darts", 2, 4, mode, "triton", torch.float32)
    x, w = _inputs((1, 4, 6, 6), torch.float32, torch.channels_last, 8)
    want, _ = _run(ref, x, w)
    got, _ = _run(fused, x, w)
    for a, b in zip(got, want):
        assert _rel(a, b) <= 1e-5


@pytest.mark.parametrize("mode", ["fast", "low"])
@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("cpu", "reference")])
def test_gradcheck_fp64(mode, backend):
    C = 2
    m = OP_SETS["darts"](1, C, mode).double()
    m.backend = backend
    x, w = _inputs((2, C, 4, 4), torch.float64, torch.contiguous_format, 8)
    assert torch.autograd.gradcheck(lambda xx, ww: m(xx, ww),
                                    (x.requires_grad_(), w.requires_grad_()), eps=1e-6,
                                    atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["fast", "low"])
def test_eval_mode_and_affine_tails(mode):
    """Running statistics (eval) and affine BN tails (RF-DARTS) match the original too."""
    ref = MixedOp(4, 1, memory="reference", affine=True).double()
    for m in ref.modules():
        if isinstance(m, torch.nn.BatchNorm2d) and m.affine:
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    x, w = _inputs((2, 4, 6, 6), torch.float64, torch.contiguous_format, 8)
    ref(x, w)  # move the running statistics away from their initial values
    for train in (True, False):
        r = copy.deepcopy(ref).train(train)
        f = copy.deepcopy(ref).train(train)
        f.memory = mode
        want, _ = _run(r, x, w)
        got, _ = _run(f, x, w)
        for a, b in zip(got, want):
            assert _rel(a, b) <= 1e-10


def test_weights_with_exact_zeros_and_on_another_dtype():
    ref = MixedOp(4, 1, memory="reference").double()
    fused = copy.deepcopy(ref)
    fused.memory = "low"
    x, _ = _inputs((2, 4, 6, 6), torch.float64, torch.contiguous_format, 8)
    w = torch.tensor([0.0, 0.2, 0.0, 0.3, 0.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    want, _ = _run(ref, x, w)
    got, _ = _run(fused, x, w)
    for a, b in zip(got, want):
        assert _rel(a, b) <= 1e-10


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in ("cpu", "triton")])
def test_low_mode_is_bitwise_repeatable(backend):
    m = OP_SETS["darts"](1, 4, "low")
    m.backend = backend
    x, w = _inputs((2, 4, 6, 6), torch.float32, torch.channels_last, 8)
    a, _ = _run(copy.deepcopy(m), x, w)
    b, _ = _run(copy.deepcopy(m), x, w)
    for u, v in zip(a, b):
        assert torch.equal(u, v)


def test_named_errors():
    m = MixedOp(4, 1)
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError, match="argument 'weights' must be a 1-D tensor of 8"):
        m(x, torch.ones(7) / 7)
    with pytest.raises(ValueError, match="argument 'x' must be a 4-D floating tensor"):
        m(x[0], torch.ones(8) / 8)
    with pytest.raises(ValueError, match="memory must be one of"):
        MixedOp(4, 1, memory="tiny")
    with pytest.raises(ValueError, match="primitives: unknown op 'conv_9x9'"):
        MixedOp(4, 1, primitives=("skip_connect", "conv_9x9"))
    with pytest.raises(ValueError, match="stride must be 1 or 2"):
        MixedOp(4, 3)


def test_fusion_report_names_each_op():
    lines = MixedOp(4, 2).fusion_report()
    assert lines[0].endswith("skipped")
    assert "folded BatchNorm2d" in lines[1] and "folded BatchNorm2d" in lines[4]
    assert "FactorizedReduce" in lines[3] and "folded" in lines[3]
    assert "not recognised" in MixedOp(4, 1, ("noise", "sep_conv_3x3")).fusion_report()[0]


@pytest.mark.parametrize("mode", ["fast", "low"])
def test_edge_of_only_none_ops(mode):
    ref = MixedOp(3, 2, ("none",), memory="reference").double()
    fused = copy.deepcopy(ref)
    fused.memory = mode
    x, w = _inputs((2, 3, 6, 6), torch.float64, torch.contiguous_format, 1)
    want, _ = _run(ref, x, w)
    got, _ = _run(fused, x, w)
    for a, b in zip(got, want):
        assert a.shape == b.shape and torch.equal(a, b)


class _CastTo(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


@pytest.mark.parametrize("mode", ["fast", "low"])
@pytest.mark.parametrize("backend,device", [("reference", "cpu")] + (
    [("cuda", "cuda")] if torch.cuda.is_available() else []))
def test_ops_of_different_dtypes_in_one_edge(mode, backend, device, monkeypatch):
    """An edge whose op outputs differ in dtype, as under autocast, where an identity's fp32
    input meets bf16 conv outputs: each dtype's ops go through their own edge-kernel call
    (one dtype per call), the sum accumulates in fp32, and output, every gradient and the
    BN buffers match the original's within bf16 rounding. (The CPU kernels take no bf16,
    so on the CPU the reference backend runs the calls.)"""
    import fastdarts.mixed as mixed
    from fastdarts.mixed import FusedMixedOp
    torch.manual_seed(0)
    C = 3
    ops = torch.nn.ModuleList([
        torch.nn.Identity(),                                                  # fp32
        torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Conv2d(C, C, 3, padding=1, bias=False),
                            torch.nn.BatchNorm2d(C, affine=False)),           # fp32 + BN
        torch.nn.Sequential(_CastTo(torch.bfloat16),
                            torch.nn.BatchNorm2d(C).to(torch.bfloat16)),      # bf16 + BN
        torch.nn.Sequential(_CastTo(torch.bfloat16), torch.nn.AvgPool2d(3, 1, 1)),  # bf16
    ]).to(device)
    ref = FusedMixedOp(ops, memory="reference")
    fused = copy.deepcopy(ref)
    fused.memory, fused.backend = mode, backend
    splits = []
    split = mixed._split_by_dtype
    monkeypatch.setattr(mixed, "_split_by_dtype",
                        lambda terms: splits.append(len(split(terms))) or split(terms))
    x, w = _inputs((2, C, 5, 5), torch.float32, torch.contiguous_format, 4)
    x, w = x.to(device), w.to(device)
    want, want_buffers = _run(ref, x, w)
    got, got_buffers = _run(fused, x, w)
    assert max(splits) == 2  # two calls per kernel: the fp32 ops', the bf16 ops'
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and _rel(a, b) <= 2e-2, (a.dtype, _rel(a, b))
    for a, b in zip(got_buffers, want_buffers):
        assert torch.equal(a, b) or _rel(a, b) <= 1e-2


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "triton"])
@pytest.mark.parametrize("needs", [(True, True, True, False), (True, False, True, True),
                                   (False, False, False, False)], ids=str)
def test_tails_backward_equals_per_op_backward(backend, needs):
    """`_Edge.tails_backward` (one reduction and one input-gradient call for all the ops)
    gives each op what its own backward gives, whichever ops need dz: a prefix (the usual
    case, one call on slices) or not (the ops picked out)."""
    from fastdarts.mixed import _Edge, _tails_stats
    torch.manual_seed(0)
    edge_module = MixedOp(4, 1, ("sep_conv_3x3", "avg_pool_3x3", "dil_conv_3x3",
                                 "skip_connect"), affine=True).double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    edge = _Edge(edge_module, x, backend)
    with torch.no_grad():
        pz = [(p, p.body(x)) for p in edge.active if p.kind == "body"]
    stats = [None] * edge.K
    _tails_stats(edge.be, pz, stats, edge.acc)
    terms = [(p, z, stats[p.index], n) for (p, z), n in zip(pz, needs)]
    identity = next(p for p in edge.active if p.kind == "identity")
    terms.append((identity, x, None, needs[-1]))
    w = torch.softmax(torch.randn(4, dtype=torch.float64), 0)
    g = torch.randn_like(x)
    dW, dW_each = torch.zeros(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64)
    got = edge.tails_backward(g, terms, w, dW)
    for p, z, st, need in terms:
        want = edge.op_backward(g, z, w, p, st, need, dW_each)
        for a, b in zip(got[p.index], want):
            assert (a is None and b is None) or torch.equal(a, b)
    assert torch.equal(dW, dW_each)
