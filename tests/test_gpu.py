"""The fused paths on a CUDA GPU (skipped without one): the CUDA and Triton backends against
the original plain-PyTorch edge computed in fp64 on the CPU, the half-precision budget,
bitwise repeatability, no host synchronisation, CUDA-graph capture, a whole supernet
step equal in every memory mode, and searches replayed as CUDA graphs equal to eager ones.
TF32 is off here: it would measure cuDNN, not us."""
import copy

import pytest
import torch
import torch.nn.functional as F

from fastdarts.backends import BACKENDS
from fastdarts.graphs import CapturedStep, make_capturable
from fastdarts.search import SearchConfig, run_search
from fastdarts.spaces import build_supernet
from tests.test_graphs import STEPS
from tests.test_mixed_op import OP_SETS, _inputs, _pair, _rel, _run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

GPU_BACKENDS = [b for b in ("cuda", "triton")
                if BACKENDS[b].is_available() and "cuda" in BACKENDS[b].devices()]


@pytest.fixture(autouse=True)
def _exact_fp32():
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _names(module):
    return ["out", "d_x", "d_weights"] + [n for n, _ in module.named_parameters()]


CASES = [  # (op set, stride, C, H, batch): odd sizes, batch 1, and one with many blocks
    ("darts", 1, 5, 9, 3), ("darts", 2, 6, 8, 1), ("s1-reduce1", 2, 4, 7, 2),
    ("s2", 1, 4, 6, 2), ("s3", 2, 4, 8, 2), ("nb201", 1, 5, 7, 1), ("darts", 1, 16, 32, 8),
]


@pytest.mark.parametrize("mode", ["fast", "low"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "nhwc"])
@pytest.mark.parametrize("op_set,stride,C,H,N", CASES,
                         ids=[f"{c[0]}-s{c[1]}-C{c[2]}" for c in CASES])
def test_fp32_on_gpu_within_1e5_of_fp64_original(op_set, stride, C, H, N, layout, backend,
                                                  mode):
    ref, fused = _pair(op_set, stride, C, "reference", None, torch.float64)
    fused = fused.float().cuda()
    x, w = _inputs((N, C, H, H), torch.float64, layout, len(ref._ops))
    want, want_buf = _run(ref, x, w)
    fused.memory, fused.backend = mode, backend
    got, got_buf = _run(fused, x.float().cuda(), w.float().cuda())
    for name, a, b in zip(_names(fused), got, want):
        assert a.shape == b.shape and _rel(a.cpu(), b) <= 1e-5, f"{name}: {_rel(a.cpu(), b):.2e}"
    for (name, _), a, b in zip(fused.named_buffers(), got_buf, want_buf):
        assert torch.allclose(a.cpu().double(), b.double(), rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last],
                         ids=["nchw", "nhwc"])
def test_half_precision_on_gpu_within_budget(dtype, backend, layout):
    """Outputs within 2x, gradients within 3x of the original run in the same dtype."""
    ref64, _ = _pair("darts", 1, 8, "reference", None, torch.float64)
    x, w = _inputs((4, 8, 12, 12), torch.float64, layout, 8)
    exact, _ = _run(ref64, x, w)
    original = copy.deepcopy(ref64).to("cuda", dtype)
    fused = copy.deepcopy(ref64).to("cuda", dtype)
    fused.memory, fused.backend = "low", backend
    base, _ = _run(original, x.to("cuda", dtype), w.float().cuda())
    got, _ = _run(fused, x.to("cuda", dtype), w.float().cuda())
    for i, (name, a, b, e) in enumerate(zip(_names(fused), got, base, exact)):
        budget = 2.0 if i == 0 else 3.0
        err, err_base = _rel(a.cpu(), e), _rel(b.cpu(), e)
        assert err <= budget * err_base + 1e-3, f"{name}: {err:.2e} vs original {err_base:.2e}"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["fast", "low"])
def test_bitwise_repeatable_on_gpu(backend, mode):
    saved = torch.backends.cudnn.deterministic
    torch.backends.cudnn.deterministic = True  # cuDNN's own weight gradients, not ours
    try:
        m = OP_SETS["darts"](1, 16, mode).cuda()
        m.backend = backend
        x, w = _inputs((8, 16, 32, 32), torch.float32, torch.channels_last, 8)
        a, _ = _run(copy.deepcopy(m), x.cuda(), w.cuda())
        b, _ = _run(copy.deepcopy(m), x.cuda(), w.cuda())
    finally:
        torch.backends.cudnn.deterministic = saved
    for name, u, v in zip(_names(m), a, b):
        assert torch.equal(u, v), name


