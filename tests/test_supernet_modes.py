"""A whole supernet step (loss, every weight and alpha gradient, BN buffers) is the same in
the reference, fast and low modes, for every space; recompute updates BN statistics once
(torch.utils.checkpoint updates them twice) and replays random ops."""
import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks.memory_probe import checkpointed, kernel_calls
from fastdarts import recompute
from fastdarts.spaces import build_supernet


def _set_memory(model, mode):
    for m in model.modules():
        if hasattr(m, "memory"):
            m.memory = mode


def _step(model, x, y):
    torch.manual_seed(11)  # S4's noise op
    loss = F.cross_entropy(model(x), y)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return loss, grads, [b.detach().clone() for b in model.buffers()]


@pytest.mark.parametrize("space,dtype", [(s, torch.float64) for s in
                                         ("darts", "s1", "s2", "s3", "s4", "nb201")]
                         + [("darts", torch.float32), ("nb201", torch.float32)],
                         ids=lambda v: str(v).replace("torch.", ""))
def test_step_equal_in_all_modes(space, dtype):
    torch.manual_seed(0)
    ref = build_supernet(space, 5, C=4, layers=3 if space != "nb201" else 1,
                         memory="reference").to(dtype)
    x = torch.randn(2, 3, 8, 8, dtype=dtype).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([1, 3])
    want = _step(copy.deepcopy(ref), x, y)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for mode in ("fast", "low"):
        model = copy.deepcopy(ref)
        _set_memory(model, mode)
        loss, grads, bufs = _step(model, x, y)
        assert abs(loss.item() - want[0].item()) <= tol * abs(want[0].item())
        names = [n for n, _ in model.named_parameters()]
        for name, a, b in zip(names, grads, want[1]):
            err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
            assert err <= tol * 10, f"{mode} {name}: {err:.2e}"
        for (name, _), a, b in zip(model.named_buffers(), bufs, want[2]):
            assert torch.allclose(a.double(), b.double(), rtol=tol, atol=tol), f"{mode} {name}"


@pytest.mark.parametrize("partial_k", [None, 2])
def test_imagenet_stem_step_equal_in_all_modes(partial_k):
    """The ImageNet stem (recomputed in `low`; stem1's in-place ReLU rectifies s0 for cell 0
    as in the original) and PC-DARTS's ImageNet edges: loss, every gradient and every BN
    buffer equal the reference's, and each BN is updated once."""
    torch.manual_seed(0)
    extra = {} if partial_k is None else {"partial_k": partial_k}
    ref = build_supernet("darts", 5, C=4, layers=3, stem="imagenet", memory="reference",
                         **extra).double()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64).contiguous(
        memory_format=torch.channels_last)
    y = torch.tensor([1, 3])
    want = _step(copy.deepcopy(ref), x, y)
    for mode in ("fast", "low"):
        model = copy.deepcopy(ref)
        _set_memory(model, mode)
        loss, grads, bufs = _step(model, x, y)
        assert abs(loss.item() - want[0].item()) <= 1e-10 * abs(want[0].item())
        for (name, _), a, b in zip(model.named_parameters(), grads, want[1]):
            err = ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
            assert err <= 1e-9, f"{mode} {name}: {err:.2e}"
        for (name, _), a, b in zip(model.named_buffers(), bufs, want[2]):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-10), f"{mode} {name}"
        assert set(_batches_tracked(model)) == {1}, mode


def _batches_tracked(model):
    return [int(m.num_batches_tracked) for m in model.modules()
            if isinstance(m, torch.nn.BatchNorm2d) and m.num_batches_tracked is not None]


def test_low_updates_bn_statistics_once_checkpoint_twice():
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    low = build_supernet("darts", 5, C=4, layers=3, memory="low")
    F.cross_entropy(low(x), y).backward()
    assert set(_batches_tracked(low)) == {1}

    ck = build_supernet("darts", 5, C=4, layers=3, memory="reference")
    for cell in ck.cells:
        cell.forward = checkpointed(cell)  # what the benchmark's checkpoint row runs
    F.cross_entropy(ck(x), y).backward()
    cell_counts = [int(m.num_batches_tracked) for m in ck.cells.modules()
                   if isinstance(m, torch.nn.BatchNorm2d)]
    assert set(cell_counts) == {2}  # the measured problem this module exists to avoid


