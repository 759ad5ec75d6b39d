"""The mixed-op tail primitives (csrc/mixed_op.h) on every backend against the fp64
reference: statistics, accumulation, the backward reduction and the input gradient, in both
layouts, at odd sizes and batch 1; named argument errors; bitwise repeatability."""
import pytest
import torch

from fastdarts import _ext
from fastdarts.backends import BACKENDS
from fastdarts.reference import (bn_accumulate_ref, bn_grad_input_ref, bn_grad_reduce_ref,
                                 bn_stats_ref)
from tests.conftest import backend_device_pairs

# (3, 4, 37, 29): H*W = 1073 spans two CPU reduction pieces (1024 + 49) per plane in NCHW and
# 50 row blocks plus a remainder in NHWC.
SHAPES = [(2, 16, 8, 8), (1, 5, 7, 7), (3, 3, 1, 1), (1, 1, 5, 3), (4, 7, 9, 5), (3, 4, 37, 29)]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _fmt_id(f):
    return "nhwc" if f == torch.channels_last else "nchw"


def _rel(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _case(shape, fmt, device):
    g0 = torch.Generator().manual_seed(hash(shape) % 1000)
    z = (torch.randn(shape, generator=g0, dtype=torch.float64) * 3 + 2).to(device)
    g = torch.randn(shape, generator=g0, dtype=torch.float64).to(device)
    C = shape[1]
    w = torch.softmax(torch.randn(4, generator=g0, dtype=torch.float64), 0).to(device)
    gamma = (torch.rand(C, generator=g0, dtype=torch.float64) + 0.5).to(device)
    beta = torch.randn(C, generator=g0, dtype=torch.float64).to(device)
    return (z.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt), w, gamma, beta)


def _dtype_for(backend):
    return torch.float64 if torch.float64 in BACKENDS[backend].DTYPES else torch.float32


@pytest.mark.parametrize("backend,device", backend_device_pairs())
@pytest.mark.parametrize("fmt", LAYOUTS, ids=_fmt_id)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_primitives_match_fp64_reference(backend, device, fmt, shape):
    be = BACKENDS[backend]
    z, g, w, gamma, beta = _case(shape, fmt, device)
    ref = (bn_stats_ref(z, 1e-5))
    for dtype in sorted({torch.float32, _dtype_for(backend)}, key=str):
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        zz, gg = z.to(dtype), g.to(dtype)
        c = lambda t: t.to(acc)  # noqa: E731
        got = be.bn_stats(zz, 1e-5)
        for name, a, b in zip(("mean", "var", "rstd"), got, ref):
            assert _rel(a, b) <= tol, f"{name} {dtype}"
        mean, _, rstd = ref
        out = torch.empty(shape, dtype=acc, device=device).contiguous(memory_format=fmt)
        out_ref = torch.empty(shape, dtype=torch.float64, device=device).contiguous(
            memory_format=fmt)
        be.bn_accumulate(out, zz, c(w), 2, c(mean), c(rstd), c(gamma), c(beta), True)
        bn_accumulate_ref(out_ref, z, w, 2, mean, rstd, gamma, beta, True)
        be.bn_accumulate(out, zz, c(w), 1, None, None, None, None, False)
        bn_accumulate_ref(out_ref, z, w, 1, None, None, None, None, False)
        assert _rel(out, out_ref) <= tol, f"accumulate {dtype}"
        for m, r in ((mean, rstd), (None, None)):
            sums = be.bn_grad_reduce(gg, zz, None if m is None else c(m),
                                     None if r is None else c(r))
            sums_ref = bn_grad_reduce_ref(g, z, m, r)
            for name, a, b in zip(("sum_g", "sum_gx"), sums, sums_ref):
                assert _rel(a, b) <= tol, f"{name} {dtype}"
            # The mixing-weight gradient written in the same call, against the exact
            # formula on the fp64 sums; the other entries of dw are left alone.
            for gm, bt in ((gamma, beta), (gamma, None), (None, None)):
                dw = torch.full((4,), 7.0, dtype=acc, device=device)
                be.bn_grad_reduce(gg, zz, None if m is None else c(m),
                                  None if r is None else c(r), None if gm is None else c(gm),
                                  None if bt is None else c(bt), dw, 2)
                sg_ref, sgx_ref = sums_ref
                want = (sgx_ref * (1 if gm is None else gm)).sum() + (
                    0 if bt is None else (sg_ref * bt).sum())
                scale = sgx_ref.abs().sum() + (0 if bt is None else (sg_ref * bt).abs().sum())
                assert abs(dw[2].item() - want.item()) <= tol * max(scale.item(), 1e-12), \
                    f"dw gamma={gm is not None} beta={bt is not None} {dtype}"
                assert dw[[0, 1, 3]].eq(7.0).all()
        sg, sgx = bn_grad_reduce_ref(g, z, mean, rstd)
        for batch in (True, False):
            for gm in (gamma, None):
                dz = be.bn_grad_input(gg, zz, c(w), 3, c(mean), c(rstd),
                                      None if gm is None else c(gm), c(sg), c(sgx), batch)
                dz_ref = bn_grad_input_ref(g, z, w, 3, mean, rstd, gm, sg, sgx, batch)
                assert dz.dtype == dtype and dz.is_contiguous(memory_format=fmt)
                assert _rel(dz, dz_ref) <= tol, f"grad_input batch={batch} {dtype}"


