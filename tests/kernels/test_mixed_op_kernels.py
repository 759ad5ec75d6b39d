"""The mixed-op tail primitives (csrc/mixed_op.h) on every backend against the fp64
reference: statistics, accumulation, the backward reduction and the input gradient, in both
layouts, at odd sizes and batch 1; named argument errors; bitwise repeatability."""
import pytest
import torch

from fastdarts import _ext
from fastdarts.backends import BACKENDS
from fastdarts.reference import (bn_accumulate_ref, bn_grad_input_ref, bn_grad_reduce_ref,
                                 bn_stats_ref)
from tests.conftest import available_backends, backend_device_pairs, devices_of

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
binding_errors_testable = pytest.mark.skipif(
    _ext.C is not None and _ext.C.with_cuda(),
    reason="binding argument errors crash the CUDA build (open problem, see csrc/bindings.cpp); "
           "Python validates before the binding")


@needs_ext
@binding_errors_testable
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


def _edge_terms(n, shape, fmt, device, dtype):
    """n op outputs of one edge with every kind of tail: batch statistics with and without
    running buffers, fixed (running) statistics, affine, and none (identity, pools)."""
    gen = torch.Generator().manual_seed(n)
    C = shape[1]

    def t(*size, scale=1.0, shift=0.0):
        return (torch.randn(size, generator=gen, dtype=torch.float64) * scale + shift).to(
            device, dtype if len(size) == 4 else (torch.float64 if dtype == torch.float64
                                                  else torch.float32))
    terms = []
    for j in range(n):
        kind = j % 4  # 0 batch stats + buffers, 1 batch stats, 2 fixed stats, 3 no tail
        z = t(*shape, scale=1 + j, shift=j - 2).contiguous(memory_format=fmt)
        terms.append(dict(
            z=z, kind=kind, k=j, affine=j % 3 == 0,
            gamma=t(C, scale=0.3, shift=1.0), beta=t(C),
            running=(t(C), t(C).abs() + 0.5, torch.zeros((), dtype=torch.long, device=device))
            if kind in (0, 2) else None))
    return terms


def _backend_device_dtypes():
    """Every backend and device with each storage dtype it takes: fp32 everywhere, fp64
    where taken, fp16 and bf16 on a GPU (on the CPU only the reference would take them)."""
    out = []
    for b in available_backends():
        for d in devices_of(b):
            wanted = (torch.float32, torch.float64) + (
                (torch.float16, torch.bfloat16) if d == "cuda" else ())
            out += [pytest.param(b, d, t, id=f"{b}-{d}-{str(t)[6:]}") for t in wanted
                    if t in BACKENDS[b].DTYPES]
    return out


@pytest.mark.parametrize("backend,device,dtype", _backend_device_dtypes())
@pytest.mark.parametrize("fmt", LAYOUTS, ids=_fmt_id)
@pytest.mark.parametrize("n", [1, 3, 10])
def test_edge_calls_equal_the_per_op_calls(backend, device, dtype, fmt, n):
    """The `*_edge` kernels (every op of an edge in one call; on CUDA one launch set per 8
    ops, so n=10 takes two) give exactly what the per-op kernels give in op order: the same
    bits, the same running-buffer updates, the same dw entries."""
    be = BACKENDS[backend]
    shape = (3, 5, 7, 6)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.randn(shape, generator=torch.Generator().manual_seed(7)).to(device, dtype)
    g = g.contiguous(memory_format=fmt)
    runs = []
    for edge in (True, False):
        terms = _edge_terms(n, shape, fmt, device, dtype)
        w = torch.linspace(0.1, 1.0, n + 2, device=device, dtype=acc)
        stats = [t for t in terms if t["kind"] in (0, 1)]
        buffers = [t["running"] if t["kind"] == 0 else (None, None, None) for t in stats]
        if edge:
            mean, var, rstd = be.bn_stats_edge(
                [t["z"] for t in stats], [1e-5] * len(stats), [b[0] for b in buffers],
                [b[1] for b in buffers], [b[2] for b in buffers], [0.2] * len(stats))
            rows = list(zip(mean, var, rstd))
        else:
            rows = [be.bn_stats(t["z"], 1e-5, *b, 0.2) for t, b in zip(stats, buffers)]
        for t, row in zip(stats, rows):
            t["mean"], t["rstd"], t["var"] = row[0], row[2], row[1]
        for t in terms:
            if t["kind"] == 2:  # eval-mode BN: its running statistics
                t["mean"], t["rstd"] = t["running"][0], torch.rsqrt(t["running"][1] + 1e-5)
            elif t["kind"] == 3:
                t["mean"] = t["rstd"] = None
        args = [[t["z"] for t in terms], [t["k"] for t in terms],
                [t["mean"] for t in terms], [t["rstd"] for t in terms],
                [t["gamma"] if t["affine"] else None for t in terms],
                [t["beta"] if t["affine"] else None for t in terms]]
        zs, ks, means, rstds, gammas, betas = args
        out = torch.empty(shape, device=device, dtype=acc).contiguous(memory_format=fmt)
        dw = torch.full((n + 2,), 9.0, device=device, dtype=acc)
        batch = [t["kind"] in (0, 1) for t in terms]
        if edge:
            be.bn_accumulate_edge(out, zs, w, ks, means, rstds, gammas, betas, True)
            sg, sgx = be.bn_grad_reduce_edge(g, zs, means, rstds, gammas, betas, dw, ks)
            sums = list(zip(sg, sgx))
            dzs = be.bn_grad_input_edge(g, zs, w, ks, means, rstds, gammas,
                                        [s[0] for s in sums], [s[1] for s in sums], batch)
        else:
            for j in range(n):
                be.bn_accumulate(out, zs[j], w, ks[j], means[j], rstds[j], gammas[j],
                                 betas[j], j == 0)
            sums = [be.bn_grad_reduce(g, zs[j], means[j], rstds[j], gammas[j], betas[j], dw,
                                      ks[j]) for j in range(n)]
            dzs = [be.bn_grad_input(g, zs[j], w, ks[j], means[j], rstds[j], gammas[j],
                                    sums[j][0], sums[j][1], batch[j]) for j in range(n)]
        assert all(dz.is_contiguous(memory_format=fmt) for dz in dzs)
        runs.append(dict(stats=[torch.cat([t["mean"], t["var"], t["rstd"]]) for t in stats],
                         running=[torch.cat(b[:2]) for b in buffers if b[0] is not None],
                         tracked=[int(b[2]) for b in buffers if b[0] is not None],
                         acc=out, dw=dw, sums=[torch.cat(s) for s in sums], dzs=dzs))
    got, want = runs
    for key in ("stats", "running", "sums", "dzs"):
        assert len(got[key]) == len(want[key])
        for j, (a, b) in enumerate(zip(got[key], want[key])):
            assert torch.equal(a, b), f"{key}[{j}]"
    assert got["tracked"] == want["tracked"] and set(got["tracked"]) <= {1}
    assert torch.equal(got["acc"], want["acc"]) and torch.equal(got["dw"], want["dw"])
    assert got["dw"][n:].eq(9.0).all()  # entries of no op are left alone
    # And the edge sum against the fp64 formula of the whole edge.
    want_acc = torch.zeros(shape, dtype=torch.float64, device=device)
    for j, t in enumerate(terms):
        bn_accumulate_ref(want_acc, t["z"].double(), w.double(), j,
                          None if t["mean"] is None else t["mean"].double(),
                          None if t["rstd"] is None else t["rstd"].double(),
                          t["gamma"].double() if t["affine"] else None,
                          t["beta"].double() if t["affine"] else None, False)
    assert _rel(got["acc"], want_acc) <= {torch.float64: 1e-12, torch.float32: 1e-5}.get(
        dtype, 1e-2)


