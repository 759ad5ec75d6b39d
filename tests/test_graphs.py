"""`fastdarts.graphs` and the search's `cuda_graph` option, the parts a CPU can check: named
errors for what a graph cannot take, the search's refusals, the optimiser flags. The
captured steps themselves are compared with eager ones in tests/test_gpu.py."""
import pytest
import torch

from fastdarts.cli import main as cli_main
from fastdarts.graphs import CapturedStep, make_capturable
from fastdarts.recompute import RngState
from fastdarts.search import SearchConfig, _captured_search_step, build_search


@pytest.mark.parametrize("warmup", [0, -1, True, 1.5])
def test_captured_step_needs_a_positive_int_warmup(warmup):
    with pytest.raises(ValueError, match="warmup must be an int >= 1"):
        CapturedStep(lambda x: x, warmup=warmup)


def test_captured_step_names_the_input_that_is_not_a_cuda_tensor():
    captured = CapturedStep(lambda *t: t)
    if torch.cuda.is_available():
        x = torch.zeros(2, device="cuda")
        with pytest.raises(ValueError, match=r"input 1 must be a CUDA tensor .* on cpu"):
            captured(None, x, torch.zeros(2))
    with pytest.raises(ValueError, match=r"input 0 must be a CUDA tensor .* on cpu"):
        captured(None, torch.zeros(2))
    with pytest.raises(TypeError, match="input 0 must be a tensor; got list"):
        captured(None, [1.0])
    with pytest.raises(ValueError, match="at least one tensor input"):
        captured(None)
    assert captured.captures == 0 and not captured.captured


def test_make_capturable_sets_adams_flag_and_leaves_sgd_alone():
    w = torch.nn.Parameter(torch.randn(3))
    adam = torch.optim.Adam([w], lr=0.1)
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    sgd_groups = [dict(g) for g in sgd.param_groups]
    assert make_capturable(adam) is adam and make_capturable(sgd) is sgd
    assert all(g["capturable"] for g in adam.param_groups)
    assert [dict(g) for g in sgd.param_groups] == sgd_groups  # SGD has no host state


def _search_parts(**kw):
    cfg = SearchConfig(dataset="synthetic", init_channels=12, layers=3, device="cpu",
                       cuda_graph=True, **kw).resolved()
    return cfg, *build_search(cfg, 10, 3, torch.device("cpu"))


@pytest.mark.parametrize("kw,match", [
    (dict(algo="pcdarts", partial_selection="sampled"), "partial_selection='sampled'"),
    (dict(space="s4", memory="low"), "cuda_graph with memory='low'"),
])
def test_captured_search_refuses_what_a_graph_would_replay_wrong(kw, match):
    cfg, algo, model, training = _search_parts(**kw)
    with pytest.raises(ValueError, match=match):
        _captured_search_step(cfg, algo, model, training, lambda: 0.1)


@pytest.mark.parametrize("kw", [dict(space="s4", memory="fast"), dict(algo="pcdarts"),
                                dict(algo="drnas")])
def test_captured_search_takes_graph_safe_supernets_and_makes_adam_capturable(kw):
    cfg, algo, model, training = _search_parts(**kw)
    captured = _captured_search_step(cfg, algo, model, training, lambda: 0.1)
    assert isinstance(captured, CapturedStep) and not captured.captured
    assert all(g["capturable"] for g in algo.arch_optimizer.param_groups)


def test_cuda_graph_on_the_cpu_is_a_named_error(tmp_path, capsys):
    code = cli_main(["search", "--dataset", "synthetic", "--cuda-graph", "--device", "cpu",
                     "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "cuda_graph needs a CUDA device" in capsys.readouterr().err


def test_low_mode_rng_replay_refuses_a_graph_capture(monkeypatch):
    """Inside a capture the RNG state of the first pass cannot be read: a clear error, not
    torch's internal one (the check runs before any device call)."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="memory='low' replays a block that draws random"):
        RngState.capture(torch.device("cuda"))
    assert RngState.capture(torch.device("cpu")).cuda is None  # the CPU has no graphs
