"""`fastdarts.ops.pooling.AvgPool2d`: PyTorch's CUDA avg_pool2d backward is wrong for
channels_last inputs with padding (pytorch/pytorch#188344); ours routes it through the NCHW
kernel. Its gradient equals the fp64 CPU gradient, for the pools of the DARTS and NB201 ops."""
import pytest
import torch
import torch.nn.functional as F

from fastdarts.ops.pooling import AvgPool2d, _AvgPoolNCHWBackward

POOLS = [dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
         dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
         dict(kernel_size=3, stride=2, padding=1, count_include_pad=True, ceil_mode=True),
         dict(kernel_size=2, stride=2, padding=0)]


def _grad(pool, x, g):
    x = x.detach().clone().requires_grad_()
    out = pool(x)
    (dx,) = torch.autograd.grad(out, x, g.to(device=out.device, dtype=out.dtype))
    return out.detach().double().cpu(), dx.double().cpu()


def _case(kw, device, dtype=torch.float32):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 9, 7, generator=gen, dtype=torch.float64)
    out_shape = F.avg_pool2d(x, **kw).shape
    g = torch.randn(out_shape, generator=gen, dtype=torch.float64)
    return x, g, x.to(device, dtype).contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("kw", POOLS)
def test_nchw_backward_function_equals_avg_pool2d_on_the_cpu(kw):
    """The workaround's own arithmetic (layout conversions, argument forms), checked where
    PyTorch's kernel is right."""
    x, g, x_cl = _case(kw, "cpu", torch.float64)
    k, s, p = ([kw[n]] * 2 if isinstance(kw[n], int) else kw[n]
               for n in ("kernel_size", "stride", "padding"))
    args = (k, s, p, kw.get("ceil_mode", False), kw.get("count_include_pad", True), None)
    out, dx = _grad(lambda t: _AvgPoolNCHWBackward.apply(t, *args), x_cl, g)
    want_out, want_dx = _grad(lambda t: F.avg_pool2d(t, **kw), x, g)
    assert torch.equal(out, want_out) and torch.allclose(dx, want_dx, rtol=1e-14, atol=1e-15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kw", POOLS)
def test_cuda_channels_last_gradient_equals_fp64_cpu(kw):
    x, g, x_cl = _case(kw, "cuda")
    out, dx = _grad(AvgPool2d(**kw), x_cl, g)
    want_out, want_dx = _grad(lambda t: F.avg_pool2d(t, **kw), x, g)
    assert torch.allclose(out, want_out, rtol=1e-5, atol=1e-6)
    assert torch.allclose(dx, want_dx, rtol=1e-5, atol=1e-6), (dx - want_dx).abs().max()
