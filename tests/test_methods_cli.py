"""Every method runs from the CLI on the three families of spaces (the DARTS space, one of
RobustDARTS S1-S4 each, NAS-Bench-201), on the embedded digits data, for two short epochs,
and writes a genotype of that space; each method's own record lands in the run files."""
import json

import pytest

from fastdarts.algorithms import ALGORITHMS
from fastdarts.cli import main as cli_main
from fastdarts.genotypes import NB201Genotype, load_genotype
from fastdarts.ops.nb201 import PRIMITIVES as NB201_OPS
from fastdarts.spaces.darts import space_edge_ops

#: each method's RobustDARTS space, so that S1-S4 are all covered
S_SPACE = {"rf-darts": "s1", "rf-pcdarts": "s2", "sdarts-rs": "s3", "sdarts-adv": "s4",
           "drnas": "s3", "darts-minus": "s1"}
METHODS = sorted(S_SPACE)


def test_every_method_is_offered():
    assert set(METHODS) | {"darts", "pcdarts"} == set(ALGORITHMS)


@pytest.mark.slow
@pytest.mark.parametrize("space_kind", ["darts", "s", "nb201"])
@pytest.mark.parametrize("algo", METHODS)
def test_cli_short_search_writes_a_genotype_of_the_space(algo, space_kind, tmp_path, capsys):
    space = S_SPACE[algo] if space_kind == "s" else space_kind
    run = tmp_path / "run"
    args = ["search", "--algo", algo, "--space", space, "--epochs", "2",
            "--steps-per-epoch", "2", "--layers", "1" if space == "nb201" else "3",
            "--run-dir", str(run), "--no-progress"]
    assert cli_main(args) == 0, capsys.readouterr().err
    genotype = load_genotype(run / "genotype.json")
    result = json.loads((run / "result.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert config["algo"] == algo and result["test_accuracy"] is not None
    if space == "nb201":
        assert isinstance(genotype, NB201Genotype)
        assert all(op in NB201_OPS for node in genotype.nodes for op, _ in node)
    else:
        normal_ops, reduce_ops = space_edge_ops(space)
        allowed = {op for ops in normal_ops + reduce_ops for op in ops}
        ops = [op for op, _ in genotype.normal + genotype.reduce]
        assert len(ops) == 16 and set(ops) <= allowed
        if algo == "drnas" and space == "darts":
            assert "none" not in ops
    out = capsys.readouterr().out
    history = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(history) == 2
    if algo.startswith("rf-"):
        assert "random features seed 2" in out and "random features seed 2" in result["method"]["settings"]
    if algo == "darts-minus":
        assert "auxiliary skip beta 1.0 -> 0.5" in out
    if algo.startswith("sdarts"):
        assert "perturbation radius 0.03 -> 0.3" in out
    if algo == "drnas":
        k = "4, 2" if space == "nb201" else "6, 4"
        assert "stages [epochs 1-: K=" + k.split(",")[0] in out
