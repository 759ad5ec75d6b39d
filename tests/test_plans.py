"""Op plans and body segments (fastdarts/plans.py): where bodies are cut, that a segment's
gradients are the plain body's, that `fast` never runs a full convolution twice, and that it
keeps at most half of what the original edge keeps."""
import pytest
import torch
from torch import nn

from fastdarts.mixed import FusedMixedOp, MixedOp
from fastdarts.ops.darts import DilConv, FactorizedReduce, SepConv
from fastdarts.plans import plan_op


def _fused_fast(body):
    """`body` as the only op of a `fast` fused edge (mixing weight 1): the edge runs its
    segments itself and folds its final BN."""
    edge = FusedMixedOp(nn.ModuleList([body]), memory="fast")
    one = torch.ones(1, dtype=next(body.parameters()).dtype)
    return lambda x: edge(x, one)


def _kinds(seg):
    return [type(m).__name__ for m in seg.head_modules], type(seg.last).__name__


def test_segments_cut_after_each_full_conv():
    sep = plan_op(0, SepConv(4, 4, 3, 1, 1, affine=False))
    assert [_kinds(s) for s in sep.segments] == [
        (["ReLU", "Conv2d"], "Conv2d"), (["BatchNorm2d", "ReLU", "Conv2d"], "Conv2d")]
    assert isinstance(sep.tail, nn.BatchNorm2d) and sep.tail is not sep.segments[1].head_modules[0]
    dil = plan_op(0, DilConv(4, 4, 3, 2, 2, 2, affine=False))
    assert [_kinds(s) for s in dil.segments] == [(["ReLU", "Conv2d"], "Conv2d")]
    # Nothing worth recomputing, or not ours to recompute: keep the graph.
    pool = plan_op(0, nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.BatchNorm2d(4, affine=False)))
    assert pool.segments is None
    inplace = plan_op(0, nn.Sequential(nn.ReLU(inplace=True), nn.Conv2d(4, 4, 1),
                                       nn.BatchNorm2d(4)))
    assert inplace.segments is None
    assert plan_op(0, FactorizedReduce(4, 4, affine=False)).segments is None
    dropout = plan_op(0, nn.Sequential(nn.Conv2d(4, 4, 1), nn.Dropout(0.1),
                                       nn.BatchNorm2d(4)))
    assert dropout.segments is None


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_segment_gradients_equal_the_plain_body(fmt):
    """A body run as segments by a `fast` fused edge: biased, strided, dilated and grouped
    convs; training-mode inner BN with affine; a head that takes the autograd path."""
    torch.manual_seed(0)
    body = nn.Sequential(
        nn.ReLU(), nn.Conv2d(6, 6, 3, stride=2, padding=2, dilation=2, groups=6, bias=True),
        nn.Conv2d(6, 4, 1, bias=True), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1, groups=2, bias=False), nn.MaxPool2d(3, 1, 1),
        nn.BatchNorm2d(4, affine=False)).double()
    plan = plan_op(0, body)
    assert len(plan.segments) == 3 and plan.segments[2].last is None and plan.tail is body[7]
    x = torch.randn(3, 6, 9, 7, dtype=torch.float64).contiguous(memory_format=fmt)
    g = torch.randn(3, 4, 5, 4, dtype=torch.float64)
    params = [p for p in body.parameters()]

    def grads(run):
        xr = x.clone().requires_grad_()
        out = run(xr)
        got = torch.autograd.grad(out, [xr] + params, g, allow_unused=True)
        return out.detach(), got

    stats0 = body[3].running_mean.clone()
    out_a, ga = grads(lambda xr: plan.tail(plan.body(xr)))
    stats1 = body[3].running_mean.clone()
    out_b, gb = grads(_fused_fast(body))
    # The inner BN updates its running statistics once per forward, not again in backward.
    assert not torch.equal(stats0, stats1)
    assert int(body[3].num_batches_tracked) == 2
    torch.testing.assert_close(out_b, out_a, rtol=1e-12, atol=1e-12)
    for a, b in zip(ga, gb):
        if a is None:
            assert b is None or float(b.abs().max()) == 0.0
        else:
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_fast_backward_never_runs_a_full_conv_again():
    torch.manual_seed(0)
    op = MixedOp(8, 1, memory="fast")
    calls = {"full": 0, "depthwise": 0}

    def count(m, *_):
        calls["depthwise" if m.groups == m.in_channels > 1 else "full"] += 1

    for m in op.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(count)
    x = torch.randn(2, 8, 8, 8, requires_grad=True)
    w = torch.softmax(torch.randn(8), 0).requires_grad_()
    out = op(x, w)
    after_forward = dict(calls)
    assert after_forward == {"full": 6, "depthwise": 6}  # 2 SepConv x 2 + 2 DilConv
    out.backward(torch.randn_like(out))
    assert calls["full"] == after_forward["full"]
    assert calls["depthwise"] == 2 * after_forward["depthwise"]  # recomputed once each


