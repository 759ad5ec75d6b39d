"""weighted_sum on every available backend against the fp64 reference."""
import pytest
import torch

from fastdarts.reference import weighted_sum_ref
from fastdarts.weighted_sum import weighted_sum
from tests.conftest import backend_device_pairs

# (K, shape): odd sizes, batch 1, H=W=1, DARTS's 8 ops, a single op.
SHAPES = [
    pytest.param(8, (2, 16, 8, 8), id="darts-8ops"),
    pytest.param(5, (1, 13, 7, 7), id="nb201-odd-batch1"),
    pytest.param(3, (3, 5, 1, 1), id="hw1"),
    pytest.param(1, (2, 3, 5, 9), id="single-op"),
    pytest.param(2, (1, 1, 1, 1), id="scalar-like"),
]


def _inputs(K, shape, dtype, device):
    ys = torch.randn(K, *shape, dtype=torch.float64).to(device)
    w = torch.softmax(torch.randn(K, dtype=torch.float64), 0).to(device)
    g = torch.randn(*shape, dtype=torch.float64).to(device)
    return ys, w, g


def _run(fn, ys, w, g, dtype):
    ys = ys.detach().to(dtype).requires_grad_()
    w = w.detach().to(dtype if dtype == torch.float64 else torch.float32).requires_grad_()
    out = fn(ys, w)
    dys, dw = torch.autograd.grad(out, (ys, w), g.to(out.dtype))
    return out.double(), dys.double(), dw.double()


def _supports(backend, dtype):
    from fastdarts.backends import BACKENDS
    return dtype in BACKENDS[backend].DTYPES


@pytest.mark.parametrize("backend,device", backend_device_pairs())
@pytest.mark.parametrize("K,shape", SHAPES)
def test_fp32_matches_fp64_reference(backend, device, K, shape):
    ys, w, g = _inputs(K, shape, torch.float64, device)
    exact = _run(weighted_sum_ref, ys, w, g, torch.float64)
    got = _run(lambda y, ww: weighted_sum(y, ww, backend=backend), ys, w, g, torch.float32)
    for name, a, b in zip(("out", "d_ys", "d_weights"), got, exact):
        scale = b.abs().max().clamp_min(1e-12)
        rel = ((a - b).abs().max() / scale).item()
        assert rel <= 1e-5, f"{name}: relative error {rel:.2e} > 1e-5"


@pytest.mark.parametrize("backend,device", backend_device_pairs())
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("K,shape", SHAPES[:3])
def test_low_precision_within_error_budget(backend, device, dtype, K, shape):
    """Error vs fp64 at most 2x (outputs) / 3x (gradients) that of the reference run in
    the same dtype, plus a small floor (flash-attention's rule)."""
    if not _supports(backend, dtype):
        pytest.skip(f"{backend} does not take {dtype}")
    ys, w, g = _inputs(K, shape, torch.float64, device)
    exact = _run(weighted_sum_ref, ys, w, g, torch.float64)
    ref_low = _run(weighted_sum_ref, ys, w, g, dtype)
    got = _run(lambda y, ww: weighted_sum(y, ww, backend=backend), ys, w, g, dtype)
    floor = 1e-3 if dtype == torch.float16 else 8e-3
    for i, name in enumerate(("out", "d_ys", "d_weights")):
        budget = (2 if i == 0 else 3) * (ref_low[i] - exact[i]).abs().max().item() + floor
        err = (got[i] - exact[i]).abs().max().item()
        assert err <= budget, f"{name}: error {err:.3e} > budget {budget:.3e}"


@pytest.mark.parametrize("backend,device", backend_device_pairs())
def test_backward_is_bitwise_repeatable(backend, device):
    ys, w, g = _inputs(6, (2, 7, 9, 9), torch.float64, device)
    runs = [_run(lambda y, ww: weighted_sum(y, ww, backend=backend), ys, w, g, torch.float32)
            for _ in range(2)]
    for a, b in zip(*runs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend,device", backend_device_pairs())
def test_only_weights_need_grad(backend, device):
    ys, w, g = _inputs(4, (2, 3, 4, 4), torch.float64, device)
    w32 = w.float().requires_grad_()
    out = weighted_sum(ys.float(), w32, backend=backend)
    (dw,) = torch.autograd.grad(out, (w32,), g.float())
    expected = (ys * g).flatten(1).sum(1)
    torch.testing.assert_close(dw.double(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_gradcheck_fp64(backend):
    from fastdarts.backends import BACKENDS
    if not BACKENDS[backend].is_available():
        pytest.skip(f"{backend} unavailable")
    ys = torch.randn(3, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda y, ww: weighted_sum(y, ww, backend=backend), (ys, w))


def test_weights_on_another_dtype_and_exact_zeros():
    ys = torch.randn(3, 2, 4, 4)
    w = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(weighted_sum(ys, w), ys[1])


@pytest.mark.parametrize("bad,match", [
    (lambda ys: (ys, torch.tensor([0.5, float("nan"), 0.5])), r"weights must be finite.*\[1\]"),
    (lambda ys: (ys, torch.ones(2)), r"weights must have shape \(3,\)"),
    (lambda ys: (ys[0, 0, 0], torch.ones(3)), r"ys must be a tensor \(K, \*shape\)"),
    (lambda ys: (ys.long(), torch.ones(3)), "ys must be a floating tensor"),
])
def test_bad_inputs_raise_named_errors(bad, match):
    ys = torch.randn(3, 2, 4, 4)
    with pytest.raises(ValueError, match=match):
        weighted_sum(*bad(ys))


def test_extension_checks_name_the_argument():
    from fastdarts._ext import C
    if C is None:
        pytest.skip("extension not built")
    if C.with_cuda():
        # Known open problem: in the CUDA build on the lent H100 machine (torch 2.11, GCC
        # there), an exception thrown from check_weighted_sum_inputs kills the process
        # (SIGSEGV), whatever its type. weighted_sum() validates shapes in Python first, so
        # users do not reach these checks; this test runs wherever the build is CPU-only.
        pytest.skip("binding argument errors crash the CUDA build (open problem, see comment)")
    with pytest.raises(ValueError, match=r"argument 'w' must have shape \(3,\); got \[2\]"):
        C.weighted_sum_fwd(torch.randn(3, 10), torch.randn(2))
    with pytest.raises(ValueError, match=r"argument 'y' must be 2-D \(K, M\); got shape \[3, 10, 2\]"):
        C.weighted_sum_fwd(torch.randn(3, 10, 2), torch.randn(3))
    with pytest.raises(ValueError, match="argument 'y' must be float32, float16"):
        C.weighted_sum_fwd(torch.randn(3, 10).long(), torch.randn(3))
    with pytest.raises(ValueError, match="argument 'g' must have y's dtype Float; got Double"):
        C.weighted_sum_bwd(torch.randn(3, 10), torch.randn(3), torch.randn(10).double(), True)
