"""The PC-DARTS supernet (partial channels + edge normalisation) against an independent
PC-DARTS network written in `tests/darts_style_model.py` after the original code: loss,
every weight gradient and the alpha and beta gradients, in every memory mode; the parameter
counts of the original's CIFAR and ImageNet supernets; edge normalisation and the alpha x
beta derivation."""
import pytest
import torch
import torch.nn.functional as F

from fastdarts.genotypes import derive_darts_genotype
from fastdarts.ops.darts import PRIMITIVES
from fastdarts.spaces import build_supernet
from fastdarts.spaces.darts import NODE_EDGES, edge_normalised
from tests import darts_style_model as orig


def test_parameter_counts_equal_the_originals():
    """ALGORITHMS.md §1.1.9 (the ImageNet count is the one printed in the original's log)."""
    cifar = build_supernet("darts", 10, C=16, layers=8, partial_k=4)
    imagenet = build_supernet("darts", 1000, C=16, layers=8, stem="imagenet", partial_k=2)
    assert sum(p.numel() for p in cifar.weight_parameters()) == 299_578
    assert sum(p.numel() for p in imagenet.weight_parameters()) == 956_512
    assert len(cifar.arch_parameters()) == 4  # alphas and betas, kept apart from the weights


def test_edge_normalisation_is_a_softmax_per_node():
    betas = torch.randn(14, dtype=torch.float64)
    e = edge_normalised(betas)
    assert NODE_EDGES == [(0, 2), (2, 5), (5, 9), (9, 14)]
    for a, b in NODE_EDGES:
        want = torch.exp(betas[a:b]) / torch.exp(betas[a:b]).sum()
        assert torch.allclose(e[a:b], want, rtol=1e-14)
    with pytest.raises(ValueError, match="betas must have 14 entries"):
        edge_normalised(torch.zeros(13))


def _pair(k, mode, C=8, layers=3, dtype=torch.float64):
    torch.manual_seed(0)
    ours = build_supernet("darts", 5, C=C, layers=layers, partial_k=k, memory=mode).to(dtype)
    theirs = orig.Network(C=C, num_classes=5, layers=layers, steps=4, multiplier=4,
                          prims=PRIMITIVES, k=k).to(dtype)
    arch = {"alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"}
    state = {n: t for n, t in ours.state_dict().items() if n not in arch}
    theirs.load_state_dict(state, strict=True)  # same keys as the original's
    with torch.no_grad():
        for name in arch:
            setattr(theirs, name, getattr(ours, name).detach().clone().normal_()
                    .requires_grad_())
            getattr(ours, name).copy_(getattr(theirs, name))
    return ours, theirs


@pytest.mark.parametrize("mode", ["reference", "fast", "low"])
@pytest.mark.parametrize("k", [2, 4])
def test_step_equals_the_original_pc_darts(k, mode):
    ours, theirs = _pair(k, mode)
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([1, 3])
    arch_names = ["alphas_normal", "alphas_reduce", "betas_normal", "betas_reduce"]

    def grads(model, params):
        loss = F.cross_entropy(model(x), y)
        return loss, torch.autograd.grad(loss, params)

    theirs_params = list(theirs.parameters()) + [getattr(theirs, n) for n in arch_names]
    ours_params = ([p for n, p in ours.named_parameters() if n not in arch_names]
                   + [getattr(ours, n) for n in arch_names])
    want_loss, want = grads(theirs, theirs_params)
    loss, got = grads(ours, ours_params)
    names = [n for n, _ in theirs.named_parameters()] + arch_names
    assert abs(loss.item() - want_loss.item()) <= 1e-12 * abs(want_loss.item())
    for name, a, b in zip(names, got, want):
        err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()
        assert err <= 1e-9, f"{name}: {err:.2e}"
    for (name, a), b in zip(ours.named_buffers(), theirs.buffers()):
        assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-12), name


def test_genotype_uses_alpha_times_beta():
    torch.manual_seed(0)
    model = build_supernet("darts", 10, C=8, layers=3, partial_k=4)
    with torch.no_grad():
        for p in model.arch_parameters():
            p.normal_()
    w_n, w_r, e_n, e_r = model.mixing_weights()
    want = derive_darts_genotype(w_n * e_n[:, None], w_r * e_r[:, None], model.normal_ops,
                                 model.reduce_ops, steps=4, multiplier=4)
    assert model.genotype() == want
    # With equal alphas the betas alone choose node 1's two inputs (edges 2, 3, 4 <- 0, 1, 2).
    with torch.no_grad():
        model.alphas_normal.zero_()
        model.betas_normal.zero_()
        model.betas_normal[2:5] = torch.tensor([5.0, -5.0, 4.0])
    assert sorted(j for _, j in model.genotype().normal[2:4]) == [0, 2]
    with torch.no_grad():
        model.betas_normal[2:5] = torch.tensor([-5.0, 5.0, 4.0])
    assert sorted(j for _, j in model.genotype().normal[2:4]) == [1, 2]


def test_named_errors_for_edge_weights():
    plain = build_supernet("darts", 10, C=8, layers=3)
    x = torch.randn(1, 3, 8, 8)
    w = plain.mixing_weights()
    with pytest.raises(ValueError, match="no edge normalisation"):
        plain(x, (*w, torch.ones(14), torch.ones(14)))
    no_betas = build_supernet("darts", 10, C=8, layers=3, partial_k=2, edge_normalisation=False)
    assert len(no_betas.mixing_weights()) == 2 and not hasattr(no_betas, "betas_normal")
    no_betas(x).sum().backward()  # partial-channel cells without edge weights
    with pytest.raises(ValueError, match="k: the channels"):
        build_supernet("darts", 10, C=6, layers=3, partial_k=4)
