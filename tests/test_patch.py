"""`fastdarts.patch` on a DARTS-style model written independently (tests/darts_style_model.py):
same loss and gradients (weights and unregistered alphas) as before patching, state_dict keys
unchanged, unknown ops run whole, a mixed op that is not a plain weighted sum is caught."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from fastdarts import patch, unpatch
from tests import darts_style_model as dsm


def _model(prims=dsm.PRIMS, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return dsm.Network(C=4, num_classes=5, layers=3, steps=2, multiplier=2,
                       prims=prims).to(dtype)


def _step(model, x, y):
    loss = F.cross_entropy(model(x), y)
    params = list(model.parameters()) + [model.alphas_normal, model.alphas_reduce]
    return loss, torch.autograd.grad(loss, params)


def _same_alphas(dst, src):
    dst.alphas_normal = src.alphas_normal.detach().clone().requires_grad_()
    dst.alphas_reduce = src.alphas_reduce.detach().clone().requires_grad_()


@pytest.mark.parametrize("memory", ["low", "fast"])
@pytest.mark.parametrize("prims", [dsm.PRIMS, dsm.PRIMS[1:] + ["shifted_tanh"]],
                         ids=["darts", "no-none+unknown-op"])
def test_patch_keeps_loss_and_gradients(memory, prims):
    model = _model(prims)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 4])
    before = copy.deepcopy(model)
    _same_alphas(before, model)
    keys = list(model.state_dict())
    report = patch(model, memory=memory)
    assert len(report.mixed_ops) == 3 * 5 and not report.problems
    assert len(report.cells) == (3 if memory == "low" else 0)
    if "shifted_tanh" in prims:
        assert report.unfused_ops and all("Shifted" in n for n in report.unfused_ops)
    assert list(model.state_dict()) == keys
    for _ in range(2):  # first call verifies; the second runs fused only
        loss_a, grads_a = _step(before, x, y)
        loss_b, grads_b = _step(model, x, y)
        assert torch.allclose(loss_a, loss_b, rtol=1e-12)
        for a, b in zip(grads_a, grads_b):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
    for (name, a), b in zip(model.state_dict().items(), before.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-12, atol=1e-14), name


def test_patch_catches_a_mixed_op_that_is_not_a_plain_sum():
    class DoubledMixedOp(dsm.MixedOp):
        def forward(self, x, weights):
            return 2 * sum(w * op(x) for w, op in zip(weights, self._ops))

    model = _model()
    model.cells[0]._ops[0].__class__ = DoubledMixedOp
    reference = copy.deepcopy(model)
    _same_alphas(reference, model)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 2])
    report = patch(model, memory="low")
    with pytest.warns(RuntimeWarning, match=r"cells\.0\._ops\.0 \(DoubledMixedOp\)"):
        loss_b, _ = _step(model, x, y)
    loss_a, _ = _step(reference, x, y)
    assert torch.allclose(loss_a, loss_b, rtol=1e-12)
    assert any("DoubledMixedOp" in p for p in report.problems)


def test_unpatch_restores_original_forwards():
    model = _model()
    patch(model)
    unpatch(model)
    assert not any("forward" in m.__dict__ for m in model.modules())


@pytest.mark.parametrize("memory", ["low", "fast"])
@pytest.mark.parametrize("k", [2, 4])
def test_patch_converts_a_pc_darts_network(memory, k):
    """PC-DARTS mixed ops (partial channels, bypass, shuffle) and their cells (edge weights as
    a fourth argument) run fused after patch, with the same loss and every gradient (weights,
    alphas, betas)."""
    torch.manual_seed(0)
    model = dsm.Network(C=8, num_classes=5, layers=3, steps=2, multiplier=2, prims=dsm.PRIMS,
                        k=k).double()
    before = copy.deepcopy(model)
    for name in ("alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"):
        setattr(before, name, getattr(model, name).detach().clone().requires_grad_())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    y = torch.tensor([1, 4])
    report = patch(model, memory=memory)
    assert len(report.mixed_ops) == 3 * 5 and not report.problems

    def step(m):
        loss = F.cross_entropy(m(x), y)
        arch = [m.alphas_normal, m.alphas_reduce, m.betas_normal, m.betas_reduce]
        return loss, torch.autograd.grad(loss, list(m.parameters()) + arch)

    for _ in range(2):  # first call verifies; the second runs fused only
        loss_a, grads_a = step(before)
        loss_b, grads_b = step(model)
        assert torch.allclose(loss_a, loss_b, rtol=1e-12)
        for a, b in zip(grads_a, grads_b):
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_patch_at_the_mixed_op_level_keeps_a_tenth():
    """Patched mixed ops alone (cells not recomputed, as for a model whose cells `patch`
    does not recognise) keep each edge's input, weights and BN statistics: <= 1/10 of what
    the original keeps (1/23 at the DARTS CIFAR size, C=16 L=8 32x32)."""
    from benchmarks.memory_probe import saved_bytes
    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 16)
    y = torch.tensor([1, 4])
    ref = dsm.Network(C=8, num_classes=5, layers=5, steps=4, multiplier=4)
    edges = copy.deepcopy(ref)
    report = patch(edges, memory="low")
    for cell in edges.cells:
        del cell.forward  # undo the cell recompute: the mixed-op level only
    assert len(report.mixed_ops) == 5 * 14 and not report.problems
    assert saved_bytes(edges, x, y) * 10 <= saved_bytes(ref, x, y)