def _supernet_step(model, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


def _in_mode(model, memory):
    """A copy of `model` with every fused module in `memory` mode."""
    model = copy.deepcopy(model)
    for mod in model.modules():
        if hasattr(mod, "memory"):
            mod.memory = memory
    return model


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["fast", "low"])
@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_supernet_step_never_synchronises_with_the_host(space, mode, backend, monkeypatch):
    monkeypatch.setenv("FASTDARTS_BACKEND", backend)
    torch.manual_seed(0)
    model = build_supernet(space, 10, C=8, layers=5 if space == "darts" else 1,
                           memory=mode).cuda().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,), device="cuda")
    _supernet_step(model, x, y)  # first call: Triton compiles, plans are built
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _supernet_step(model, x, y)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["fast", "low"])
def test_mixed_op_step_is_cuda_graph_capturable(backend, mode):
    """Forward and backward captured in one CUDA graph and replayed on new inputs give what an
    eager run gives (BN running statistics are buffers updated in place by the replay)."""
    torch.manual_seed(0)
    m = OP_SETS["darts"](2, 8, mode).cuda()
    m.backend = backend
    eager = copy.deepcopy(m)
    x = torch.randn(4, 8, 10, 10, device="cuda").contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = torch.softmax(torch.randn(8, device="cuda"), 0).requires_grad_()
    g = torch.randn(4, 8, 5, 5, device="cuda")

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the graph: compiles, plans, allocator
        for _ in range(2):
            torch.autograd.grad(copy.deepcopy(m)(x, w), [x, w], g)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = m(x, w)
        dx, dw = torch.autograd.grad(out, [x, w], g)

    for seed in (1, 2):
        gen = torch.Generator(device="cuda").manual_seed(seed)
        with torch.no_grad():
            x.copy_(torch.randn(x.shape, device="cuda", generator=gen))
            w.copy_(torch.softmax(torch.randn(8, device="cuda", generator=gen), 0))
        graph.replay()
        want = eager(x, w)
        want_dx, want_dw = torch.autograd.grad(want, [x, w], g)
        for name, a, b in (("out", out, want), ("d_x", dx, want_dx), ("d_w", dw, want_dw)):
            assert _rel(a.cpu(), b.cpu()) <= 1e-5, name
    for (name, a), b in zip(m.named_buffers(), eager.buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("space", ["darts", "s4", "nb201"])
def test_supernet_step_equal_in_all_modes_on_gpu(space, backend, monkeypatch):
    monkeypatch.setenv("FASTDARTS_BACKEND", backend)
    torch.manual_seed(0)
    ref = build_supernet(space, 10, C=8, layers=5 if space != "nb201" else 1,
                         memory="reference").cuda()
    x = torch.randn(4, 3, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,), device="cuda")

    def run(mode):
        model = _in_mode(ref, mode)
        torch.manual_seed(11)  # S4's noise op
        loss = _supernet_step(model, x, y)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in model.parameters()]
        return loss, grads, list(model.buffers()), [n for n, _ in model.named_parameters()]

    want = run("reference")
    for mode in ("fast", "low"):
        loss, grads, bufs, names = run(mode)
        assert abs(loss.item() - want[0].item()) <= 1e-5 * abs(want[0].item())
        for name, a, b in zip(names, grads, want[1]):
            assert _rel(a.cpu(), b.cpu()) <= 2e-4, f"{mode} {name}: {_rel(a.cpu(), b.cpu()):.2e}"
        for a, b in zip(bufs, want[2]):
            assert torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5), mode


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["fast", "low"])
@pytest.mark.parametrize("stride", [1, 2])
def test_pc_darts_edge_on_gpu_within_1e5_of_fp64_original(stride, mode, backend):
    from fastdarts import PartialMixedOp
    from tests.darts_style_model import PRIMS, PCMixedOp
    torch.manual_seed(3)
    theirs = PCMixedOp(16, stride, PRIMS, 4).double()
    ours = PartialMixedOp(16, stride, 4, memory=mode, backend=backend).cuda()
    ours.load_state_dict(theirs.state_dict())
    x, w = _inputs((4, 16, 8, 8), torch.float64, torch.channels_last, len(PRIMS))
    want, _ = _run(theirs, x, w)
    got, _ = _run(ours, x.float().cuda(), w.float().cuda())
    for name, a, b in zip(_names(ours), got, want):
        assert _rel(a.cpu(), b) <= 1e-5, f"{name}: {_rel(a.cpu(), b):.2e}"


