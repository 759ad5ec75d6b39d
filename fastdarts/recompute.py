"""Recompute without side effects: cell-level recomputation, frozen BN statistics, RNG replay.

`torch.utils.checkpoint` re-runs a block in backward, so every BatchNorm in it updates its
running statistics twice (`num_batches_tracked` doubles) and a dropout or noise op draws new
numbers unless the RNG is restored. Here a recompute runs with the block's BN statistics
frozen (training-mode BNs normalise with batch statistics, as in the first pass, but leave
their buffers alone) and with the RNG state of the first pass when the block draws random
numbers.

`recompute(module, fn, *args)` keeps only the tensor arguments of `fn` for backward and
returns the gradients of the arguments and of `module`'s parameters through autograd
Function outputs (not by accumulating `.grad` inside backward), so `torch.autograd.grad`
and DistributedDataParallel's reducer see them as usual. Mixed ops run inside a recompute
keep their bodies' graphs (`fast`), since the cell as a whole keeps nothing, and take the
BN-tail statistics of their first pass from the block's `StatsTape` instead of reducing the
recomputed op outputs again.

`recompute_darts_cell` does the same for a DARTS cell with a node-by-node backward: it also
keeps the cell's output (kept by the next cells anyway), takes the node states from it and
recomputes one node's edges at a time, so the backward transient is one node's graph.
"""
from __future__ import annotations

import contextlib
import threading
import types
from typing import Callable, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .structure import cached, invalidate_caches, listed_parameters  # noqa: F401 (re-exported)

__all__ = ["recompute", "recompute_darts_cell", "frozen_bn_stats", "is_recomputing",
           "listed_parameters", "module_uses_rng", "RngState", "AutocastState",
           "enable_cell_recompute", "StatsTape", "recording_tape", "replayed_stats",
           "values_unread", "summed_into_output"]

_state = threading.local()


def is_recomputing() -> bool:
    """True inside the backward recomputation of a `recompute` block."""
    return getattr(_state, "depth", 0) > 0


class StatsTape:
    """The BN-tail statistics each fused edge of a block computed in the block's first pass,
    handed back to it in the recompute: the recomputed op outputs are the same tensors, so
    their statistics need not be reduced again (one kernel call per op saved, and exactly
    the statistics the forward output was normalised with). An edge run twice in one block
    is not handed anything (its calls cannot be told apart)."""

    def __init__(self):
        self._entries: dict = {}

    def record(self, owner: nn.Module, stats) -> None:
        key = id(owner)
        self._entries[key] = None if key in self._entries else (owner, stats)

    def take(self, owner: nn.Module):
        entry = self._entries.get(id(owner))
        return entry[1] if entry is not None and entry[0] is owner else None


def recording_tape() -> "StatsTape | None":
    """The tape of the block whose first pass is running, if any (`fastdarts.mixed` records)."""
    return getattr(_state, "recording", None)


def replayed_stats(owner: nn.Module):
    """The statistics `owner` recorded in the first pass of the block being recomputed."""
    tape = getattr(_state, "replaying", None)
    return None if tape is None else tape.take(owner)


def values_unread() -> bool:
    """True while a replay builds edges whose outputs are only summed into what it
    backpropagates: a node of a node-wise replay (`recompute_darts_cell`) that is a plain
    sum of its edges, or edges marked `summed_into_output` in the replayed block. Their
    output values are never read (the backward of a sum passes the gradient through), only
    their graphs are, so a fused edge skips forming them (`fastdarts.mixed`)."""
    return bool(getattr(_state, "values_unread", False))


@contextlib.contextmanager
def summed_into_output(block: nn.Module, on: bool = True):
    """Marks, in `block`'s forward, edges whose outputs are summed straight into the block's
    output. A replay of `block` (`recompute`) only backpropagates that output, so it never
    reads their values (`values_unread`). Anywhere else (no replay, or `block` run inside
    the replay of an enclosing module, which reads its output) this does nothing."""
    with _state_set("values_unread", on and getattr(_state, "replayed", None) is block):
        yield


