"""Passes that differentiate the architecture only (the first-order architecture step, and
through the same context SDARTS-ADV's attack and the finite-difference passes of second
order, which tests/test_methods.py and tests/test_second_order.py compare with their
references) run with the weights frozen (`fastdarts.training.weights_frozen`). The
architecture gradient is the one the unfrozen pass gives; no weight gradient is formed; the
weights' flags and gradients are left as they were."""
import contextlib

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fastdarts.search import SearchConfig, build_search
from fastdarts.training import weights_frozen

CASES = {"darts": {}, "nb201": dict(space="nb201"), "pcdarts": dict(algo="pcdarts"),
         "drnas": dict(algo="drnas"), "rf-darts": dict(algo="rf-darts"),
         "s4": dict(space="s4")}


def _parts(memory, **kw):
    cfg = SearchConfig(dataset="synthetic", init_channels=12, layers=3, memory=memory,
                       device="cpu", **kw).resolved()
    torch.manual_seed(0)
    return build_search(cfg, 10, 3, torch.device("cpu"))


class _WeightGradConvs(TorchDispatchMode):
    """Counts the convolution backward calls that form a weight gradient."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "convolution_backward" and args[-1][1]:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _arch_step(memory, kw, frozen: bool):
    algo, model, training = _parts(memory, **kw)
    if not frozen:
        algo.weights_frozen = lambda model: contextlib.nullcontext()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(4, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 10, (4,), generator=g))
    trained = [p for p in model.weight_parameters() if p.requires_grad]
    sentinel = [torch.full_like(p, 0.5) for p in trained]
    for p, s in zip(trained, sentinel):
        p.grad = s.clone()
    torch.manual_seed(2)  # the S4 noise op draws in the step
    with _WeightGradConvs() as spy:
        algo.arch_step(model, batch, batch, 0.1)
    assert all(p.requires_grad for p in trained)
    for p, s in zip(trained, sentinel):
        assert torch.equal(p.grad, s)
    arch = model.arch_parameters()
    return [a.grad.clone() for a in arch], [a.detach().clone() for a in arch], spy.count


@pytest.mark.parametrize("memory", ["low", "fast", "reference"])
@pytest.mark.parametrize("kw", CASES.values(), ids=CASES.keys())
def test_arch_step_with_frozen_weights_equals_the_unfrozen_step(kw, memory):
    grads, alphas, weight_grad_convs = _arch_step(memory, kw, frozen=True)
    want_grads, want_alphas, unfrozen_convs = _arch_step(memory, kw, frozen=False)
    for a, b in zip(grads, want_grads):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(alphas, want_alphas):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
    assert weight_grad_convs == 0
    # aten's own conv backward skips the weight gradients autograd.grad does not ask for;
    # the fused backward of a full conv (`fast`) and the cell replay (`low`) formed them
    if kw.get("algo") == "rf-darts" or memory == "reference":  # RF's convs are frozen
        assert unfrozen_convs == 0
    else:
        assert unfrozen_convs > 0


def test_weights_frozen_restores_the_flags_after_an_error():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    b.requires_grad_(False)  # frozen before: stays frozen
    view = a[:1]  # not a leaf: left alone
    with pytest.raises(RuntimeError, match="boom"), weights_frozen([a, b, view]):
        assert not a.requires_grad
        raise RuntimeError("boom")
    assert a.requires_grad and not b.requires_grad
