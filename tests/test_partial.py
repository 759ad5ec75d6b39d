"""The partial-channel mixed op (fastdarts/partial.py) against an independently written
PC-DARTS MixedOp (tests/darts_style_model.py): the shuffle permutation against its formula,
output and every gradient for K in {1, 2, 4, 6}, stride 1 and 2, all memory modes, and the
named errors."""
import pytest
import torch

from fastdarts.partial import PartialMixedOp, channel_shuffle, shuffle_positions
from tests.darts_style_model import PRIMS, MixedOp, PCMixedOp, pc_shuffle


@pytest.mark.parametrize("C,K", [(12, 1), (12, 2), (12, 4), (12, 6), (10, 5)])
def test_shuffle_moves_each_channel_to_its_formula_position(C, K):
    x = torch.arange(C, dtype=torch.float64).view(1, C, 1, 1).expand(2, C, 3, 2).contiguous()
    out = channel_shuffle(x, K)
    pos = shuffle_positions(C, K)
    for c in range(C):
        assert pos[c] == (c % (C // K)) * K + c // (C // K)
        assert torch.equal(out[:, pos[c]], x[:, c])
    assert torch.equal(out, pc_shuffle(x, K))
    assert sorted(pos.tolist()) == list(range(C))


@pytest.mark.parametrize("memory", ["reference", "fast", "low"])
@pytest.mark.parametrize("K", [1, 2, 4, 6])
@pytest.mark.parametrize("stride,size", [(1, 7), (2, 8)])
def test_partial_mixed_op_matches_pc_darts(memory, K, stride, size):
    # Stride 1: C/K = 3 channels for K = 4 (odd); stride 2: FactorizedReduce needs even C/K.
    C = 12 if stride == 1 else 24
    torch.manual_seed(K * 10 + stride)
    ours = PartialMixedOp(C, stride, K, memory=memory).double()
    # K = 1 is the plain DARTS edge (PC-DARTS's code would max-pool an empty bypass).
    theirs = (PCMixedOp(C, stride, PRIMS, K) if K > 1 else MixedOp(C, stride, PRIMS)).double()
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, C, size, size, dtype=torch.float64)
    w = torch.softmax(torch.randn(len(PRIMS), dtype=torch.float64), 0)

    def run(model):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = model(xr, wr)
        g = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        params = list(model.parameters())
        grads = torch.autograd.grad(out, [xr, wr] + params, g, allow_unused=True)
        buffers = [b.clone() for b in model.buffers()]
        return out.detach(), grads, buffers

    out_a, grads_a, buf_a = run(ours)
    out_b, grads_b, buf_b = run(theirs)
    torch.testing.assert_close(out_a, out_b, rtol=1e-10, atol=1e-12)
    for i, (a, b) in enumerate(zip(grads_a, grads_b)):
        if b is None:
            assert a is None or float(a.abs().max()) == 0.0, i
        else:
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=lambda m: f"{i}: {m}")
    for a, b in zip(buf_a, buf_b):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_named_errors():
    with pytest.raises(ValueError, match="divisible by k"):
        PartialMixedOp(10, 1, 4)
    with pytest.raises(ValueError, match="positive int"):
        PartialMixedOp(8, 1, 0)
    op = PartialMixedOp(8, 1, 2)
    with pytest.raises(ValueError, match="argument 'x'"):
        op(torch.randn(1, 6, 4, 4), torch.ones(8) / 8)
    with pytest.raises(ValueError, match="even height and width on a reduction edge"):
        PartialMixedOp(8, 2, 2)(torch.randn(1, 8, 7, 7), torch.ones(8) / 8)


@pytest.mark.parametrize("memory", ["fast", "low"])
@pytest.mark.parametrize("backend", [b for b in ("cpu", "triton", "reference")])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "nhwc"])
def test_fp32_every_backend_within_1e5_of_fp64_pc_darts(memory, backend, layout):
    from fastdarts.backends import BACKENDS
    if not BACKENDS[backend].is_available() or "cpu" not in BACKENDS[backend].devices():
        pytest.skip(f"{backend} cannot run on the CPU here")
    torch.manual_seed(3)
    ours = PartialMixedOp(16, 2, 4, memory=memory, backend=backend)
    theirs = PCMixedOp(16, 2, PRIMS, 4).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64).contiguous(memory_format=layout)
    w = torch.softmax(torch.randn(len(PRIMS), dtype=torch.float64), 0)
    g = torch.randn(2, 16, 3, 3, dtype=torch.float64)

    def run(model, dtype):
        xr = x.to(dtype).requires_grad_()
        wr = w.to(dtype).requires_grad_()
        out = model(xr, wr)
        return [out] + list(torch.autograd.grad(out, [xr, wr], g.to(dtype)))

    for a, b in zip(run(ours, torch.float32), run(theirs, torch.float64)):
        err = ((a.double() - b).abs().max() / b.abs().max()).item()
        assert err <= 1e-5, err


@pytest.mark.parametrize("memory", ["reference", "fast", "low"])
def test_sampled_selection_is_the_original_on_permuted_channels(memory):
    """selection='sampled': the edge is PC-DARTS's on x's channels in a random order drawn
    from torch's RNG per forward (train mode); eval mode uses the first channels."""
    torch.manual_seed(0)
    ours = PartialMixedOp(12, 1, 4, memory=memory, selection="sampled").double()
    theirs = PCMixedOp(12, 1, PRIMS, 4).double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 12, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(len(PRIMS), dtype=torch.float64), 0)
    torch.manual_seed(9)
    out = ours(x, w)
    torch.manual_seed(9)
    perm = torch.randperm(12)
    want = theirs(x.index_select(1, perm), w)
    torch.testing.assert_close(out, want, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0],
                               torch.autograd.grad(want, x, g)[0], rtol=1e-10, atol=1e-12)
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(ours(x, w), theirs(x, w), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="selection must be"):
        PartialMixedOp(12, 1, 4, selection="random")


def test_sampled_selection_supernet_step_equal_in_all_modes():
    """The low mode's cell recompute replays the channel permutations."""
    from fastdarts.spaces import build_supernet
    torch.manual_seed(0)
    ref = build_supernet("darts", 5, C=8, layers=3, partial_k=4, partial_selection="sampled",
                         memory="reference").double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 3])

    def run(memory):
        import copy
        model = copy.deepcopy(ref)
        for m in model.modules():
            if hasattr(m, "memory"):
                m.memory = memory
        torch.manual_seed(4)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        return [loss] + list(torch.autograd.grad(loss, list(model.parameters())))

    want = run("reference")
    for memory in ("fast", "low"):
        for a, b in zip(run(memory), want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