@contextlib.contextmanager
def _state_set(name: str, value):
    """This thread's `_state.<name>` set to `value` for the block, then restored."""
    previous = getattr(_state, name, None)
    setattr(_state, name, value)
    try:
        yield
    finally:
        setattr(_state, name, previous)


@contextlib.contextmanager
def _recomputing(tape: "StatsTape | None" = None, block: "nn.Module | None" = None):
    _state.depth = getattr(_state, "depth", 0) + 1
    try:
        with _state_set("replaying", tape), _state_set("replayed", block):
            yield
    finally:
        _state.depth -= 1


@contextlib.contextmanager
def frozen_bn_stats(module: "nn.Module | Iterable[nn.Module]"):
    """Training-mode BNs of `module` (or of each module of a sequence) use batch statistics
    without updating running ones."""
    roots = [module] if isinstance(module, nn.Module) else list(module)
    frozen = [m for root in roots for m in _batch_norms(root)
              if m.training and m.track_running_stats]
    # Plain attribute writes: nn.Module.__setattr__ is slow and these are plain bools.
    for m in frozen:
        m.__dict__["track_running_stats"] = False
    try:
        yield
    finally:
        for m in frozen:
            m.__dict__["track_running_stats"] = True


_RNG_MODULES = (nn.Dropout, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                nn.FeatureAlphaDropout)


def module_uses_rng(module: nn.Module) -> bool:
    """Whether a forward of `module` draws random numbers (dropout, the S4 noise op)."""
    return any(isinstance(m, _RNG_MODULES) or "Noise" in type(m).__name__
               or getattr(m, "draws_random_numbers", False) for m in module.modules())


class AutocastState:
    """The autocast setting of the forward, re-entered by the backward recompute."""

    def __init__(self, device_type: str):
        self.device_type = device_type
        self.enabled = torch.is_autocast_enabled(device_type)
        self.dtype = torch.get_autocast_dtype(device_type) if self.enabled else None

    def __call__(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)


class RngState:
    """The CPU and (for CUDA inputs) the device RNG state, to replay random ops."""

    def __init__(self, cpu, device, cuda):
        self.cpu, self.device, self.cuda = cpu, device, cuda

    @classmethod
    def capture(cls, device: torch.device) -> "RngState":
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError(
                "memory='low' replays a block that draws random numbers (dropout, the S4 noise "
                "op, PC-DARTS's sampled channels) with the RNG state of its first pass, and a "
                "CUDA graph capture cannot read that state; capture with memory='fast' or "
                "'reference', or run the step without a graph")
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return cls(torch.get_rng_state(), device, cuda)

    @staticmethod
    @contextlib.contextmanager
    def restored(state: "RngState | None"):
        """Run with `state` set, leaving the caller's RNG stream as it was."""
        if state is None:
            yield
            return
        devices = [state.device] if state.cuda is not None else []
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(state.cpu)
            if state.cuda is not None:
                torch.cuda.set_rng_state(state.cuda, state.device)
            yield


class _RecomputeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, run, module, rng, n_args, *tensors_and_params):
        args = tensors_and_params[:n_args]
        ctx.run, ctx.module, ctx.n_args = run, module, n_args
        ctx.rng = RngState.capture(args[0].device) if rng else None
        ctx.autocast = AutocastState(args[0].device.type)
        ctx.tape = StatsTape()
        with torch.no_grad(), _state_set("recording", ctx.tape):
            out = run(*args)
        ctx.save_for_backward(*args)
        return out

    @staticmethod
    def backward(ctx, g):
        args = ctx.saved_tensors
        n = ctx.n_args
        params = [p for p in listed_parameters(ctx.module) if p.requires_grad]
        need = ctx.needs_input_grad[4:]
        with torch.enable_grad(), frozen_bn_stats(ctx.module), \
                _recomputing(ctx.tape, ctx.module), \
                RngState.restored(ctx.rng), ctx.autocast():
            detached = [a.detach().requires_grad_(need[i]) for i, a in enumerate(args)]
            out = ctx.run(*detached)
        inputs = [a for a in detached if a.requires_grad] + params
        got = iter(torch.autograd.grad(out, inputs, g, allow_unused=True) if inputs else ())
        arg_grads = [next(got) if a.requires_grad else None for a in detached]
        param_grads = [next(got) for _ in params]
        return (None, None, None, None, *arg_grads, *param_grads)


