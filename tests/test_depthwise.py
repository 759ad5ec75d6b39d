"""The depthwise-convolution backward (csrc/depthwise_conv.h) against PyTorch's convolution
backward in float64, and its use by the fused edge's bodies."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdarts import _ext, depthwise
from fastdarts.backends import BACKENDS
from fastdarts.plans import plan_op
from fastdarts.reference import depthwise_conv_bwd_ref

needs_ext = pytest.mark.skipif(_ext.C is None, reason="fastdarts._C is not built")

# (N, C, H, W, k, stride, padding, dilation): every DARTS geometry, odd sizes and channel
# counts that exercise each channel-block width of the channels-last loops (16, 8, 4, 1).
GEOMETRIES = [
    (2, 16, 8, 8, 3, 1, 1, 1),     # sep_conv_3x3
    (2, 16, 9, 7, 5, 1, 2, 1),     # sep_conv_5x5, odd sizes
    (3, 8, 8, 8, 3, 1, 2, 2),      # dil_conv_3x3
    (2, 4, 11, 9, 5, 1, 4, 2),     # dil_conv_5x5
    (2, 12, 8, 8, 3, 2, 1, 1),     # reduction edge, stride 2
    (1, 5, 9, 9, 5, 2, 2, 1),      # batch 1, odd channels, stride 2, odd size
    (2, 3, 7, 10, 3, 2, 2, 2),     # stride 2, dilated
    (1, 48, 5, 6, 5, 1, 4, 2),     # padding larger than the image reach
]


def _case(geometry, dtype, channels_last, seed=0):
    N, C, H, W, k, s, p, d = geometry
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, H, W, generator=g, dtype=dtype)
    w = torch.randn(C, 1, k, k, generator=g, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = F.conv2d(x, w, None, s, p, d, C)
    gy = torch.randn(y.shape, generator=g, dtype=dtype).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x, w, gy, (s, s), (p, p), (d, d)


def _exact(x, w, gy, stride, padding, dilation):
    """Gradients by autograd through F.conv2d in float64."""
    x64 = x.detach().double().requires_grad_()
    w64 = w.detach().double().requires_grad_()
    y = F.conv2d(x64, w64, None, stride, padding, dilation, x.shape[1])
    return torch.autograd.grad(y, (x64, w64), gy.double())


@needs_ext
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "x".join(map(str, g)))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpu_kernel_matches_exact_gradients(geometry, dtype, channels_last):
    x, w, gy, *geo = _case(geometry, dtype, channels_last)
    dx, dw = BACKENDS["cpu"].depthwise_conv_bwd(gy, x, w, *geo, True, True)
    ex, ew = _exact(x, w, gy, *geo)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for got, want in ((dx, ex), (dw, ew)):
        assert got.dtype == dtype and got.shape == want.shape
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err <= tol, err
    assert dx.is_contiguous(memory_format=torch.channels_last if channels_last
                            else torch.contiguous_format)
    # The reference backend is PyTorch's own backward: the same numbers.
    rx, rw = depthwise_conv_bwd_ref(gy, x, w, *geo, True, True)
    torch.testing.assert_close(dx, rx, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-5 if dtype == torch.float32 else 1e-12)
    torch.testing.assert_close(dw, rw, rtol=1e-5 if dtype == torch.float32 else 1e-12,
                               atol=1e-4 if dtype == torch.float32 else 1e-12)


@needs_ext
def test_cpu_kernel_partial_requests_and_mixed_layouts():
    x, w, gy, *geo = _case(GEOMETRIES[1], torch.float64, True)
    ex, ew = _exact(x, w, gy, *geo)
    dx, dw = BACKENDS["cpu"].depthwise_conv_bwd(gy, x, w, *geo, True, False)
    assert dw is None
    torch.testing.assert_close(dx, ex, rtol=1e-12, atol=1e-12)
    dx, dw = BACKENDS["cpu"].depthwise_conv_bwd(gy, x, w, *geo, False, True)
    assert dx is None
    torch.testing.assert_close(dw, ew, rtol=1e-12, atol=1e-12)
    # g in the other layout than x is brought to x's.
    dx, _ = BACKENDS["cpu"].depthwise_conv_bwd(gy.contiguous(), x, w, *geo, True, False)
    torch.testing.assert_close(dx, ex, rtol=1e-12, atol=1e-12)


@needs_ext
def test_cpu_kernel_is_bitwise_repeatable_across_thread_counts():
    x, w, gy, *geo = _case((4, 16, 12, 12, 5, 1, 4, 2), torch.float32, True)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = BACKENDS["cpu"].depthwise_conv_bwd(gy, x, w, *geo, True, True)
        torch.set_num_threads(max(2, threads))
        two = BACKENDS["cpu"].depthwise_conv_bwd(gy, x, w, *geo, True, True)
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(one, two))


@needs_ext
@pytest.mark.parametrize("bad, message", [
    (dict(x=torch.zeros(2, 4, 5)), "argument 'x' must be 4-D"),
    (dict(x=torch.zeros(1, 4, 5, 5, dtype=torch.float16)), "argument 'x' must be float32 or "
                                                            "float64"),
    (dict(weight=torch.zeros(4, 2, 3, 3)), "argument 'weight' must have shape (4, 1, kh, kw)"),
    (dict(g=torch.zeros(1, 4, 4, 5)), "argument 'g' must have the forward output's shape"),
    (dict(weight=torch.zeros(4, 1, 3, 3, dtype=torch.float64)), "argument 'weight' must have "
                                                                  "x's dtype"),
    (dict(stride=[1]), "argument 'stride' must have 2 entries"),
    (dict(dilation=[0, 1]), "argument 'dilation' must be positive"),
])
def test_binding_names_bad_arguments(bad, message):
    args = dict(g=torch.zeros(1, 4, 5, 5), x=torch.zeros(1, 4, 5, 5),
                weight=torch.zeros(4, 1, 3, 3), stride=[1, 1], padding=[1, 1],
                dilation=[1, 1], need_dx=True, need_dweight=True)
    args.update(bad)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _ext.C.depthwise_conv_bwd(**args)


def test_is_depthwise_recognises_only_plain_depthwise_convs():
    assert depthwise.is_depthwise(nn.Conv2d(8, 8, 3, groups=8, bias=False))
    assert not depthwise.is_depthwise(nn.Conv2d(8, 8, 3, groups=8, bias=True))
    assert not depthwise.is_depthwise(nn.Conv2d(8, 16, 3, groups=8, bias=False))
    assert not depthwise.is_depthwise(nn.Conv2d(8, 8, 3, groups=4, bias=False))
    assert not depthwise.is_depthwise(nn.Conv2d(8, 8, 1, bias=False))
    assert not depthwise.is_depthwise(nn.Conv2d(8, 8, 3, groups=8, bias=False,
                                                padding_mode="reflect"))


@needs_ext
@pytest.mark.parametrize("name", ["sep_conv_5x5", "dil_conv_3x3"])
@pytest.mark.parametrize("stride", [1, 2])
def test_fused_bodies_run_depthwise_convs_through_the_kernel(name, stride, monkeypatch):
    """A SepConv / DilConv body gives the module's output and every gradient, and its
    depthwise convs' backward goes through the backend's kernel (counted)."""
    from fastdarts.ops.darts import OPS
    op = OPS[name](6, stride, False).double()
    plan = plan_op(0, op)
    calls = []
    real = BACKENDS["cpu"].depthwise_conv_bwd
    monkeypatch.setattr(BACKENDS["cpu"], "depthwise_conv_bwd",
                        staticmethod(lambda *a: calls.append(1) or real(*a)))
    x = torch.randn(2, 6, 8, 8, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last).requires_grad_()
    params = list(op.parameters())
    z = plan.body(x)
    gz = torch.randn_like(z)
    got = torch.autograd.grad(z, [x] + params, gz)
    n_depthwise = sum(depthwise.is_depthwise(m) for m in op.modules())
    assert len(calls) == n_depthwise > 0
    want_z = op.op[:-1](x)  # the body is the op without its final BN
    want = torch.autograd.grad(want_z, [x] + params, gz, allow_unused=True)
    torch.testing.assert_close(z, want_z, rtol=0, atol=0)
    for a, b in zip(got, want):
        if b is None:
            assert a is None or not a.abs().any()
        else:
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@needs_ext
def test_plain_module_call_where_the_difference_could_show():
    """Forward and backward hooks, autocast, no grad: the module itself runs."""
    m = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    x = torch.randn(1, 4, 5, 5, requires_grad=True)
    assert depthwise.conv(m, x).grad_fn.name().startswith("_DepthwiseConvFunction")
    with torch.no_grad():
        assert depthwise.conv(m, x).grad_fn is None
    seen = []
    handle = m.register_forward_hook(lambda *a: seen.append(1))
    out = depthwise.conv(m, x)
    handle.remove()
    assert seen == [1] and "Convolution" in out.grad_fn.name()
    handle = m.register_full_backward_hook(lambda *a: seen.append(2))
    depthwise.conv(m, x).sum().backward()
    handle.remove()
    assert seen == [1, 2]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "Convolution" in depthwise.conv(m, x).grad_fn.name()