@pytest.mark.parametrize("stride", [1, 2])
def test_fast_keeps_at_most_half_of_the_original_edge(stride):
    torch.manual_seed(0)
    ref = MixedOp(16, stride, memory="reference")
    fast = MixedOp(16, stride, memory="fast")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(4, 16, 16, 16, requires_grad=True)
    w = torch.softmax(torch.randn(8), 0).requires_grad_()
    params = {p.untyped_storage().data_ptr() for p in ref.parameters()} | {
        p.untyped_storage().data_ptr() for p in fast.parameters()}
    kept = {}
    for name, op in (("reference", ref), ("fast", fast)):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            op(x, w)
        kept[name] = sum(n for ptr, n in seen.items() if ptr not in params)
    assert kept["fast"] <= kept["reference"] / 2, kept


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("need_x", [True, False])
@pytest.mark.parametrize("training", [True, False])
def test_simple_heads_backpropagated_by_hand_equal_autograd(fmt, need_x, training):
    """Heads of ReLUs, depthwise convs and BatchNorms (every segment of ReLUConvBN, DilConv
    and SepConv) take the hand-written backward: same gradients as the plain body, at
    stride 2, dilation 2, 5x5, odd sizes, affine inner BN in train and eval mode, with or
    without a gradient for the input; the inner BN's running statistics are updated by the
    forward only."""
    from fastdarts.ops.darts import ReLUConvBN
    torch.manual_seed(0)
    bodies = [SepConv(5, 7, 5, 2, 2, affine=True), DilConv(5, 7, 3, 2, 2, 2, affine=True),
              ReLUConvBN(5, 7, 3, 2, 1, affine=True)]
    for body in bodies:
        body = body.double().train(training)
        for m in body.modules():
            if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics and affine
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
                m.weight.data.uniform_(0.5, 1.5)
                m.bias.data.uniform_(-0.5, 0.5)
        plan = plan_op(0, body)
        assert all(seg.simple_head for seg in plan.segments)
        x = torch.randn(2, 5, 9, 7, dtype=torch.float64).contiguous(memory_format=fmt)
        params = list(body.parameters())

        def grads(run):
            xr = x.clone().requires_grad_(need_x)
            out = run(xr)
            g = torch.randn(out.shape, dtype=torch.float64,
                            generator=torch.Generator().manual_seed(3))
            return torch.autograd.grad(out, ([xr] if need_x else []) + params, g,
                                       allow_unused=True)

        want = grads(lambda xr: plan.tail(plan.body(xr)))
        buffers = [b.clone() for b in body.buffers()]
        got = grads(_fused_fast(body))
        for a, b in zip(want, got):
            torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
        if not training:
            for a, b in zip(buffers, body.buffers()):
                assert torch.equal(a, b)
        else:  # one update by each of the two forwards above, none by the backward
            assert all(int(m.num_batches_tracked) == 2 for m in body.modules()
                       if isinstance(m, nn.BatchNorm2d))
