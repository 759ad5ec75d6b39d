"""The search loop: outputs, exact resume, named errors, and a real DARTS search on the
embedded digits reaching well above chance."""
import json

import pytest
import torch

from fastdarts.cli import main as cli_main
from fastdarts.data import synthetic_data
from fastdarts.search import RunExistsError, SearchConfig, run_search


def tiny_config(run_dir, **kw):
    base = dict(space="darts", dataset="synthetic", run_dir=str(run_dir), epochs=3,
                batch_size=16, init_channels=4, layers=3, arch_lr=3e-3, progress=False,
                seed=5, deterministic=True)
    base.update(kw)
    return SearchConfig(**base)


def tiny_data():
    return synthetic_data(image_size=8, num_train=48, num_val=32, num_test=32, seed=1)


def quiet(*_):
    pass


def test_search_writes_readable_results(tmp_path):
    result = run_search(tiny_config(tmp_path / "run"), data=tiny_data(), log=quiet)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert all(r["images_per_s"] > 0 and 0 <= r["val_acc"] <= 100 for r in records)
    assert json.loads((run / "genotype.json").read_text())["space"] == "darts"
    out = json.loads((run / "result.json").read_text())
    assert out["test_accuracy"] == result.test_accuracy
    assert (run / "alphas.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    # weights in the log are softmax rows of the alphas at that epoch
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False, map_location="cpu")
    last = torch.tensor(records[-1]["weights"]["normal"]["values"])
    torch.testing.assert_close(last, torch.softmax(ckpt["model"]["alphas_normal"], -1),
                               atol=1e-6, rtol=0)


def test_arch_step_moves_alphas_and_weight_step_does_not():
    from fastdarts.algorithms import get_algorithm
    from fastdarts.spaces import build_supernet
    cfg = tiny_config("unused").resolved()
    model = build_supernet("darts", 10, C=4, layers=3)
    algo = get_algorithm("darts", cfg)
    algo.setup(model)
    weights_before = [p.detach().clone() for p in model.weight_parameters()]
    alphas_before = [a.detach().clone() for a in model.arch_parameters()]
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,)))
    algo.arch_step(model, batch, batch, lr=0.025)
    assert all(not torch.equal(a, b) for a, b in zip(model.arch_parameters(), alphas_before))
    # BN running statistics move in a train-mode forward; the weights themselves must not
    assert all(torch.equal(p, b) for p, b in zip(model.weight_parameters(), weights_before))


@pytest.mark.parametrize("space,order", [("darts", 1), ("nb201", 1), ("nb201", 2)])
def test_resume_equals_uninterrupted(tmp_path, space, order):
    """Second order too: the resumed SGD state holds new momentum tensors, which the virtual
    step must adopt with the same values."""
    layers = 3 if space == "darts" else 1
    full = run_search(tiny_config(tmp_path / "full", space=space, layers=layers, order=order),
                      data=tiny_data(), log=quiet)
    part_cfg = tiny_config(tmp_path / "part", space=space, layers=layers, order=order)
    run_search(part_cfg, data=tiny_data(), stop_after_epochs=1, log=quiet)
    assert not (tmp_path / "part" / "genotype.json").exists()
    resumed = run_search(part_cfg, resume=True, data=tiny_data(), log=quiet)
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False, map_location="cpu")["model"]
    b = torch.load(tmp_path / "part" / "checkpoint.pt", weights_only=False, map_location="cpu")["model"]
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.test_accuracy == full.test_accuracy
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in full.history]
    lines = (tmp_path / "part" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1, 2]


def test_resume_rejects_a_changed_configuration(tmp_path):
    cfg = tiny_config(tmp_path / "run")
    run_search(cfg, data=tiny_data(), stop_after_epochs=1, log=quiet)
    changed = tiny_config(tmp_path / "run", lr=0.5)
    with pytest.raises(ValueError, match="lr: checkpoint 0.025 vs now 0.5"):
        run_search(changed, resume=True, data=tiny_data(), log=quiet)
    with pytest.raises(RunExistsError, match="resume=True") as raised:
        run_search(cfg, data=tiny_data(), log=quiet)
    assert raised.value.run_dir == tmp_path / "run"


def test_resume_without_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_search(tiny_config(tmp_path / "none"), resume=True, data=tiny_data(), log=quiet)


