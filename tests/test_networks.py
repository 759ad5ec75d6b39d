"""The evaluation networks (fastdarts.networks): the originals' parameter counts for the
published genotypes, the auxiliary head's place and shape, drop-path, and named errors."""
import pytest
import torch

from fastdarts import build_network
from fastdarts.genotypes import DARTS_V2, DartsGenotype, save_genotype
from fastdarts.networks import drop_path, parameter_count


@pytest.mark.parametrize("genotype, dataset, expected, rounded", [
    ("DARTS_V2", "cifar10", 3_349_342, None),  # the original code's count, exactly
    ("PC_DARTS_CIFAR", "cifar10", None, 3.6),    # papers' tables, in millions
    ("DARTS_V2", "imagenet", None, 4.7),
    ("PC_DARTS_IMAGE", "imagenet", None, 5.3),
])
def test_parameter_counts_of_the_published_networks(genotype, dataset, expected, rounded):
    n = parameter_count(build_network(genotype, dataset))
    if expected is not None:
        assert n == expected
    else:
        assert round(n / 1e6, 1) == rounded


def test_forward_shapes_and_the_auxiliary_head_in_training_only():
    net = build_network(DARTS_V2, "cifar10", C=8, layers=5)
    net.drop_path_prob = 0.2
    x = torch.randn(2, 3, 32, 32)
    logits, aux = net(x)
    assert logits.shape == (2, 10) and aux.shape == (2, 10)
    net.eval()
    logits, aux = net(x)
    assert aux is None
    imagenet = build_network(DARTS_V2, "imagenet", C=8, layers=5, num_classes=7)
    imagenet.train()
    logits, aux = imagenet(torch.randn(2, 3, 224, 224))
    assert logits.shape == (2, 7) and aux.shape == (2, 7)


def test_drop_path_keeps_the_expectation_and_drops_whole_samples():
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    y = drop_path(x, 0.25)
    per_sample = y.flatten(1)
    assert (per_sample == per_sample[:, :1]).all(), "a sample is kept or dropped whole"
    kept = per_sample[:, 0]
    assert torch.all((kept == 0) | torch.isclose(kept, torch.tensor(1 / 0.75)))
    assert abs((kept == 0).float().mean().item() - 0.25) < 0.03
    assert abs(y.mean().item() - 1.0) < 0.05
    assert torch.equal(drop_path(x, 0.0), x)


def test_a_genotype_file_or_run_directory_is_read(tmp_path):
    save_genotype(tmp_path / "genotype.json", DARTS_V2)
    a = parameter_count(build_network(tmp_path, "cifar10"))
    b = parameter_count(build_network(tmp_path / "genotype.json", "cifar10"))
    assert a == b == 3_349_342


def test_bad_genotypes_are_named_errors():
    with pytest.raises(ValueError, match="neither a genotype.json file nor a published"):
        build_network("NOT_A_GENOTYPE")
    bad = DartsGenotype(normal=[("sep_conv_3x3", 5)] * 8, normal_concat=[2, 3, 4, 5],
                        reduce=DARTS_V2.reduce, reduce_concat=[2, 3, 4, 5])
    with pytest.raises(ValueError, match="reads state 5"):
        build_network(bad)
    with pytest.raises(ValueError, match="dataset must be one of"):
        build_network(DARTS_V2, "mnist")
