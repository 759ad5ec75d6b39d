"""`fastdarts.graphs` and the search's `cuda_graph` option, the parts a CPU can check: named
errors for what a graph cannot take, the search's refusals, the optimiser flags, resuming a
graphed run's checkpoint without a graph, and that no method's step reads a value back from
the device. The captured steps themselves are compared with eager ones in tests/test_gpu.py."""
import pytest
import torch

from fastdarts.cli import main as cli_main
from fastdarts.graphs import CapturedStep, make_capturable
from fastdarts.recompute import RngState
from fastdarts.search import (CHECKPOINT, SearchConfig, _captured_search_step, build_search,
                              run_search, search_step)
from tests.test_search import quiet, tiny_config, tiny_data


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


def test_make_capturable_sets_adams_flag_both_ways_and_leaves_sgd_alone():
    w = torch.nn.Parameter(torch.randn(3))
    adam = torch.optim.Adam([w], lr=0.1)
    sgd = torch.optim.SGD([w], lr=0.1, momentum=0.9)
    sgd_groups = [dict(g) for g in sgd.param_groups]
    assert make_capturable(adam) is adam and make_capturable(sgd) is sgd
    assert all(g["capturable"] for g in adam.param_groups)
    assert [dict(g) for g in sgd.param_groups] == sgd_groups  # SGD has no host state
    make_capturable(adam, False)
    w.grad = torch.ones(3)
    adam.step()  # a capturable Adam would refuse CPU parameters
    assert not adam.param_groups[0]["capturable"]
    assert adam.state[w]["step"].device.type == "cpu"


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
def test_captured_search_takes_graph_safe_supernets(kw):
    cfg, algo, model, training = _search_parts(**kw)
    captured = _captured_search_step(cfg, algo, model, training, lambda: 0.1)
    assert isinstance(captured, CapturedStep) and not captured.captured


def test_a_graphed_runs_checkpoint_resumes_without_a_graph(tmp_path):
    """A checkpoint saved by a --cuda-graph run holds a capturable Adam. Resumed where no
    graph runs (here the CPU, which a capturable Adam refuses), the flag is cleared and the
    run ends where an uninterrupted one does."""
    full = run_search(tiny_config(tmp_path / "full"), data=tiny_data(), log=quiet)
    run_search(tiny_config(tmp_path / "cut"), data=tiny_data(), stop_after_epochs=2,
               log=quiet)
    path = tmp_path / "cut" / CHECKPOINT
    ckpt = torch.load(path, weights_only=False)
    groups = ckpt["algorithm"]["arch_optimizer"]["param_groups"]
    assert groups and not any(g["capturable"] for g in groups)
    for g in groups:  # what the graphed run would have saved
        g["capturable"] = True
    torch.save(ckpt, path)
    resumed = run_search(tiny_config(tmp_path / "cut"), resume=True, data=tiny_data(),
                         log=quiet)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert resumed.history[-1]["weights"] == full.history[-1]["weights"]


def test_cuda_graph_on_the_cpu_is_a_named_error(tmp_path, capsys):
    code = cli_main(["search", "--dataset", "synthetic", "--cuda-graph", "--device", "cpu",
                     "--run-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "--cuda-graph needs a CUDA device" in capsys.readouterr().err


def test_low_mode_rng_replay_refuses_a_graph_capture(monkeypatch):
    """Inside a capture the RNG state of the first pass cannot be read: a clear error, not
    torch's internal one (the check runs before any device call)."""
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="memory='low' replays a block that draws random"):
        RngState.capture(torch.device("cuda"))
    assert RngState.capture(torch.device("cpu")).cuda is None  # the CPU has no graphs


#: ops that read a device tensor back to the host: a GPU step would wait there, and a CUDA
#: graph capture fails on them
_READ_BACK = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select",
              "unique", "_unique2", "unique_consecutive", "repeat_interleave"}

STEPS = {
    "darts": {}, "darts-order2": dict(order=2), "darts-fast": dict(memory="fast"),
    "darts-reference": dict(memory="reference"), "nb201": dict(space="nb201"),
    "s4-fast": dict(space="s4", memory="fast"), "pcdarts": dict(algo="pcdarts"),
    "rf-pcdarts": dict(algo="rf-pcdarts"), "sdarts-rs": dict(algo="sdarts-rs"),
    "sdarts-adv": dict(algo="sdarts-adv"), "drnas": dict(algo="drnas"),
    "darts-minus": dict(algo="darts-minus"),
}


@pytest.mark.parametrize("kw", STEPS.values(), ids=STEPS.keys())
def test_search_steps_read_nothing_back_from_the_device(kw):
    """Every method's whole search step (architecture step, weight step, clipping, both
    optimisers) dispatches no op that copies a tensor's value to the host. On the CPU this
    is what can be seen of the GPU requirement (tests/test_gpu.py checks the supernet step
    with CUDA's sync detector). The one exception is Adam's own step count, which lives
    on the host unless it is capturable."""
    from torch.utils._python_dispatch import TorchDispatchMode

    cfg, algo, model, training = _search_parts(**kw)
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 3, 8, 8, generator=g).contiguous(memory_format=torch.channels_last),
             torch.randint(0, 10, (4,), generator=g))
    for _ in range(2):  # lazily made state (momentum buffers, flat views) in place first
        search_step(algo, model, training, batch, batch, 0.1, cfg.grad_clip)
    host_counts = {id(s["step"]) for s in algo.arch_optimizer.state.values()}
    read_back = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if (func.overloadpacket.__name__ in _READ_BACK
                    and not (args and id(args[0]) in host_counts)):
                read_back.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Spy():
        search_step(algo, model, training, batch, batch, 0.1, cfg.grad_clip)
    assert read_back == []
    # the spy sees them: Adam reads its host step count once per architecture tensor
    with Spy():
        host_counts.clear()
        algo.arch_optimizer.step()
    assert read_back == ["_local_scalar_dense"] * len(list(model.arch_parameters()))