@pytest.mark.parametrize("kw,match", [
    (dict(epochs=0), "epochs must be >= 1"),
    (dict(lr=float("nan")), "lr must be a positive finite number"),
    (dict(arch_warmup_epochs=-1), "arch_warmup_epochs must be >= 0"),
    (dict(space="s7"), "space must be one of"),
    (dict(algo="enas"), "algo must be one of"),
])
def test_bad_configuration_raises_named_errors(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        run_search(tiny_config(tmp_path / "bad", **kw), data=tiny_data(), log=quiet)


def test_arch_warmup_keeps_alphas_fixed(tmp_path):
    run_search(tiny_config(tmp_path / "w", epochs=1, arch_warmup_epochs=1), data=tiny_data(),
               log=quiet)
    ckpt = torch.load(tmp_path / "w" / "checkpoint.pt", weights_only=False, map_location="cpu")
    torch.manual_seed(5)
    from fastdarts.spaces import build_supernet
    fresh = build_supernet("darts", 10, 3, C=4, layers=3)
    assert torch.equal(ckpt["model"]["alphas_normal"], fresh.alphas_normal.detach())


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit):
        cli_main(["search", "--space", "nasnet"])
    assert "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["search", "--epochs", "0"])
    with pytest.raises(SystemExit, match="--resume needs --run-dir"):
        cli_main(["search", "--resume"])


