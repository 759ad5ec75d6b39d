"""`fastdarts.wider`: DrNAS's progressive widening of partial-channel edges. Parameter counts
against DrNAS's supernet before and after widening; old channels kept and new ones copied
from old ones (Net2Wider, no rescaling); the widened edge equal in every memory mode (stale
caches would break this); optimiser parameters and state carried over; named errors."""
import copy

import pytest
import torch

import fastdarts
from fastdarts import PartialMixedOp
from fastdarts.spaces import build_supernet

DRNAS_OPS = ("max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
             "dil_conv_3x3", "dil_conv_5x5")


def _count(model):
    return sum(p.numel() for p in model.weight_parameters())


def test_parameter_counts_of_drnas_stages():
    """ALGORITHMS.md §1.1.9: DrNAS CIFAR stage 1 (C=36, L=20, K=6, 7 ops) and stage 2."""
    model = build_supernet("darts", 10, C=36, layers=20, primitives=DRNAS_OPS, partial_k=6,
                           edge_normalisation=False)  # DrNAS has no betas
    assert _count(model) == 2_221_750 and len(model.arch_parameters()) == 2
    fastdarts.wider(model, 4)
    assert _count(model) == 2_986_462
    assert all(m.k == 4 for m in model.modules() if isinstance(m, PartialMixedOp))


@pytest.mark.parametrize("stride", [1, 2])
def test_old_channels_kept_new_channels_copied(stride):
    torch.manual_seed(0)
    op = PartialMixedOp(24, stride, 4, memory="low").double()
    for bn in (m for m in op.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_()
    before = {n: t.detach().clone() for n, t in op.state_dict().items()}
    op.wider(2, generator=torch.Generator().manual_seed(1))
    after = op.state_dict()
    assert set(after) == set(before)
    for name, old in before.items():
        new = after[name]
        if old.dim() == 0:
            assert torch.equal(new, old), name
            continue
        region = tuple(slice(0, s) for s in old.shape)
        if "conv_1" in name or "conv_2" in name or name.endswith(".bn.running_mean"):
            continue  # FactorizedReduce's halves: checked below
        assert torch.equal(new[region], old), name
        # every new slice along a widened dim is a copy of an old slice
        for dim in range(old.dim()):
            if new.shape[dim] != old.shape[dim]:
                for j in range(old.shape[dim], new.shape[dim]):
                    row = new.narrow(dim, j, 1)
                    assert any(torch.equal(row, new.narrow(dim, i, 1))
                               for i in range(old.shape[dim])), (name, dim, j)
    if stride == 2:
        fr = op._ops[3]  # skip_connect on a reduction edge: FactorizedReduce
        assert fr.conv_1.weight.shape == (6, 12, 1, 1) and fr.bn.num_features == 12


@pytest.mark.parametrize("memory", ["fast", "low"])
@pytest.mark.parametrize("stride", [1, 2])
def test_widened_edge_equals_reference_mode(memory, stride):
    torch.manual_seed(0)
    op = PartialMixedOp(24, stride, 6, memory=memory).double()
    x = torch.randn(2, 24, 8, 8, dtype=torch.float64)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
    op(x, w).sum().backward()  # fills the plan and parameter caches at K = 6
    op.zero_grad(set_to_none=True)
    op.wider(3, generator=torch.Generator().manual_seed(2))
    ref = copy.deepcopy(op)
    ref.memory = "reference"

    def run(m):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = m(xr, wr)
        params = list(m.parameters())
        return [out] + list(torch.autograd.grad(out.square().sum(), [xr, wr] + params))

    for a, b in zip(run(op), run(ref)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
def test_optimizer_state_is_carried_over(opt_name):
    torch.manual_seed(0)
    model = build_supernet("darts", 10, C=12, layers=3, primitives=DRNAS_OPS, partial_k=6)
    params = model.weight_parameters()
    opt = (torch.optim.SGD(params, lr=0.1, momentum=0.9) if opt_name == "sgd"
           else torch.optim.Adam(params, lr=1e-3))
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    old_state = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in params}
    widened = fastdarts.wider(model, 3, optimizer=opt, generator=torch.Generator().manual_seed(3))
    assert widened
    group = opt.param_groups[0]["params"]
    assert {id(p) for p in group} == {id(p) for p in model.weight_parameters()}
    assert not any(id(old) in {id(p) for p in opt.state} for old, _, _ in widened)
    for old, new, fn in widened:
        for key, value in old_state[id(old)].items():
            got = opt.state[new][key]
            if value.shape == old.shape:
                assert got.shape == new.shape
                torch.testing.assert_close(got, fn(value))
            else:
                assert torch.equal(got, value)  # e.g. Adam's step count
    opt.zero_grad(set_to_none=True)
    torch.nn.functional.cross_entropy(model(x), y).backward()
    before = [p.detach().clone() for p in model.weight_parameters()]
    opt.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.weight_parameters()))


def test_named_errors():
    op = PartialMixedOp(12, 1, 2)
    with pytest.raises(ValueError, match="only widens"):
        op.wider(4)
    with pytest.raises(ValueError, match="divisible by k"):
        op.wider(5)
    with pytest.raises(ValueError, match="even width"):
        PartialMixedOp(12, 2, 6).wider(4)  # FactorizedReduce from 2 to 3 channels