def test_bn_grad_input_ref_is_batchnorm_backward():
    """The reference formulas against autograd through F.batch_norm (training mode)."""
    z = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    gamma = torch.rand(4, dtype=torch.float64) + 0.5
    beta = torch.randn(4, dtype=torch.float64)
    w = torch.tensor([0.3, 0.7], dtype=torch.float64)
    y = w[1] * torch.nn.functional.batch_norm(z, None, None, gamma, beta, training=True)
    g = torch.randn_like(y)
    (dz_auto,) = torch.autograd.grad(y, z, g)
    mean, _, rstd = bn_stats_ref(z.detach(), 1e-5)
    sg, sgx = bn_grad_reduce_ref(g, z.detach(), mean, rstd)
    dz = bn_grad_input_ref(g, z.detach(), w, 1, mean, rstd, gamma, sg, sgx, True)
    assert torch.allclose(dz, dz_auto, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend,device", backend_device_pairs())
def test_primitives_are_bitwise_repeatable(backend, device):
    be = BACKENDS[backend]
    z, g, w, gamma, beta = _case((3, 6, 9, 9), torch.channels_last, device)
    z, g = z.float(), g.float()
    runs = []
    for _ in range(2):
        mean, var, rstd = be.bn_stats(z, 1e-5)
        dw = torch.zeros(3, device=device)
        sg, sgx = be.bn_grad_reduce(g, z, mean, rstd, gamma.float(), beta.float(), dw, 1)
        runs.append(torch.cat([mean, var, rstd, sg, sgx, dw]))
    assert torch.equal(runs[0], runs[1])


needs_ext = pytest.mark.skipif(_ext.C is None, reason="fastdarts._C not built")


@needs_ext
@pytest.mark.skipif(_ext.C is not None and _ext.C.with_cuda(),
                    reason="binding argument errors crash the CUDA build (open problem, "
                           "see csrc/bindings.cpp); Python validates before the binding")
def test_binding_names_the_bad_argument():
    z = torch.randn(2, 3, 4, 4)
    w = torch.ones(2)
    with pytest.raises(ValueError, match="argument 'z' must be 4-D"):
        _ext.C.bn_stats(z[0], 1e-5)
    with pytest.raises(ValueError, match="argument 'g' must have z's shape"):
        _ext.C.bn_grad_reduce(torch.randn(2, 3, 4, 5), z, None, None)
    with pytest.raises(ValueError, match="argument 'k' must index w"):
        _ext.C.bn_accumulate(torch.empty_like(z), z, w, 5, None, None, None, None, True)
    with pytest.raises(ValueError, match="argument 'mean' must have shape"):
        _ext.C.bn_grad_reduce(z, z, torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="argument 'z' must be float32 or float64"):
        _ext.C.bn_stats(z.half(), 1e-5)
    with pytest.raises(ValueError, match="must be contiguous in NCHW or channels_last"):
        _ext.C.bn_stats(z.transpose(2, 3), 1e-5)
    with pytest.raises(ValueError, match="argument 'running_var' must be given exactly when"):
        _ext.C.bn_stats(z, 1e-5, torch.zeros(3), None)
    with pytest.raises(ValueError, match="argument 'running_mean' must have shape"):
        _ext.C.bn_stats(z, 1e-5, torch.zeros(4), torch.ones(4))
    with pytest.raises(ValueError, match="argument 'num_batches_tracked' must be one int64"):
        _ext.C.bn_stats(z, 1e-5, torch.zeros(3), torch.ones(3), torch.zeros(1))
    with pytest.raises(ValueError, match="argument 'momentum' must lie in"):
        _ext.C.bn_stats(z, 1e-5, torch.zeros(3), torch.ones(3), None, 1.5)
    with pytest.raises(ValueError, match="argument 'k' must index dw"):
        _ext.C.bn_grad_reduce(z, z, None, None, None, None, torch.zeros(2), 2)
    with pytest.raises(ValueError, match="argument .dw. must be Float; got Double"):
        _ext.C.bn_grad_reduce(z, z, None, None, None, None, torch.zeros(2).double(), 0)
    with pytest.raises(ValueError, match="argument 'beta' must have shape"):
        _ext.C.bn_grad_reduce(z, z, None, None, None, torch.zeros(4), torch.zeros(2), 0)


@pytest.mark.parametrize("backend,device", backend_device_pairs())
@pytest.mark.parametrize("fmt", LAYOUTS, ids=_fmt_id)
@pytest.mark.parametrize("shape", [(2, 16, 8, 8), (1, 5, 7, 7), (4, 7, 9, 5)], ids=str)
def test_stats_update_running_buffers_like_batchnorm(backend, device, fmt, shape):
    """With running buffers, bn_stats also does nn.BatchNorm2d's training update (momentum,
    unbiased variance, num_batches_tracked + 1), in every dtype it takes, 3 steps in a row."""
    be = BACKENDS[backend]
    for dtype in sorted({torch.float32, _dtype_for(backend)}, key=str):
        bn = torch.nn.BatchNorm2d(shape[1], affine=False, momentum=0.3).to(device, dtype)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        rm, rv = bn.running_mean.clone(), bn.running_var.clone()
        nbt = bn.num_batches_tracked.clone()
        for step in range(3):
            z = _case(shape, fmt, device)[0].add(step).to(dtype)
            mean, var, rstd = be.bn_stats(z, bn.eps, rm, rv, nbt, bn.momentum)
            bn.train()(z)
            ref = bn_stats_ref(z.double(), bn.eps)
            tol = 1e-12 if dtype == torch.float64 else 1e-5
            for name, a, b in zip(("mean", "var", "rstd"), (mean, var, rstd), ref):
                assert _rel(a, b) <= tol, f"{name} {dtype}"
        tol = 1e-12 if dtype == torch.float64 else 2e-6
        assert _rel(rm, bn.running_mean) <= tol and _rel(rv, bn.running_var) <= tol, dtype
        assert int(nbt) == int(bn.num_batches_tracked) == 3