def test_cli_missing_data_file_is_a_clear_error(tmp_path, capsys):
    code = cli_main(["search", "--dataset", "cifar10", "--data-dir", str(tmp_path),
                     "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "missing data file" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_darts_search_on_digits_beats_chance(tmp_path, capsys):
    """A real (shortened) DARTS search on the embedded digits, through the CLI."""
    run = tmp_path / "digits"
    args = ["search", "--run-dir", str(run), "--epochs", "4", "--init-channels", "4",
            "--layers", "3", "--no-progress"]
    assert cli_main(args) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["test_accuracy"] > 50.0  # chance is 10%
    out = capsys.readouterr().out
    assert "genotype: Genotype(normal=" in out
    # the digits preset's architecture lr decides edges within the search (at 3e-3 every
    # margin stayed under 0.02): the best-decided edge leads its runner-up clearly
    assert result["final_margins"]["max"] > 0.05
    assert "margin min" in out and (run / "cell_normal.png").is_file()


def test_pcdarts_defaults_resolve_from_the_method():
    cfg = SearchConfig(algo="pcdarts", dataset="cifar10").resolved()
    assert (cfg.partial_k, cfg.lr, cfg.lr_min, cfg.arch_lr, cfg.batch_size,
            cfg.arch_warmup_epochs) == (4, 0.1, 0.0, 6e-4, 256, 15)
    short = SearchConfig(algo="pcdarts", dataset="cifar10", epochs=10).resolved()
    assert short.arch_warmup_epochs == 3  # 15 of 50 epochs, kept as a ratio
    mine = SearchConfig(algo="pcdarts", dataset="cifar10", partial_k=2, lr=0.05,
                        arch_warmup_epochs=0).resolved()
    assert (mine.partial_k, mine.lr, mine.arch_warmup_epochs) == (2, 0.05, 0)
    darts = SearchConfig(algo="darts", dataset="cifar10").resolved()
    assert (darts.partial_k, darts.lr, darts.arch_warmup_epochs) == (None, 0.025, 0)


def test_pcdarts_warmup_keeps_alphas_and_betas_fixed_then_moves_them(tmp_path):
    from fastdarts.spaces import build_supernet
    cfg = tiny_config(tmp_path / "pc", algo="pcdarts", init_channels=8, epochs=2,
                      arch_warmup_epochs=1)
    run_search(cfg, data=tiny_data(), log=quiet, stop_after_epochs=1)
    torch.manual_seed(5)
    fresh = build_supernet("darts", 10, 3, C=8, layers=3, partial_k=4)
    ckpt = torch.load(tmp_path / "pc" / "checkpoint.pt", weights_only=False, map_location="cpu")
    for name in ("alphas_normal", "betas_normal", "betas_reduce"):
        assert torch.equal(ckpt["model"][name], getattr(fresh, name).detach()), name
    run_search(cfg, data=tiny_data(), log=quiet, resume=True)
    ckpt = torch.load(tmp_path / "pc" / "checkpoint.pt", weights_only=False, map_location="cpu")
    for name in ("alphas_normal", "betas_normal", "betas_reduce"):
        assert not torch.equal(ckpt["model"][name], getattr(fresh, name).detach()), name
    record = json.loads((tmp_path / "pc" / "log.jsonl").read_text().splitlines()[-1])
    e = torch.tensor(record["edge_weights"]["normal"])
    assert torch.allclose(e[0:2].sum(), torch.tensor(1.0), atol=1e-5)
    assert torch.allclose(e[9:14].sum(), torch.tensor(1.0), atol=1e-5)


@pytest.mark.slow
def test_cli_pcdarts_search_on_digits_beats_chance(tmp_path, capsys):
    """A short PC-DARTS search (K=4, edge normalisation, warm-up) through the CLI."""
    run = tmp_path / "pc"
    args = ["search", "--algo", "pcdarts", "--run-dir", str(run), "--epochs", "4",
            "--layers", "3", "--no-progress"]
    assert cli_main(args) == 0
    result = json.loads((run / "result.json").read_text())
    assert result["config"]["partial_k"] == 4 and result["config"]["arch_warmup_epochs"] == 1
    assert result["test_accuracy"] > 40.0  # chance is 10%
    assert "genotype: Genotype(normal=" in capsys.readouterr().out


def test_diverging_search_stops_with_a_clear_error(tmp_path):
    """A loss that turns NaN stops the search, naming the step, the epoch and whether the
    architecture parameters diverged; completed epochs keep their checkpoint."""
    cfg = tiny_config(tmp_path / "nan", epochs=2, lr=1e38, arch_warmup_epochs=1)
    with pytest.raises(FloatingPointError, match=r"the weight step's loss is nan in epoch 1; "
                                                 r"the architecture parameters are finite"):
        run_search(cfg, data=tiny_data(), log=quiet)
    cfg = tiny_config(tmp_path / "arch", epochs=2, arch_lr=1e38)
    with pytest.raises(FloatingPointError, match=r"architecture parameters alphas_\w+"):
        run_search(cfg, data=tiny_data(), log=quiet)


def test_cli_help_states_every_default(capsys):
    """Every option of `fastdarts search -h` says its default; none reads `None`, which would
    hide that the value comes from the dataset or method preset."""
    with pytest.raises(SystemExit):
        cli_main(["search", "-h"])
    out = capsys.readouterr().out
    options = [line for line in out.splitlines() if line.strip().startswith("--")]
    assert len(options) > 20
    text = " ".join(out.split())
    assert "default: None" not in text
    from fastdarts.cli import build_parser
    search = build_parser()._subparsers._group_actions[0].choices["search"]
    takes_value = [a for a in search._actions if a.option_strings and a.nargs != 0]
    assert len(takes_value) > 15
    for action in takes_value:
        if action.dest != "data_dir":  # needed by some data sets only; its help says which
            assert action.help and "default" in action.help, action.option_strings


def test_cli_print_config_is_the_resolved_config(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["search", "--algo", "pcdarts", "--epochs", "7", "--run-dir", str(run),
            "--print-config"]
    assert cli_main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    expected = SearchConfig(algo="pcdarts", epochs=7, run_dir=str(run)).resolved().to_dict()
    assert printed == expected
    assert printed["partial_k"] == 4  # the PC-DARTS preset, not the bare default
    assert not run.exists()  # printing the config starts nothing


def test_cli_errors_name_the_flags(tmp_path, capsys):
    code = cli_main(["search", "--algo", "pcdarts", "--partial-k", "3", "--init-channels",
                     "8", "--run-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--partial-k" in err and "--init-channels" in err and "partial_k" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, expected", [
    (["--device", "bogus"], "--device: expected auto, cpu, cuda or cuda:N; got 'bogus'"),
    (["--device", "meta"], "--device: a search runs on cpu or cuda; got 'meta'"),
    (["--data-dir", "somewhere"], "--data-dir: the digits data set is built in and reads no "
                                  "files, so 'somewhere' would be ignored"),
])
def test_cli_bad_device_and_an_ignored_data_dir_are_one_line_errors(argv, expected, tmp_path,
                                                                     capsys):
    code = cli_main(["search", *argv, "--run-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("fastdarts search: error: ") and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


def test_cli_refuses_a_second_process_started_by_torchrun(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun --nproc_per_node 2 sets
    code = cli_main(["search", "--run-dir", str(tmp_path / "r"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "started 2 (WORLD_SIZE=2)" in err and not (tmp_path / "r").exists()


def test_cli_existing_run_dir_suggests_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint.pt").write_bytes(b"")
    code = cli_main(["search", "--run-dir", str(run), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and str(run) in err