@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("mode", ["fast", "low"])
def test_pc_darts_supernet_step_equal_to_reference_on_gpu(mode, backend, monkeypatch):
    monkeypatch.setenv("FASTDARTS_BACKEND", backend)
    torch.manual_seed(0)
    ref = build_supernet("darts", 10, C=8, layers=5, partial_k=4, memory="reference").cuda()
    x = torch.randn(4, 3, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (4,), device="cuda")

    def run(memory):
        model = _in_mode(ref, memory)
        _supernet_step(model, x, y)
        return [p.grad for p in model.parameters()]

    for a, b in zip(run(mode), run("reference")):
        assert _rel(a.cpu(), b.cpu()) <= 2e-4


def test_captured_step_follows_eager_steps_across_keys_and_shapes():
    """CapturedStep: warm-up, capture, replays, and a new capture for a new key and a new
    batch shape leave the loss, weights, Adam state and BN statistics where eager steps do."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).cuda()
    twin = copy.deepcopy(net)

    def trainer(model):
        opt = make_capturable(torch.optim.Adam(model.parameters(), lr=1e-2))

        def step(x, y):
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return loss.detach()
        return step

    captured, eager = CapturedStep(trainer(net)), trainer(twin)
    calls = [("a", 4)] * 5 + [("b", 4)] * 4 + [("b", 3)] * 4
    for key, n in calls:
        x = torch.randn(n, 3, 8, 8, device="cuda")
        y = torch.randint(0, 10, (n,), device="cuda")
        got = captured(key, x, y).clone()
        assert torch.allclose(got, eager(x, y), rtol=1e-5, atol=1e-6), (key, n)
    for (name, a), b in zip(net.state_dict().items(), twin.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-6), name
    assert captured.captures == 3 and captured.replays == len(calls) - 3 * 2


def _search_config(tmp_path, name, cuda_graph, **kw):
    base = dict(dataset="digits", epochs=2, layers=3, init_channels=12, steps_per_epoch=6,
                arch_warmup_epochs=0, deterministic=True, progress=False, device="cuda")
    return SearchConfig(**{**base, **kw}, run_dir=str(tmp_path / name), cuda_graph=cuda_graph)


def _search(tmp_path, name, cuda_graph, **kw):
    return run_search(_search_config(tmp_path, name, cuda_graph, **kw), log=lambda *a: None)


# every method and memory mode of tests/test_graphs.py; DrNAS at C=24, where K=6 leaves it
# 4 channels per edge and it trains (at 12 its loss stays near 30)
GRAPHED_SEARCHES = {**STEPS, "drnas": dict(algo="drnas", init_channels=24)}


def _assert_same_search(a, b):
    for ra, rb in zip(a.history, b.history, strict=True):
        for key in ("train_loss", "arch_loss", "val_loss"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4), (ra["epoch"], key)
        for cell, record in ra["weights"].items():  # values rounded to 6 decimals
            want, got = torch.tensor(record["values"]), torch.tensor(rb["weights"][cell]["values"])
            assert torch.allclose(got, want, rtol=1e-4, atol=2e-6), (ra["epoch"], cell)


@pytest.mark.parametrize("kw", GRAPHED_SEARCHES.values(), ids=GRAPHED_SEARCHES.keys())
def test_search_replayed_as_cuda_graphs_equals_the_eager_search(tmp_path, kw, monkeypatch):
    """Every method, with steps replayed as CUDA graphs (captured anew each epoch: the
    schedule, SDARTS's radius and DrNAS's stage move there) ends where the eager search ends."""
    made = []

    class Counted(CapturedStep):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)
    monkeypatch.setattr("fastdarts.search.CapturedStep", Counted)
    eager = _search(tmp_path, "eager", False, **kw)
    assert not made
    graphed = _search(tmp_path, "graph", True, **kw)
    _assert_same_search(eager, graphed)
    (captured,) = made
    assert captured.captures == 2 and captured.replays == 2 * (6 - captured.warmup)


def test_resumed_cuda_graph_search_equals_the_uninterrupted_one(tmp_path):
    """The arch optimiser is made capturable again after the checkpoint's state is loaded."""
    full = _search(tmp_path, "full", True, epochs=3)
    cut = _search_config(tmp_path, "cut", True, epochs=3)
    run_search(cut, stop_after_epochs=1, log=lambda *a: None)
    _assert_same_search(full, run_search(cut, resume=True, log=lambda *a: None))
