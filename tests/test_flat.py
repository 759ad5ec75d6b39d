"""Flat parameter buffers: parameters and gradients are views (with their own strides), and
optimisers, state_dict, load_state_dict, .to() and zero_grad(set_to_none=True) keep working;
the SGD momentum buffers are shared; one all-reduce averages gradients over processes."""
import copy
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from fastdarts.flat import FlatParameters


def _net(dtype=torch.float32):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
                        nn.Conv2d(5, 4, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3)).to(dtype)
    return net.to(memory_format=torch.channels_last)


def _loss(net, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 6, 7, generator=g, dtype=next(net.parameters()).dtype)
    return F.cross_entropy(net(x.contiguous(memory_format=torch.channels_last)),
                           torch.randint(0, 3, (4,), generator=g))


def test_parameters_become_views_with_their_own_strides():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    strides = [p.stride() for p in net.parameters()]
    flat = FlatParameters(net.parameters(), "weights")
    assert flat.numel == sum(p.numel() for p in net.parameters()) and flat.intact()
    assert [p.stride() for p in net.parameters()] == strides  # channels_last kept
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
    after = net.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # each view holds exactly its parameter's values, in the parameter's memory order
    for p, view in zip(flat.params, flat.views(flat.data)):
        assert torch.equal(p, view) and p.data_ptr() == view.data_ptr()


def test_backward_lands_in_the_flat_gradient_and_sgd_matches_plain_parameters():
    plain, net = _net(), _net()
    flat = FlatParameters(net.parameters())
    opt_plain = torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for step in range(3):
        opt_plain.zero_grad(set_to_none=True)
        _loss(plain, step).backward()
        flat.zero_grad()
        _loss(net, step).backward(inputs=flat.params)
        assert torch.equal(flat.grad, torch.cat([p.grad.permute(*_order(p)).reshape(-1)
                                                 for p in plain.parameters()]))
        nn.utils.clip_grad_norm_(plain.parameters(), 0.5)
        nn.utils.clip_grad_norm_(flat.params, 0.5)
        opt_plain.step()
        opt.step()
    assert flat.intact()
    for a, b in zip(plain.parameters(), net.parameters()):
        assert torch.equal(a, b)


def _order(p):
    """Dimension order of p's memory layout (outermost first)."""
    return sorted(range(p.dim()), key=lambda d: -p.stride(d))


def test_load_state_dict_keeps_views_and_to_rebuilds():
    net = _net()
    flat = FlatParameters(net.parameters())
    other = _net()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(1.0)
    net.load_state_dict(other.state_dict())
    assert flat.intact() and torch.equal(net[0].weight, other[0].weight)
    values = [p.detach().clone() for p in net.parameters()]
    net.double()  # new tensors: the views are gone until ensure()
    assert not flat.intact()
    flat.ensure()
    assert flat.intact() and flat.data.dtype == torch.float64
    assert all(torch.equal(p, v.double()) for p, v in zip(net.parameters(), values))


def test_zero_grad_set_to_none_is_repaired():
    net = _net()
    flat = FlatParameters(net.parameters())
    _loss(net).backward(inputs=flat.params)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    opt.zero_grad(set_to_none=True)
    assert not flat.intact()
    net[0].weight.grad = torch.ones_like(net[0].weight)  # a gradient set by hand is kept
    flat.ensure()
    assert flat.intact() and torch.equal(net[0].weight.grad, torch.ones_like(net[0].weight))
    flat.zero_grad()
    assert flat.grad.abs().sum() == 0 and flat.intact()


def test_momentum_is_shared_with_sgd_and_adopted_after_loading():
    net = _net()
    flat = FlatParameters(net.parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    assert flat.momentum(opt) is None  # before the first step
    twin = copy.deepcopy(net)
    opt_twin = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        if step == 1:
            m = flat.momentum(opt)  # adopt; the next steps update it in place
        for model, o in ((net, opt), (twin, opt_twin)):
            o.zero_grad()
            _loss(model, step).backward()
            o.step()
        if step == 0:
            assert flat.intact() is False  # zero_grad(set_to_none) detached grads
            flat.ensure()
    expected = torch.cat([opt_twin.state[p]["momentum_buffer"].permute(*_order(p)).reshape(-1)
                          for p in twin.parameters()])
    assert flat.momentum(opt) is m and torch.equal(m, expected)
    # a state loaded from a checkpoint holds new tensors: adopted again, same values
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    m2 = flat.momentum(opt)
    assert m2 is not m and torch.equal(m2, expected)


def test_named_errors():
    with pytest.raises(ValueError, match="no weights given"):
        FlatParameters([], "weights")
    a = nn.Parameter(torch.randn(3))
    with pytest.raises(ValueError, match="the same tensor twice"):
        FlatParameters([a, a])
    with pytest.raises(ValueError, match=r"weights\[1\] is torch.float64"):
        FlatParameters([a, nn.Parameter(torch.randn(2, dtype=torch.float64))], "weights")
    with pytest.raises(ValueError, match=r"\[0\] \(shape \(2, 3\).*is not dense"):
        FlatParameters([nn.Parameter(torch.randn(2, 6)[:, ::2])])
    with pytest.raises(TypeError, match="must be torch.optim.SGD"):
        FlatParameters([a]).momentum(torch.optim.Adam([a]))


WORLD = 2


def _all_reduce_worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        net = _net(torch.float64)
        flat = FlatParameters(net.parameters())
        flat.zero_grad()
        _loss(net, seed=10 + rank).backward(inputs=flat.params)
        flat.all_reduce_grad()
        if rank == 0:
            torch.save(flat.grad, os.path.join(out_dir, "grad.pt"))
    finally:
        dist.destroy_process_group()


def test_one_all_reduce_averages_gradients_over_processes():
    expected = 0
    for rank in range(WORLD):
        net = _net(torch.float64)
        flat = FlatParameters(net.parameters())
        _loss(net, seed=10 + rank).backward(inputs=flat.params)
        expected = expected + flat.grad / WORLD
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_all_reduce_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD)
        got = torch.load(os.path.join(tmp, "grad.pt"))
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-15)