def recompute(module: nn.Module, fn: Callable, *args):
    """`fn(*args)` (a forward of `module`) keeping only the tensor `args` for backward.

    Non-tensor arguments are passed through unchanged. Without grad mode, or when nothing
    needs a gradient, it is a plain call.
    """
    params = [p for p in listed_parameters(module) if p.requires_grad]
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not torch.is_grad_enabled() or is_recomputing() or not (
            params or any(t.requires_grad for t in tensors)):
        return fn(*args)
    slots = [isinstance(a, torch.Tensor) for a in args]

    def run(*ts):
        it = iter(ts)
        return fn(*[next(it) if s else a for s, a in zip(slots, args)])

    return _RecomputeFunction.apply(run, module, _uses_rng(module), len(tensors),
                                    *tensors, *params)


def _batch_norms(module: nn.Module) -> tuple:
    """The BatchNorms in `module`'s tree, cached (`fastdarts.structure.cached`)."""
    return cached(module, "_fastdarts_bns",
                  lambda m: tuple(b for b in m.modules() if isinstance(b, _BatchNorm)))


def _uses_rng(module: nn.Module) -> bool:
    """`module_uses_rng(module)`, cached (`fastdarts.structure.cached`)."""
    return cached(module, "_fastdarts_uses_rng", module_uses_rng)


class _NodewiseCellFunction(torch.autograd.Function):
    """A DARTS cell keeping its inputs and its output; backward one node at a time.

    The cell's output is the concat of all its nodes (multiplier == steps), and the next
    cells keep it anyway, so keeping it costs nothing: the backward takes the node states from
    it, recomputes the two preprocessed inputs, then backpropagates the nodes last first,
    recomputing only that node's edges. The transient is one node's graph (at most
    `steps + 1` edges) instead of the whole cell's, and no edge runs more than twice.
    """

    @staticmethod
    def forward(ctx, cell, s0, s1, weights, edge_weights, *params):
        ctx.cell = cell
        ctx.autocast = AutocastState(s0.device.type)
        ctx.has_edge_weights = edge_weights is not None
        ctx.tape = StatsTape()
        with torch.no_grad(), _state_set("recording", ctx.tape):
            out = cell._forward(s0, s1, weights, edge_weights)
        ctx.save_for_backward(s0, s1, weights, out,
                              *([edge_weights] if edge_weights is not None else []))
        return out

    @staticmethod
    def backward(ctx, g):
        cell = ctx.cell
        s0, s1, weights, out, *edge_weights = ctx.saved_tensors
        need = ctx.needs_input_grad
        steps = cell._steps
        params = [p for p in listed_parameters(cell) if p.requires_grad]
        grads: dict[int, torch.Tensor | None] = {id(p): None for p in params}

        def collect(pairs):
            for q, gq in pairs:
                if gq is not None:
                    grads[id(q)] = gq if grads[id(q)] is None else grads[id(q)] + gq

        with torch.enable_grad(), frozen_bn_stats(cell), _recomputing(ctx.tape), ctx.autocast():
            a0 = s0.detach().requires_grad_(need[1])
            a1 = s1.detach().requires_grad_(need[2])
            pre = [cell.preprocess0(a0), cell.preprocess1(a1)]
            w = weights.detach().requires_grad_(need[3])
            e = edge_weights[0].detach().requires_grad_(need[4]) if edge_weights else None
            arch = [t for t in (w, e) if t is not None and t.requires_grad]
            # Node states and their gradients are channel slices of the cell's output: made
            # dense once here, not once per edge that reads them.
            fmt = _dense_format(out)
            nodes = [t.contiguous(memory_format=fmt) for t in out.detach().chunk(steps, dim=1)]
            states = [t.detach().requires_grad_() for t in (*pre, *nodes)]
            g_states: list = [None, None,
                              *(t.contiguous(memory_format=fmt) for t in g.chunk(steps, dim=1))]
            g_arch: list = [None] * len(arch)
            offsets = [sum(2 + j for j in range(i)) for i in range(steps)]
            # The node is only backpropagated: if it is a plain sum of its edges, nothing
            # reads their output values (`values_unread`).
            sums = getattr(cell, "_node_sums_edges", lambda _: False)(e)
            for i in reversed(range(steps)):
                n, off = 2 + i, offsets[i]
                edges = [cell._ops[off + j] for j in range(n)]
                with _state_set("values_unread", sums):
                    node = cell._node(i, states[:n], w, e)
                eparams = [q for ed in edges for q in listed_parameters(ed) if q.requires_grad]
                ins = states[:n] + arch + eparams
                got = list(torch.autograd.grad(node, ins, g_states[2 + i], allow_unused=True))
                for j in range(n):
                    if got[j] is not None:
                        g_states[j] = got[j] if g_states[j] is None else g_states[j] + got[j]
                for a, ga in enumerate(got[n:n + len(arch)]):
                    if ga is not None:
                        g_arch[a] = ga if g_arch[a] is None else g_arch[a] + ga
                collect(zip(eparams, got[n + len(arch):]))
                del node, got
            pre_params = [q for m in (cell.preprocess0, cell.preprocess1)
                          for q in listed_parameters(m) if q.requires_grad]
            ins = [a for a in (a0, a1) if a.requires_grad] + pre_params
            # A preprocessing with frozen weights of an input that needs no gradient (the
            # stem's output while the weights are frozen) has no graph: left out.
            outs = [k for k in (0, 1) if pre[k].requires_grad and g_states[k] is not None]
            got = iter(torch.autograd.grad([pre[k] for k in outs], ins,
                                           [g_states[k] for k in outs], allow_unused=True)
                       if ins and outs else [None] * len(ins))
        d0 = next(got) if a0.requires_grad else None
        d1 = next(got) if a1.requires_grad else None
        collect(zip(pre_params, got))
        g_arch_it = iter(g_arch)
        g_w = next(g_arch_it) if w.requires_grad else None
        g_e = next(g_arch_it) if e is not None and e.requires_grad else None
        return (None, d0, d1, g_w, g_e, *[grads[id(p)] for p in params])