def test_recompute_replays_random_ops_and_keeps_caller_rng():
    lin = torch.nn.Linear(4, 4)

    def noisy(x):
        return lin(x) + torch.randn_like(x)

    class Holder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = lin
            self.drop = torch.nn.Dropout(0.5)  # marks the block as drawing random numbers

    holder = Holder()
    x = torch.randn(3, 4, requires_grad=True)
    torch.manual_seed(5)
    out = recompute(holder, noisy, x)
    after_forward = torch.randn(1)
    torch.manual_seed(5)
    expected = noisy(x)
    assert torch.equal(out, expected)
    (gx,) = torch.autograd.grad(out.square().sum(), x)
    (gx_ref,) = torch.autograd.grad(expected.square().sum(), x)
    assert torch.allclose(gx, gx_ref)
    torch.manual_seed(5)
    noisy(x)
    assert torch.equal(torch.randn(1), after_forward)


def test_low_keeps_only_cell_inputs():
    """Saved activations per image: low keeps <= 1/40 of the reference (DESIGN.md §7)."""
    from benchmarks.memory_probe import saved_bytes
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    sizes = {}
    for mode in ("reference", "fast", "low"):
        torch.manual_seed(0)
        model = build_supernet("darts", 5, C=8, layers=5, memory=mode)
        sizes[mode] = saved_bytes(model, x, y)
    assert sizes["low"] * 40 <= sizes["reference"], sizes
    assert sizes["fast"] < sizes["reference"], sizes


def test_nb201_low_keeps_a_fortieth_at_the_benchmark_size():
    """NB201 (C=16, N=5, 32x32): `low` also recomputes the stem and the residual reduction
    blocks, so what it keeps is the search cells' inputs: <= 1/40 of the reference (cells
    recomputed alone, as torch.utils.checkpoint on every cell does, keep 1/38)."""
    from benchmarks.memory_probe import saved_bytes
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 1])
    sizes = {}
    for mode in ("reference", "low"):
        torch.manual_seed(0)
        sizes[mode] = saved_bytes(build_supernet("nb201", 10, C=16, layers=5, memory=mode), x, y)
    assert sizes["low"] * 40 <= sizes["reference"], sizes


def test_autocast_bf16_recomputes_in_the_forwards_precision():
    """Recompute (segments, node-wise cells) re-enters the forward's autocast: without it the
    recomputed convs would mix bf16 inputs with fp32 weights and fail. The result is as close
    to fp32 as the original's bf16 run (within 2x of its error)."""
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    y = torch.tensor([1, 7, 3, 0])

    def grads(memory, autocast):
        torch.manual_seed(0)
        model = build_supernet("darts", 10, C=4, layers=3, memory=memory)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        return torch.cat([p.grad.flatten().float() for p in model.parameters()])

    exact = grads("reference", False)
    err = {m: float((grads(m, True) - exact).norm() / exact.norm())
           for m in ("reference", "fast", "low")}
    assert err["fast"] <= 2 * err["reference"] and err["low"] <= 2 * err["reference"], err


def _tail_ops(model):
    from fastdarts.mixed import FusedMixedOp
    from fastdarts.plans import plans_of
    return sum(1 for m in model.modules() if isinstance(m, FusedMixedOp)
               for p in plans_of(m) if p.kind == "body" and p.tail is not None)


@pytest.mark.parametrize("space", ["darts", "nb201", "s4"])
def test_low_reduces_each_tail_once_per_step(space):
    """The cell recompute takes the BN-tail statistics of the forward pass from the block's
    StatsTape (node-wise DARTS cells, whole-cell NB201 and noisy S4 cells) instead of
    reducing the recomputed op outputs again: one statistics reduction per tail op and step,
    all of an edge's in one call."""
    from fastdarts.mixed import FusedMixedOp
    torch.manual_seed(0)
    model = build_supernet(space, 5, C=4, layers=3 if space != "nb201" else 1, memory="low")
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    with kernel_calls(include_reference=True) as calls:
        _step(model, x, y)
    assert calls.ops["bn_stats"] == _tail_ops(model) > 0
    edges_with_tails = sum(1 for m in model.modules() if isinstance(m, FusedMixedOp)
                           and _tail_ops(m) > 0)
    assert calls["bn_stats_edge"] == edges_with_tails and "bn_stats" not in calls


