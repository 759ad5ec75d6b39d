"""Second-order DARTS without a model copy (DESIGN.md §5, ALGORITHMS.md §2.1):

* `fd_hvp` against the exact Hessian-vector product by double backward on a DARTS supernet
  made smooth (SiLU for ReLU, average for max pooling: finite differences step over kinks
  the exact product ignores), fp64: relative error <= 1e-4 and shrinking as O(r^2);
* the (2 eps) divisor, on a loss whose gradient is linear in the weights (the quotient is then
  exact, and `/ 2 * eps` would be off by 4 eps^2);
* the architect's second-order gradient against the copy-based reference written the
  original's way, in every memory mode and on a PC-DARTS supernet;
* weights bit-identical and BN running statistics untouched after the step;
* a second-order search through the CLI.
"""
import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdarts.algorithms import DARTS
from fastdarts.backends import BACKENDS
from fastdarts.cli import main as cli_main
from fastdarts.flat import FlatParameters
from fastdarts.hvp import fd_hvp
from fastdarts.reference.second_order import unrolled_arch_grads_ref
from fastdarts.search import SearchConfig
from fastdarts.spaces import build_supernet
from tests.conftest import backend_device_pairs


def _smooth(model: nn.Module) -> nn.Module:
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(parent, name, nn.SiLU())
            elif isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride,
                                                   child.padding, count_include_pad=False))
    return model


def _supernet(memory="reference", seed=0, **kw):
    torch.manual_seed(seed)
    return build_supernet("darts", 10, C=4, layers=3, memory=memory, **kw).double()


def _batch(seed, n=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (n,), generator=g))


def _loss_of(model, x, y):
    return F.cross_entropy(model(x, model.mixing_weights()), y)


def _exact_hvp(model, batch, vector):
    weights, arch = model.weight_parameters(), model.arch_parameters()
    grads = torch.autograd.grad(_loss_of(model, *batch), weights, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vector))
    return torch.autograd.grad(dot, arch)


def _rel(a, b):
    a, b = torch.cat([t.reshape(-1) for t in a]), torch.cat([t.reshape(-1) for t in b])
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("flat", [False, True], ids=["tensors", "flat-buffer"])
def test_fd_hvp_matches_exact_product_and_error_is_second_order(flat):
    model = _smooth(_supernet())
    batch = _batch(1)
    gen = torch.Generator().manual_seed(3)
    vector = [torch.randn(p.shape, generator=gen, dtype=torch.float64)
              for p in model.weight_parameters()]
    exact = _exact_hvp(model, batch, vector)
    weights = FlatParameters(model.weight_parameters()) if flat else model.weight_parameters()
    before = [p.detach().clone() for p in model.weight_parameters()]
    errors = {}
    for r in (1e-1, 1e-2):
        est = fd_hvp(lambda: _loss_of(model, *batch), weights, model.arch_parameters(),
                     vector, r=r)
        assert [t.shape for t in est] == [a.shape for a in model.arch_parameters()]
        errors[r] = _rel(est, exact)
    # weights bit-identical afterwards
    assert all(torch.equal(p, b) for p, b in zip(model.weight_parameters(), before))
    assert errors[1e-2] <= 1e-4, errors
    # O(r^2): ten times smaller r, about a hundred times smaller error
    assert errors[1e-1] / errors[1e-2] > 30, errors


@pytest.mark.parametrize("backend,device", backend_device_pairs())
def test_fd_hvp_divides_by_two_eps(backend, device):
    """L = a^T A w + |a|^2 |w|^2 / 2: the alpha gradient is A w + a |w|^2, quadratic in w, so
    its central difference along v is exact up to rounding: A v + 2 a (w . v). With ||v|| = 1000 and r = 1e-2, eps = 1e-5: a misplaced eps would be
    off by a factor 4e-10."""
    dtype = torch.float64 if torch.float64 in BACKENDS[backend].DTYPES else torch.float32
    gen = torch.Generator().manual_seed(0)
    A, w, a, v = (torch.randn(*s, generator=gen, dtype=torch.float64)
                  for s in ((3, 50), (50,), (3,), (50,)))
    v = v * (1000 / v.norm())
    exact = A @ v + a * 2 * (w @ v)
    A, w, a, v = (t.to(device, dtype) for t in (A, w, a, v))
    w.requires_grad_(), a.requires_grad_()
    loss = lambda: a @ A @ w + (a @ a) * (w @ w) / 2  # noqa: E731
    est = fd_hvp(loss, [w], [a], [v], r=1e-2, backend=backend)[0]
    rtol = 1e-8 if dtype == torch.float64 else 2e-2  # fp32 differences of O(1) gradients
    assert torch.allclose(est.double().cpu(), exact, rtol=rtol, atol=0), (est, exact)