@needs_ext
@binding_errors_testable
def test_edge_binding_names_the_bad_list_entry():
    z = torch.randn(2, 3, 4, 4)
    zs, w = [z, z.clone(), z.clone()], torch.ones(3)
    none3 = [None] * 3
    with pytest.raises(ValueError, match="argument 'zs' must hold at least one op output"):
        _ext.C.bn_stats_edge([], [], [], [], [], [])
    with pytest.raises(ValueError, match=r"argument 'zs\[2\]' must have zs\[0\]'s shape"):
        _ext.C.bn_stats_edge([z, z, z[:, :2].clone()], [1e-5] * 3, none3, none3, none3, [0.1] * 3)
    with pytest.raises(ValueError, match=r"argument 'zs\[1\]' must have zs\[0\]'s memory"):
        _ext.C.bn_accumulate_edge(torch.empty_like(z), [z, z.contiguous(
            memory_format=torch.channels_last)], w, [0, 1], none3[:2], none3[:2], none3[:2],
            none3[:2], True)
    with pytest.raises(ValueError, match="argument 'eps' must have one entry per op output"):
        _ext.C.bn_stats_edge(zs, [1e-5], none3, none3, none3, [0.1] * 3)
    with pytest.raises(ValueError, match=r"argument 'momenta\[1\]' must lie in"):
        _ext.C.bn_stats_edge(zs, [1e-5] * 3, none3, none3, none3, [0.1, 2.0, 0.1])
    with pytest.raises(ValueError, match=r"argument 'ks\[2\]' must index w"):
        _ext.C.bn_accumulate_edge(torch.empty_like(z), zs, w, [0, 1, 3], none3, none3, none3,
                                  none3, True)
    with pytest.raises(ValueError, match=r"argument 'rstds\[1\]' must be given exactly when"):
        _ext.C.bn_grad_reduce_edge(z, zs, [None, torch.zeros(3), None], none3, none3, none3,
                                   None, [0, 1, 2])
    with pytest.raises(ValueError, match=r"argument 'ks\[0\]' must index dw"):
        _ext.C.bn_grad_reduce_edge(z, zs, none3, none3, none3, none3, torch.zeros(2),
                                   [2, 0, 1])
    with pytest.raises(ValueError, match=r"argument 'sum_gs\[0\]' and sum_gxs\[0\] are required"):
        _ext.C.bn_grad_input_edge(z, zs[:1], w, [0], [torch.zeros(3)], [torch.ones(3)], [None],
                                  [None], [None], [True])
    with pytest.raises(ValueError, match=r"argument 'gammas\[2\]' must have shape \(3,\)"):
        _ext.C.bn_grad_input_edge(z, zs, w, [0, 1, 2], none3, none3,
                                  [None, None, torch.ones(4)], none3, none3, [False] * 3)