def _dense_format(t: torch.Tensor):
    return (torch.channels_last if not t.is_contiguous()
            and t.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format)


def recompute_darts_cell(cell: nn.Module, s0, s1, weights, edge_weights=None):
    """`cell(s0, s1, weights[, edge_weights])` keeping only its inputs and output,
    backpropagated node by node (`_NodewiseCellFunction`). `cell` is a DARTS cell:
    `preprocess0/1`, `_ops` in node order, `_steps == _multiplier`,
    `_forward(s0, s1, weights, edge_weights)` and `_node(i, states, weights, edge_weights)`
    (node i from its input states; PC-DARTS's edge normalisation scales each edge by its
    entry of `edge_weights`) and optionally `_node_sums_edges(edge_weights)` (True when
    `_node` is a plain sum of its edges' outputs, whose values the replay then skips).
    Cells that draw random numbers (S4 noise) use the whole-cell `recompute`, whose replay
    needs the forward order.
    """
    if cell._multiplier != cell._steps or _uses_rng(cell):
        return recompute(cell, cell._forward, s0, s1, weights, edge_weights)
    params = [p for p in listed_parameters(cell) if p.requires_grad]
    arch = [t for t in (weights, edge_weights) if t is not None]
    if not torch.is_grad_enabled() or is_recomputing() or not (
            params or s0.requires_grad or s1.requires_grad or
            any(t.requires_grad for t in arch)):
        return cell._forward(s0, s1, weights, edge_weights)
    return _NodewiseCellFunction.apply(cell, s0, s1, weights, edge_weights, *params)


def _recomputed_forward(self, *args):
    return recompute(self, type(self).forward.__get__(self), *args)


def enable_cell_recompute(cell: nn.Module) -> nn.Module:
    """Make `cell` (any module returning one tensor) keep only its inputs for backward.

    Installs an instance-level `forward`; the class, submodules and `state_dict` are
    unchanged. Undo with `del cell.forward`.
    """
    cell.forward = types.MethodType(_recomputed_forward, cell)
    return cell