def test_fd_hvp_named_errors():
    w = torch.randn(4, requires_grad=True)
    a = torch.randn(2, requires_grad=True)
    loss = lambda: (a.sum() * w).sum()  # noqa: E731
    with pytest.raises(ValueError, match=r"vector\[0\] must have weights\[0\]'s shape"):
        fd_hvp(loss, [w], [a], [torch.randn(5)])
    with pytest.raises(ValueError, match="one tensor per weight"):
        fd_hvp(loss, [w], [a], [])
    with pytest.raises(ValueError, match="'r' must be a positive finite number"):
        fd_hvp(loss, [w], [a], [torch.randn(4)], r=float("nan"))
    with pytest.raises(ValueError, match="'arch' must be a non-empty list"):
        fd_hvp(loss, [w], [a.detach()], [torch.randn(4)])


def _trained(memory, **kw):
    """A supernet and its SGD after two weight steps (so that momentum buffers exist)."""
    model = _supernet(memory, **kw)
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.025, momentum=0.9,
                          weight_decay=3e-4)
    for step in range(2):
        opt.zero_grad()
        _loss_of(model, *_batch(10 + step)).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, opt


def _architect(model, opt):
    cfg = SearchConfig(order=2, hvp_r=1e-2).resolved()
    algo = DARTS(cfg)
    flat = FlatParameters(model.weight_parameters(), "weights")
    algo.setup(model, opt, flat)
    return algo, flat


@pytest.mark.parametrize("memory,kw", [("reference", {}), ("low", {}), ("fast", {}),
                                       ("low", {"partial_k": 2})],
                         ids=["reference", "low", "fast", "pcdarts-low"])
def test_second_order_gradient_equals_the_copy_based_reference(memory, kw):
    model, opt = _trained(memory, **kw)
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref_model.weight_parameters(), lr=0.025, momentum=0.9,
                              weight_decay=3e-4)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    train, val = _batch(20), _batch(21)
    expected = unrolled_arch_grads_ref(ref_model, _loss_of, train, val, ref_opt, r=1e-2)

    algo, flat = _architect(model, opt)
    weights_before = flat.data.clone()
    buffers_before = {k: v.clone() for k, v in model.named_buffers()}
    algo.mixing_weights = lambda m, phase: m.mixing_weights()
    algo.second_order_grads(model, train, val)
    got = [a.grad for a in model.arch_parameters()]
    assert _rel(got, expected) <= 1e-9
    # the weights are restored bit for bit (the reference's in-place restore drifts)
    assert torch.equal(flat.data, weights_before)
    # the extra passes leave the running statistics alone (the reference's update them)
    for k, v in model.named_buffers():
        assert torch.equal(v, buffers_before[k]), k
    assert any(not torch.equal(v, dict(ref_model.named_buffers())[k])
               for k, v in buffers_before.items() if "running_mean" in k)


def test_second_order_uses_the_optimisers_momentum_and_learning_rate():
    """Changing the optimiser's momentum buffer or lr changes the gradient exactly as the
    reference's formula says (the virtual step reads the real optimiser state)."""
    model, opt = _trained("reference")
    for group in opt.param_groups:
        group["lr"] = 0.05
    train, val = _batch(30), _batch(31)
    ref_model = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(ref_model.weight_parameters(), lr=0.05, momentum=0.9,
                              weight_decay=3e-4)
    ref_opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    expected = unrolled_arch_grads_ref(ref_model, _loss_of, train, val, ref_opt)
    algo, _ = _architect(model, opt)
    algo.second_order_grads(model, train, val)
    assert _rel([a.grad for a in model.arch_parameters()], expected) <= 1e-9
    # the reference without momentum differs: the momentum term matters at this size
    ref_model2 = copy.deepcopy(model)
    ref_opt2 = torch.optim.SGD(ref_model2.weight_parameters(), lr=0.05, momentum=0.9,
                               weight_decay=3e-4)
    no_momentum = unrolled_arch_grads_ref(ref_model2, _loss_of, train, val, ref_opt2)
    assert _rel(no_momentum, expected) > 1e-6


@pytest.mark.slow
def test_cli_second_order_darts_search_on_digits(tmp_path, capsys):
    run = tmp_path / "order2"
    args = ["search", "--order", "2", "--run-dir", str(run), "--epochs", "3",
            "--init-channels", "4", "--layers", "3", "--no-progress"]
    assert cli_main(args) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["config"]["order"] == 2
    assert result["test_accuracy"] > 40.0  # chance is 10%
    assert "genotype: Genotype(normal=" in capsys.readouterr().out