def _active_ops(modules):
    from fastdarts.mixed import FusedMixedOp
    from fastdarts.plans import plans_of
    return sum(1 for m in modules if isinstance(m, FusedMixedOp)
               for p in plans_of(m) if p.kind != "zero")


def _output_node_ops(model):
    """Active ops on the edges of NB201 cells' last node (the cell output)."""
    from fastdarts.spaces.nb201 import NB201SearchCell
    return sum(_active_ops(cell.edges[key].modules()) for cell in model.modules()
               if isinstance(cell, NB201SearchCell) for key in cell.edge_keys
               if key.startswith(f"{cell.max_nodes - 1}<-"))


@pytest.mark.parametrize("space", ["darts", "s3", "nb201", "s4"])
def test_replays_skip_the_edge_outputs_they_never_read(space):
    """A replay only backpropagates what it rebuilds, so edge outputs that are only summed
    into what it backpropagates are not formed again: every node of a node-wise DARTS cell
    (`recompute_darts_cell`) and the last node of a whole-cell NB201 replay. The other
    edges' values are read by later edges and formed twice (NB201's inner nodes; S4, whose
    noise ops make its cells replay whole, in forward order). Gradients equal the
    reference's."""
    torch.manual_seed(0)
    model = build_supernet(space, 5, C=4, layers=3 if space != "nb201" else 1, memory="low")
    ref = copy.deepcopy(model)
    _set_memory(ref, "reference")
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    with kernel_calls(include_reference=True) as calls:
        got = _step(model, x, y)
    want = _step(ref, x, y)
    active, output_node = _active_ops(model.modules()), _output_node_ops(model)
    if space == "nb201":
        assert 0 < output_node < active
    replayed = {"darts": 0, "s3": 0, "nb201": active - output_node, "s4": active}[space]
    assert calls.ops["bn_accumulate"] == active + replayed
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(got[1], want[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_a_cell_replayed_inside_an_enclosing_replay_forms_its_output():
    """`summed_into_output` applies to the replay of the cell itself only: replayed as part
    of an enclosing block, the cell's output is read by what follows it there."""
    from fastdarts.ops.nb201 import PRIMITIVES
    from fastdarts.spaces.nb201 import NB201SearchCell
    torch.manual_seed(0)
    cells = torch.nn.Sequential(*(NB201SearchCell(4, 4, PRIMITIVES, False, True, memory="low")
                                  for _ in range(2))).double()
    plain = copy.deepcopy(cells)
    _set_memory(plain, "reference")
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(6, 5, dtype=torch.float64), -1).requires_grad_()

    def run(seq):
        return lambda t, a: seq[1](seq[0](t, a), a)
    out = recompute(cells, run(cells), x, w)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, [x, w, *cells.parameters()], g)
    want_out = run(plain)(x, w)
    want = torch.autograd.grad(want_out, [x, w, *plain.parameters()], g)
    torch.testing.assert_close(out, want_out, rtol=1e-10, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_edge_run_twice_in_a_block_reduces_its_statistics_again():
    """A tape entry is only handed back when the edge ran once in the block: run twice, the
    two calls cannot be told apart, and the recompute reduces both again. Gradients equal
    the plain edge's either way."""
    from fastdarts import MixedOp
    torch.manual_seed(0)
    edge = MixedOp(4, 1, memory="low").double()
    plain = copy.deepcopy(edge)
    plain.memory = "reference"
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0).requires_grad_()
    g = torch.randn(2, 4, 6, 6, dtype=torch.float64)

    def twice(m):
        return lambda t, a: m(m(t, a), a)
    with kernel_calls(include_reference=True) as calls:
        out = recompute(edge, twice(edge), x, w)
        got = torch.autograd.grad(out, [x, w, *edge.parameters()], g, allow_unused=True)
    tails = _tail_ops(edge)
    assert calls.ops["bn_stats"] == 2 * tails + 2 * tails  # forward twice, recompute twice
    want_out = twice(plain)(x, w)
    want = torch.autograd.grad(want_out, [x, w, *plain.parameters()], g, allow_unused=True)
    assert torch.allclose(out, want_out, rtol=1e-10, atol=1e-12)
    for a, b in zip(got, want):
        if b is not None:
            assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)
