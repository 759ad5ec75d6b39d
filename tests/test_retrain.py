"""`fastdarts train`: a genotype retrained from scratch learns, resumes exactly after an
interruption, reads a search's run directory, and its command line errors name the flags."""
import json

import pytest
import torch

from fastdarts.cli import main as cli_main
from fastdarts.data import synthetic_data
from fastdarts.genotypes import DARTS_V2, save_genotype
from fastdarts.retrain import TrainConfig, cutout, run_training


def _config(run_dir, **kw):
    base = dict(genotype="DARTS_V2", dataset="synthetic", run_dir=str(run_dir), epochs=3,
                batch_size=16, init_channels=4, layers=3, drop_path_prob=0.3, cutout=3,
                lr=0.05, progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _data():
    return synthetic_data(image_size=8, num_train=64, num_val=32, num_test=64, seed=1)


def quiet(*_):
    pass


def test_training_learns_and_writes_readable_results(tmp_path):
    data = synthetic_data(image_size=8, num_train=256, num_val=128, num_test=64, seed=1)
    result = run_training(_config(tmp_path / "run", epochs=4, init_channels=8, cutout=0,
                                  drop_path_prob=0.1), data=data, log=quiet)
    run = tmp_path / "run"
    assert result["test_top1"] > 40  # chance is 10%: the class patterns are learnable
    written = json.loads((run / "result.json").read_text())
    assert written["parameters"] == result["parameters"] > 0
    assert written["provenance"]["commit"]
    assert written["macs_per_image"] > 0 and set(written["latency_ms"]) == {"batch_1", "batch_64"}
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[0]["drop_path_prob"] == 0 and records[-1]["drop_path_prob"] == 0.1 * 3 / 4
    assert (run / "accuracy.png").stat().st_size > 0


def test_an_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path):
    full = run_training(_config(tmp_path / "full"), data=_data(), log=quiet)
    run_training(_config(tmp_path / "cut"), data=_data(), log=quiet, stop_after_epochs=1)
    resumed = run_training(_config(tmp_path / "cut"), resume=True, data=_data(), log=quiet)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert a["history"][-1]["train_loss"] == b["history"][-1]["train_loss"]
    assert resumed["test_top1"] == full["test_top1"]
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    lines = (tmp_path / "cut" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_resume_refuses_a_changed_configuration(tmp_path):
    run_training(_config(tmp_path / "run"), data=_data(), log=quiet, stop_after_epochs=1)
    with pytest.raises(ValueError, match="lr: 0.05 vs 0.1"):
        run_training(_config(tmp_path / "run", lr=0.1), resume=True, data=_data(), log=quiet)


def test_cost_counts_the_multiply_adds_of_a_known_network():
    from torch import nn

    from fastdarts.data.core import DataSpec
    from fastdarts.retrain import cost

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, bias=False)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.conv(x).mean((2, 3))), None

    spec = DataSpec("t", 2, 3, 8, (0.5,) * 3, (0.25,) * 3)
    got = cost(Net(), spec, torch.device("cpu"), batches=(1,), repeats=1)
    assert got["macs_per_image"] == 8 * 8 * 4 * 3 * 9 + 4 * 2  # the conv and the linear


def test_cutout_zeroes_one_square_per_image():
    x = torch.ones(64, 3, 16, 16)
    y = cutout(x, 4, torch.Generator().manual_seed(0))
    zeros = (y[:, 0] == 0).flatten(1).sum(1)
    assert zeros.max() == 16 and zeros.min() >= 4  # clipped at the border at worst
    assert torch.equal(y[:, 0] == 0, y[:, 2] == 0)  # the same square in every channel
    assert torch.equal(cutout(x, 0, torch.Generator()), x)


def test_cli_trains_from_a_search_run_directory(tmp_path, capsys):
    search_run = tmp_path / "search"
    search_run.mkdir()
    save_genotype(search_run / "genotype.json", DARTS_V2)
    (search_run / "config.json").write_text(json.dumps({"dataset": "synthetic"}))
    code = cli_main(["train", "--from", str(search_run), "--print-config"])
    assert code == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["genotype"] == str(search_run / "genotype.json")
    assert cfg["dataset"] == "synthetic" and cfg["epochs"] == 15  # the digits preset
    assert cfg["run_dir"] == "runs/train-search-synthetic-seed0"


@pytest.mark.parametrize("argv, expected", [
    ([], "--genotype: give a genotype"),
    (["--genotype", "NOPE"], "--genotype: 'NOPE' is neither a genotype.json file"),
    (["--genotype", "DARTS_V2", "--drop-path-prob", "1.5"], "--drop-path-prob must lie in"),
    (["--from", "/no/such/run"], "--from: /no/such/run holds no genotype.json"),
])
def test_cli_errors_name_the_flags(argv, expected, tmp_path, capsys):
    code = cli_main(["train", *argv, "--run-dir", str(tmp_path / "r"), "--no-progress",
                     "--epochs", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("fastdarts train: error: ") and expected in err, err
    assert not (tmp_path / "r").exists()


def test_cell_diagrams_draw_every_op_of_both_cells(tmp_path):
    from fastdarts.cell_diagram import cell_dot, draw_genotype

    written = draw_genotype(DARTS_V2, tmp_path / "cell")
    assert {p.name for p in written} == {f"cell_{k}.{x}" for k in ("normal", "reduction")
                                         for x in ("dot", "png", "svg")}
    assert all(p.stat().st_size > 0 for p in written)
    dot = cell_dot(DARTS_V2.normal, DARTS_V2.normal_concat, "normal cell")
    for name, index in DARTS_V2.normal:  # one labelled arrow per op
        assert f'label="{name}"' in dot
    assert dot.count("->") == len(DARTS_V2.normal) + len(DARTS_V2.normal_concat)
    assert '"c_{k-2}" -> "0" [label="sep_conv_3x3"' in dot


def test_cli_plot_redraws_a_search_run(tmp_path, capsys):
    from fastdarts.search import run_search
    from tests.test_search import quiet as search_quiet
    from tests.test_search import tiny_config, tiny_data

    run_search(tiny_config(tmp_path / "run", epochs=1), data=tiny_data(), log=search_quiet)
    assert (tmp_path / "run" / "cell_normal.png").is_file()  # the search drew them
    assert (tmp_path / "run" / "alphas_final.png").is_file()
    for picture in ("alphas.png", "alphas_final.png"):
        (tmp_path / "run" / picture).unlink()
    assert cli_main(["plot", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "alphas.png").is_file()
    assert (tmp_path / "run" / "alphas_final.png").is_file()
    assert "cell_reduction.svg" in capsys.readouterr().out
    assert cli_main(["plot", str(tmp_path / "nothing")]) == 2
