"""Supernets against exact figures: parameter counts of the original code, shapes, edge
strides, op lists, and the separation of architecture parameters from weights."""
import pytest
import torch
from torch import nn

from fastdarts.ops.darts import FactorizedReduce, NoiseOp
from fastdarts.spaces import DartsSupernet, NB201Supernet, build_supernet
from fastdarts.spaces.darts import space_edge_ops


def n_weights(model):
    return sum(p.numel() for p in model.weight_parameters())


@pytest.mark.parametrize("space,classes,expected", [
    ("darts", 10, 1_930_618),  # ALGORITHMS.md §1.1.9
    ("nb201", 10, 1_686_106),
    ("nb201", 100, 1_691_956),
    ("nb201", 120, 1_693_256),
])
def test_parameter_counts_equal_the_originals(space, classes, expected):
    assert n_weights(build_supernet(space, classes)) == expected


def test_arch_parameters_are_registered_and_apart_from_weights():
    model = build_supernet("darts", 10, C=4, layers=3)
    arch = model.arch_parameters()
    assert [tuple(a.shape) for a in arch] == [(14, 8), (14, 8)]
    assert all(isinstance(a, nn.Parameter) for a in arch)
    arch_ids = {id(a) for a in arch}
    weights = model.weight_parameters()
    assert not arch_ids & {id(p) for p in weights}
    assert len(weights) + 2 == len(list(model.parameters()))
    state = model.state_dict()
    assert torch.equal(state["alphas_normal"], model.alphas_normal.detach())
    assert "alphas_reduce" in state
    nb = build_supernet("nb201", 10, C=4, layers=1)
    assert tuple(nb.alphas.shape) == (6, 5) and "alphas" in nb.state_dict()
    assert all(p is not nb.alphas for p in nb.weight_parameters())


def test_alphas_initialised_small():
    model = build_supernet("darts", 10, C=4, layers=3)
    assert 0 < model.alphas_normal.abs().max() < 1e-2


def test_darts_cells_reduction_positions_strides_and_channels():
    model = build_supernet("darts", 10)
    assert [c.reduction for c in model.cells] == [False, False, True, False, False, True,
                                                 False, False]
    reduce_cell = model.cells[2]
    strides = []
    for op in reduce_cell._ops:
        zero = op._ops[0]
        strides.append(zero.stride)
    # edges whose input is c_{k-2} or c_{k-1} have stride 2: rows 0,1,2,3,5,6,9,10
    assert strides == [2, 2, 2, 2, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1]
    assert isinstance(model.cells[3].preprocess0, FactorizedReduce)  # after a reduction
    assert model.classifier.in_features == 256


def test_darts_mixed_op_keys_match_the_original():
    model = build_supernet("darts", 10, C=4, layers=3)
    keys = set(model.state_dict())
    # pools carry an affine-free BN at index 1 of a Sequential, as in the original
    assert "cells.0._ops.0._ops.1.1.running_mean" in keys
    assert "cells.0._ops.0._ops.4.op.3.running_var" in keys  # sep_conv first BN
    assert not any(k.endswith("_ops.1.1.weight") for k in keys)  # affine=False


def test_forward_shapes_cifar_imagenet_and_digits():
    x = torch.randn(2, 3, 32, 32)
    assert build_supernet("darts", 10, C=4, layers=3)(x).shape == (2, 10)
    assert build_supernet("nb201", 7, C=4, layers=1)(x).shape == (2, 7)
    img = build_supernet("darts", 1000, C=4, layers=3, stem="imagenet")
    assert img(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    gray = build_supernet("darts", 10, in_channels=1, C=4, layers=3)
    assert gray(torch.randn(1, 1, 8, 8)).shape == (1, 10)


def test_forward_accepts_external_mixing_weights():
    model = build_supernet("darts", 10, C=4, layers=3).eval()
    x = torch.randn(2, 3, 16, 16)
    default = model(x)
    same = model(x, model.mixing_weights())
    torch.testing.assert_close(default, same)
    onehot = torch.zeros(14, 8)
    onehot[:, 3] = 1.0  # skip_connect everywhere
    assert not torch.allclose(model(x, (onehot, onehot)), default)


def test_mixed_op_is_the_weighted_sum_of_its_ops():
    model = build_supernet("darts", 10, C=4, layers=3).eval()
    edge = model.cells[0]._ops[4]
    x = torch.randn(2, 4, 8, 8)
    w = torch.softmax(torch.randn(8), 0)
    expected = sum(w[k] * op(x) for k, op in enumerate(edge._ops))
    torch.testing.assert_close(edge(x, w), expected)


@pytest.mark.parametrize("space,n_ops", [("s1", 2), ("s2", 2), ("s3", 3), ("s4", 2)])
def test_robust_darts_spaces(space, n_ops):
    model = build_supernet(space, 10, C=4, layers=3)
    assert tuple(model.alphas_normal.shape) == (14, n_ops)
    normal, reduce = space_edge_ops(space)
    for cell in model.cells:
        lists = reduce if cell.reduction else normal
        assert [op.primitives for op in cell._ops] == lists
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_s1_lists_differ_per_edge_and_cell_type():
    normal, reduce = space_edge_ops("s1")
    assert normal[0] == ("skip_connect", "dil_conv_3x3")
    assert normal[12] == ("dil_conv_3x3", "dil_conv_5x5")
    assert reduce[1] == ("max_pool_3x3", "dil_conv_3x3")
    assert reduce[4] == ("skip_connect", "dil_conv_5x5")


def test_noise_op_ignores_its_input():
    op = NoiseOp(stride=2)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    y = op(x)
    assert y.shape == (2, 3, 4, 4)
    assert not y.requires_grad
    assert abs(y.mean().item()) < 0.5


def test_factorized_reduce_rejects_odd_sizes():
    with pytest.raises(ValueError, match="even spatial size"):
        FactorizedReduce(4, 4)(torch.randn(1, 4, 7, 7))
    with pytest.raises(ValueError, match="C_out must be even"):
        FactorizedReduce(4, 5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(space="s9"), "space must be one of"),
    (dict(space="darts", stem="tiny"), "stem must be"),
    (dict(space="nb201", stem="imagenet"), "only the CIFAR stem"),
])
def test_bad_space_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_supernet(num_classes=10, **kwargs)


def test_nb201_cell_structure():
    model = NB201Supernet(C=4, N=1)
    cell = model.cells[0]
    assert list(cell.edges) == ["1<-0", "2<-0", "2<-1", "3<-0", "3<-1", "3<-2"]
    assert [type(c).__name__ for c in model.cells] == [
        "NB201SearchCell", "ResNetBasicblock", "NB201SearchCell", "ResNetBasicblock",
        "NB201SearchCell"]
    # no BN after the NB201 pool
    pool = cell.edges["1<-0"]._ops[4]
    assert pool.preprocess is None and not any(isinstance(m, nn.BatchNorm2d) for m in pool.modules())


def test_nb201_cell_output_is_last_node():
    model = NB201Supernet(C=4, N=1).eval()
    cell = model.cells[0]
    x = torch.randn(1, 4, 6, 6)
    w = torch.zeros(6, 5)
    w[:, 1] = 1.0  # all skip: n1 = x, n2 = 2x, n3 = x + x + 2x = 4x
    torch.testing.assert_close(cell(x, w), 4 * x)
