import json

import pytest
import torch

from fastdarts.genotypes import (DARTS_V2, PC_DARTS_CIFAR, NB201Genotype, derive_darts_genotype,
                                 derive_nb201_genotype, genotype_from_dict, genotype_to_dict,
                                 load_genotype, nb201_all_arch_strings, nb201_arch_index,
                                 nb201_arch_string, save_genotype)
from fastdarts.ops.darts import PRIMITIVES
from fastdarts.spaces import build_supernet

# The three checkpoints asserted by NAS-Bench-201's generate_meta_info (ALGORITHMS.md §1.2.6).
NB201_CHECKPOINTS = {
    0: "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    9: "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
    123: "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|",
}


@pytest.mark.parametrize("index,arch", NB201_CHECKPOINTS.items())
def test_nb201_index_checkpoints(index, arch):
    assert nb201_arch_string(index) == arch
    assert nb201_arch_index(arch) == index


def test_nb201_enumeration_is_complete_and_unique():
    archs = nb201_all_arch_strings()
    assert len(archs) == 15625 == len(set(archs))


def test_nb201_round_trips():
    for index in (0, 1, 777, 15624):
        s = nb201_arch_string(index)
        g = NB201Genotype.from_string(s)
        assert g.tostr() == s and g.index == index
        assert genotype_from_dict(json.loads(json.dumps(genotype_to_dict(g)))) == g


def test_nb201_all_skip_cell_and_derivation():
    skip = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
    w = torch.zeros(6, 5)
    w[:, 1] = 1.0
    assert derive_nb201_genotype(w).tostr() == skip
    # none is not excluded in NB201
    w = torch.zeros(6, 5)
    w[:, 0] = 1.0
    assert derive_nb201_genotype(w).tostr().count("none") == 6


@pytest.mark.parametrize("text,match", [
    ("|nor_conv_3x3~0|+|bogus~0|none~1|", "unknown op"),
    ("nor_conv_3x3~0", "malformed node"),
    ("|nor_conv_3x3~1|", "inputs 0..0"),
])
def test_nb201_bad_strings(text, match):
    with pytest.raises(ValueError, match=match):
        NB201Genotype.from_string(text)


def test_nb201_index_of_unknown_arch():
    with pytest.raises(ValueError, match="not one of the 15,625"):
        nb201_arch_index("|none~0|")


def _weights_for(genotype, n_ops=8, primitives=PRIMITIVES):
    """Mixing weights whose DARTS derivation is `genotype` (chosen ops get distinct large
    weights; `none` is large everywhere and must be ignored)."""
    weights = []
    for cell in (genotype.normal, genotype.reduce):
        w = torch.full((14, n_ops), 0.01)
        w[:, primitives.index("none")] = 0.9
        start = 0
        for node in range(4):
            for rank, (op, j) in enumerate(cell[2 * node:2 * node + 2]):
                w[start + j, primitives.index(op)] = 0.5 - 0.1 * rank
            start += 2 + node
        weights.append(w)
    return weights


@pytest.mark.parametrize("genotype", [DARTS_V2, PC_DARTS_CIFAR], ids=["darts_v2", "pc_darts"])
def test_darts_derivation_recovers_published_cells(genotype):
    ops = [PRIMITIVES] * 14
    wn, wr = _weights_for(genotype)
    assert derive_darts_genotype(wn, wr, ops, ops) == genotype


def test_darts_derivation_ties_keep_lower_input_first():
    ops = [PRIMITIVES] * 14
    w = torch.full((14, 8), 0.125)
    g = derive_darts_genotype(w, w, ops, ops)
    # all equal: edges 0 and 1 of each node, first non-none op (max_pool_3x3)
    assert g.normal[:4] == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 2


def test_darts_derivation_excludes_none_only_where_present():
    ops = [("skip_connect", "sep_conv_3x3")] * 14
    w = torch.tensor([[0.9, 0.1]] * 14)
    g = derive_darts_genotype(w, w, ops, ops)
    assert all(op == "skip_connect" for op, _ in g.normal)


def test_darts_derivation_rejects_nan():
    ops = [PRIMITIVES] * 14
    w = torch.rand(14, 8)
    w[3, 2] = float("nan")
    with pytest.raises(ValueError, match="weights_normal must be finite.*edge 3"):
        derive_darts_genotype(w, torch.rand(14, 8), ops, ops)


def test_supernet_genotype_and_json_round_trip(tmp_path):
    model = build_supernet("s3", 10, C=4, layers=3)
    g = model.genotype()
    assert len(g.normal) == 8 and g.normal_concat == [2, 3, 4, 5]
    assert all(op != "none" for op, _ in g.normal + g.reduce)
    path = tmp_path / "genotype.json"
    save_genotype(path, g)
    assert load_genotype(path) == g
    nb = build_supernet("nb201", 10, C=4, layers=1)
    save_genotype(path, nb.genotype())
    loaded = load_genotype(path)
    assert loaded == nb.genotype()
    assert json.loads(path.read_text())["index"] == nb.genotype().index


def test_genotype_json_with_unknown_space(tmp_path):
    path = tmp_path / "g.json"
    path.write_text('{"space": "nasnet"}')
    with pytest.raises(ValueError, match="'space' must be"):
        load_genotype(path)
