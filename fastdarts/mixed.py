"""The fused mixed op: `out = sum_k w_k * tail_k(body_k(x))` with the BN tails folded in.

Each candidate op of an edge is split into a *body* and a *tail* (its final BatchNorm, or
nothing) by `fastdarts.plans`, which reads an existing `_ops` ModuleList; no module is
replaced, so parameters, buffers and `state_dict` keys stay as they were. The tails, the
weighted sum and their backward (per-channel sums of `g` and `g * xhat`, `dw_k`, `dz_k`) run
in the kernels of `fastdarts.backends`, every op of an edge in one call per kernel (the
`*_edge` kernels: on CUDA a handful of launches per edge, whatever its op count; at search
sizes the GPU step is bound by the host's launches). Memory modes (DESIGN.md §3):

* ``low``: the forward runs the bodies without a graph and keeps only `x`, the weights and
  the BN statistics; the backward recomputes one body at a time.
  Inside a cell recomputed by `fastdarts.recompute` the edge runs as ``fast`` with every
  body keeping its graph (the cell already keeps nothing, and the recompute is short-lived)
  and normalises with the tail statistics of the cell's first pass (`StatsTape`), which
  are not reduced a second time.
* ``fast``: the Function keeps each op's pre-BN output `z_k` (one activation instead of the
  reference's BN input, BN output and product input); conv bodies run as segments that keep
  only their inputs and recompute only cheap modules (ReLU, inner BN, depthwise convs;
  never a full conv, see `fastdarts.plans`); the leading ReLU of the conv ops is computed
  once per edge.
* ``reference``: the original `sum(w * op(x) for ...)`.

Mixing weights are taken as given (softmax, Dirichlet sample, projected point, exact zeros):
never normalised here. Nothing here synchronises with the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .backends import select_backend
from .ops.darts import OPS, POOL_OPS, PRIMITIVES
from .plans import OpPlan, as_dtype, plans_of, segments_backward, segments_forward
from .reference.mixed_op import acc_dtype, running_stats_update_ref
from .recompute import (AutocastState, frozen_bn_stats, is_recomputing, recording_tape,
                        replayed_stats, RngState, values_unread)

__all__ = ["MixedOp", "FusedMixedOp", "MEMORY_MODES", "mixed_forward"]

MEMORY_MODES = ("low", "fast", "reference")


# --------------------------------------------------------------------------------------
# Shared pieces of the three paths.

def _format_of(x: torch.Tensor):
    if x.is_contiguous():
        return torch.contiguous_format
    if x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    # A channel slice of a channels_last tensor (a node state taken from a cell output)
    # keeps channels innermost: copy it once into channels_last, where the convs run, rather
    # than every op output into NCHW.
    if x.dim() == 4 and x.stride(1) == 1 and x.shape[1] > 1:
        return torch.channels_last
    return torch.contiguous_format


def _as(t: torch.Tensor, fmt) -> torch.Tensor:
    return t if t.is_contiguous(memory_format=fmt) else t.contiguous(memory_format=fmt)


def _vec(t: Optional[torch.Tensor], dtype) -> Optional[torch.Tensor]:
    return None if t is None else t.detach().to(dtype).contiguous()


@dataclass
class TailStats:
    mean: torch.Tensor
    rstd: torch.Tensor
    batch: bool          # normalised with batch statistics (train mode or untracked)


def _split_by_dtype(terms: list) -> list[list]:
    """`terms` (tuples whose second item is an op output z) as runs of one dtype each, for
    the edge kernels, which take one dtype per call: `[terms]` itself in the common case.
    (Under autocast an identity's fp32 input can meet bf16 conv outputs.)"""
    if terms:
        dtype = terms[0][1].dtype
        for t in terms:
            if t[1].dtype != dtype:
                groups: dict = {}
                for u in terms:
                    groups.setdefault(u[1].dtype, []).append(u)
                return list(groups.values())
    return [terms]


_NO_UPDATE = (None, None, None, 0.0)  # (running_mean, running_var, num_batches_tracked, momentum)


def _tails_stats(be, pending: list, stats: list, acc) -> None:
    """Writes stats[k] for each BN tail in `pending` [(plan, z_k)]: the statistics it
    normalises with, those of the batch reduced for all of them in one kernel call. Running
    statistics are updated like nn.BatchNorm2d (not while a recompute has frozen them:
    `track_running_stats` is then off). (Lists are built by comprehensions: this runs for
    every edge, and at search sizes its Python is the step's host time.)"""
    parts = _split_by_dtype(pending)
    if len(parts) > 1:
        for part in parts:
            _tails_stats(be, part, stats, acc)
        return
    batch, by_hand = [], []
    for p, z in pending:
        bn = p.tail
        # Buffers read from the dict: a module attribute lookup per buffer costs more host
        # time than a kernel call at search sizes.
        buffers = bn._buffers
        rm = buffers.get("running_mean")
        if not (bn.training or rm is None):
            rv = buffers["running_var"]
            stats[p.index] = TailStats(rm.to(acc), torch.rsqrt(rv.to(acc) + bn.eps), False)
            continue
        update = _NO_UPDATE
        if bn.track_running_stats and rm is not None:
            rv, nbt = buffers["running_var"], buffers.get("num_batches_tracked")
            if bn.momentum is not None and _kernel_buffers(rm, rv, nbt, acc):
                update = (rm, rv, nbt, bn.momentum)  # the kernel does it in the same pass
            else:
                by_hand.append((len(batch), bn, (rm, rv, nbt)))  # the reference, after it
        batch.append((p, z, bn.eps, update))
    if not batch:
        return
    means, variances, rstds = be.bn_stats_edge(
        [b[1] for b in batch], [b[2] for b in batch], [b[3][0] for b in batch],
        [b[3][1] for b in batch], [b[3][2] for b in batch], [b[3][3] for b in batch])
    for b, m, r in zip(batch, means, rstds):
        stats[b[0].index] = TailStats(m, r, True)
    for j, bn, buffers in by_hand:
        z = batch[j][1]
        running_stats_update_ref(*buffers, means[j], variances[j], z.numel() // z.shape[1],
                                 bn.momentum)


def _kernel_buffers(rm, rv, nbt, acc) -> bool:
    """The BN's running buffers can be updated by the stats kernel (accumulation dtype,
    contiguous, an int64 counter)."""
    return (rm.dtype == acc and rv.dtype == acc and rm.is_contiguous() and rv.is_contiguous()
            and nbt is not None and nbt.dtype == torch.int64 and nbt.numel() == 1)


def _affines(plans, acc, any_affine: bool = True) -> tuple[list, list]:
    """([gamma_k], [beta_k]) of the plans' tails (None without an affine tail);
    `any_affine=False`: the edge has none (the search spaces' BNs are affine-free)."""
    if not any_affine:
        none = [None] * len(plans)
        return none, none
    return ([_vec(p.tail.weight, acc) if p.tail is not None and p.tail.affine else None
             for p in plans],
            [_vec(p.tail.bias, acc) if p.tail is not None and p.tail.affine else None
             for p in plans])


def _static_layout(owner: nn.Module):
    """(plans, active plans, share the leading ReLU, draws random numbers, (segmented
    bodies, their parameters), has an affine tail) of an edge, cached with its plans: worked
    out once, not on every call."""
    plans = plans_of(owner)
    skipped = owner.__dict__.get("skipped_ops", ())
    cached = owner.__dict__.get("_fastdarts_layout")
    if cached is None or cached[0] is not plans or cached[1] != skipped:
        active = [p for p in plans if p.kind != "zero" and p.index not in skipped]
        inside = tuple(p for p in active if p.kind == "body" and p.segments is not None)
        inside_params = tuple(q for p in inside for q in p.segment_params)
        layout = (plans, active, any(p.relu_first for p in active),
                  any(p.uses_rng for p in active), (inside, inside_params),
                  any(p.tail is not None and p.tail.affine for p in active))
        cached = owner.__dict__["_fastdarts_layout"] = (plans, skipped, layout)
    return cached[2]


class _Edge:
    """Per-call context: the plans, the backend, layout and dtypes of one edge."""

    def __init__(self, owner: nn.Module, x: torch.Tensor, backend: Optional[str]):
        (self.plans, self.active, self.share_relu, self.uses_rng, self.inside,
         self.any_affine) = _static_layout(owner)
        self.K = len(self.plans)
        self.fmt = _format_of(x)
        self.acc = acc_dtype(x.dtype)
        self.be = select_backend(x, backend=backend)
        self.owner = owner

    def body_output(self, p: OpPlan, x, r):
        """z_k with its graph (`r`: relu(x) shared by the relu-first bodies, or None)."""
        z = p.rest(r) if (p.relu_first and r is not None) else p.body(x)
        return _as(z, self.fmt)

    def accumulate(self, acc_buf, terms, w, stats, init: bool = True) -> None:
        """acc_buf (=|+=) sum_k w_k * tail_k(z_k) over `terms` [(plan, z_k)], in one kernel
        call (one per dtype)."""
        parts = _split_by_dtype(terms)
        if len(parts) > 1:
            for n, part in enumerate(parts):
                self.accumulate(acc_buf, part, w, stats, init and n == 0)
            return
        plans = [t[0] for t in terms]
        sts = [stats[p.index] for p in plans]
        gammas, betas = _affines(plans, self.acc, self.any_affine)
        self.be.bn_accumulate_edge(
            acc_buf, [t[1] for t in terms], w, [p.index for p in plans],
            [None if st is None else st.mean for st in sts],
            [None if st is None else st.rstd for st in sts], gammas, betas, init)

    def finish(self, acc_buf, x, out_dtype):
        if acc_buf is None:  # every op is `none`: the original returns zeros of its shape
            zero = next(p for p in self.plans if p.kind == "zero")
            return zero.module(x.detach())
        return as_dtype(acc_buf, out_dtype)

    def new_weight_grads(self, x, needed: bool) -> Optional[torch.Tensor]:
        """The (K,) buffer the backward kernels write each dw_k into (skipped ops keep 0)."""
        return torch.zeros(self.K, device=x.device, dtype=self.acc) if needed else None

    def tails_backward(self, g, terms, w, dW: Optional[torch.Tensor]) -> dict:
        """Backward of the tails and the weighted sum for `terms` [(plan, z_k, tail
        statistics or None, need_dz)], given g = dL/dout: -> {k: (dz_k or None, dgamma_k,
        dbeta_k)}; writes each dW[k]. One reduction and one input-gradient kernel call for
        all of them (per dtype)."""
        parts = _split_by_dtype(terms)
        if len(parts) > 1:
            out = {}
            for part in parts:
                out.update(self.tails_backward(g, part, w, dW))
            return out
        if not terms:
            return {}
        plans, zs, sts, needs = zip(*terms)  # (tuples: the edge kernels take any sequence)
        ks = [p.index for p in plans]
        means = [None if st is None else st.mean for st in sts]
        rstds = [None if st is None else st.rstd for st in sts]
        batch = [st is not None and st.batch for st in sts]
        gammas, betas = _affines(plans, self.acc, self.any_affine)
        gz = as_dtype(g, zs[0].dtype)
        sum_g, sum_gx = self.be.bn_grad_reduce_edge(gz, zs, means, rstds, gammas, betas, dW, ks)
        # Input gradients of the ops that need them: usually the first m, since callers list
        # an identity (reduced only for its dW) last; else picked out.
        m = needs.index(False) if False in needs else len(needs)
        dzs = [None] * len(terms)
        if not any(needs[m:]):
            if m:
                dzs[:m] = self.be.bn_grad_input_edge(gz, zs[:m], w, ks[:m], means[:m],
                                                     rstds[:m], gammas[:m], sum_g[:m],
                                                     sum_gx[:m], batch[:m])
        else:
            pick = [j for j, n in enumerate(needs) if n]

            def sub(values):
                return [values[j] for j in pick]
            got = self.be.bn_grad_input_edge(gz, sub(zs), w, sub(ks), sub(means), sub(rstds),
                                             sub(gammas), sub(sum_g), sub(sum_gx), sub(batch))
            for j, dz in zip(pick, got):
                dzs[j] = dz
        out = {}
        for j, k in enumerate(ks):
            dgamma = dbeta = None
            if betas[j] is not None:
                dgamma, dbeta = w[k] * sum_gx[j], w[k] * sum_g[j]
            out[k] = (dzs[j], dgamma, dbeta)
        return out

    def op_backward(self, g, z, w, p: OpPlan, stats: Optional[TailStats], need_dz: bool,
                    dW: Optional[torch.Tensor]):
        """`tails_backward` of one op: -> (dz or None, dgamma, dbeta)."""
        return self.tails_backward(g, [(p, z, stats, need_dz)], w, dW)[p.index]


def _check_inputs(owner, x, weights):
    def fail(message):  # the message is built only on failure: this runs for every edge
        raise ValueError(f"{type(owner).__name__}.forward: {message}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or not x.is_floating_point():
        fail(f"argument 'x' must be a 4-D floating tensor (N, C, H, W); got "
             f"{getattr(x, 'shape', type(x))} {getattr(x, 'dtype', '')}")
    K = len(owner._ops)
    if not isinstance(weights, torch.Tensor) or weights.shape != (K,):
        fail(f"argument 'weights' must be a 1-D tensor of {K} mixing weights (one per op); "
             f"got {getattr(weights, 'shape', type(weights))}")
    if not weights.is_floating_point():
        fail(f"argument 'weights' must be floating point; got {weights.dtype}")


def _weights_acc(weights, x, acc):
    w = weights.detach()
    if w.dtype != acc or w.device != x.device:  # (a no-op `.to` is still a dispatcher call)
        w = w.to(device=x.device, dtype=acc, non_blocking=True)
    return w if w.is_contiguous() else w.contiguous()


def _reusable(st: Optional[TailStats], bn: _BatchNorm) -> bool:
    """Statistics recorded in a block's first pass still apply: batch statistics, and the BN
    still normalises with batch statistics (a recompute has frozen its running ones)."""
    return st is not None and st.batch and (bn.training or bn.running_mean is None)


def _accumulate_edge(edge: _Edge, x, w_acc, z_of: Callable, known=None, values=True):
    """`sum_k w_k * tail_k(z_k)`, `z_of(plan)` giving each body output; the statistics of
    all tails, then the sum, each in one kernel call. `known`: per-op statistics from the
    first pass of a recomputed block, used instead of reducing z_k again. `values=False`:
    the output's value will never be read (see `fastdarts.recompute.values_unread`): only
    the statistics are formed and the output is left unwritten. -> (out, tail statistics
    per op)."""
    terms = [(p, x if p.kind == "identity" else z_of(p)) for p in edge.active]
    stats: list = [None] * edge.K
    pending = []
    out_dtype = x.dtype
    for p, z in terms:
        if z.dtype != out_dtype:  # (a dispatcher call each time otherwise)
            out_dtype = torch.promote_types(out_dtype, z.dtype)
        if p.tail is not None:
            st = known[p.index] if known is not None else None
            if st is not None and _reusable(st, p.tail):
                stats[p.index] = st
            else:
                pending.append((p, z))
    if pending:
        _tails_stats(edge.be, pending, stats, edge.acc)
    if not terms:  # every op is `none`
        return edge.finish(None, x, out_dtype), stats
    shape = terms[0][1].shape
    if not values:
        return torch.empty(shape, device=x.device, dtype=out_dtype,
                           memory_format=edge.fmt), stats
    acc_buf = torch.empty(shape, device=x.device, dtype=edge.acc, memory_format=edge.fmt)
    edge.accumulate(acc_buf, terms, w_acc, stats)
    return edge.finish(acc_buf, x, out_dtype), stats


def _forward_nograd(edge: _Edge, x, w_acc):
    """Run the edge without a graph. Its body outputs live until the sum is formed (the edge
    kernels read them in one call each), and are dropped then."""
    x = _as(x, edge.fmt)
    r = F.relu(x) if edge.share_relu else None
    return _accumulate_edge(edge, x, w_acc, lambda p: edge.body_output(p, x, r))


def _identity_backward(edge: _Edge, g, x, w_acc, p: OpPlan, need_x: bool, dW):
    """-> the term `w_k * g` of dx (or None) of an identity op; writes dW[k]."""
    if dW is not None:
        edge.op_backward(g, x, w_acc, p, None, False, dW)
    if not need_x:
        return None
    return g * as_dtype(w_acc[p.index], g.dtype)


def _add(a, b):
    return b if a is None else (a if b is None else a + b)


def _as_weights_grad(dW, weights):
    if dW is None or (dW.dtype == weights.dtype and dW.device == weights.device):
        return dW
    return dW.to(device=weights.device, dtype=weights.dtype)


def _op_params(p: OpPlan) -> list[nn.Parameter]:
    return [q for q in p.params if q.requires_grad]


def _body_params(p: OpPlan) -> list[nn.Parameter]:
    """The op's trainable parameters outside its folded tail (those get grads from it)."""
    return [q for q in p.body_params if q.requires_grad]


# --------------------------------------------------------------------------------------
# memory="fast": one Function per edge folds the tails and the sum, and runs the segmented
# bodies itself; other bodies keep their graph and come in as their outputs.

@dataclass(frozen=True)
class _FusedCall:
    """How `_FusedEdgeFunction` runs: `inside`, the segmented bodies it runs itself, with
    `n_inside_params` parameters; `n_given` body outputs computed outside; `known` tail
    statistics of a recomputed block's first pass; `values`, whether the output is read."""
    inside: tuple
    n_inside_params: int
    n_given: int
    known: Optional[list] = None
    values: bool = True


_TENSORS = 4  # index of the first of `*tensors` among `_FusedEdgeFunction.forward`'s inputs


class _FusedEdgeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edge: _Edge, call: _FusedCall, x, weights, *tensors):
        # tensors: the outputs of the bodies run outside (in edge.active order), the
        # parameters of the `inside` bodies' segments, the tails' affine parameters.
        inside = call.inside
        given = iter(tensors[:call.n_given])
        r = F.relu(x) if any(p.relu_first for p in inside) else None  # shared by them
        zs, kept = {}, []
        for p in inside:
            z, k = segments_forward(p.segments, x, r if p.relu_first else None)
            zs[p.index] = _as(z, edge.fmt)
            kept.append(k)
        del r
        ordered = [zs[p.index] if p.index in zs else next(given)
                   for p in edge.active if p.kind == "body"]
        w_acc = _weights_acc(weights, x, edge.acc)
        zi = iter(ordered)
        out, stats = _accumulate_edge(edge, x, w_acc, lambda p: next(zi), call.known,
                                      call.values)
        ctx.edge, ctx.stats, ctx.call = edge, stats, call
        ctx.n_kept = [len(k) for k in kept]
        ctx.autocast = AutocastState(x.device.type)
        ctx.save_for_backward(x, weights, w_acc, *ordered, *(t for k in kept for t in k))
        return out

    @staticmethod
    def backward(ctx, g):
        edge, stats, call = ctx.edge, ctx.stats, ctx.call
        inside = call.inside
        x, weights, w_acc, *rest = ctx.saved_tensors
        n_bodies = len(rest) - sum(ctx.n_kept)
        zs, flat_kept = rest[:n_bodies], iter(rest[n_bodies:])
        kept = {p.index: [next(flat_kept) for _ in range(n)]
                for p, n in zip(inside, ctx.n_kept)}
        needs = ctx.needs_input_grad
        need_x = needs[2]
        first = _TENSORS + call.n_given
        need_given = iter(needs[_TENSORS:first])
        need_params = needs[first:first + call.n_inside_params]
        g = _as(g, edge.fmt)
        dx = dr = r = None
        d_given, d_inside, daff = [], [], []
        dW = edge.new_weight_grads(x, needs[3])
        # Which z_k need a gradient, then every tail's backward in one batched call (the
        # identity last: tails_backward then passes the ops needing dz as a prefix).
        terms, identities, need_ps = [], [], {}
        zi = iter(zs)
        offset = 0
        for p in edge.active:
            if p.kind == "identity":
                if dW is not None:  # its reduction gives dW[k]; dx gets w_k * g below
                    identities.append((p, x, None, False))
                continue
            if p.index in kept:
                n = len(p.segment_params)
                need_p = need_ps[p.index] = need_params[offset:offset + n]
                offset += n
                need_dz = need_x or any(need_p)
            else:
                need_dz = next(need_given)
            terms.append((p, next(zi), stats[p.index], need_dz))
        results = edge.tails_backward(g, terms + identities, w_acc, dW)
        for p in edge.active:
            if p.kind == "identity":
                dx = _add(dx, _identity_backward(edge, g, x, w_acc, p, need_x, None))
                continue
            dz, dgamma, dbeta = results[p.index]
            if p.index in kept:
                need_p = need_ps[p.index]
                if p.relu_first and r is None:
                    r = F.relu(x)
                grads = [None] * len(need_p)
                if dz is not None:
                    d_x, d_r, grads = segments_backward(p.segments, x, kept[p.index], dz,
                                                        need_x, need_p, ctx.autocast,
                                                        r if p.relu_first else None)
                    dx, dr = _add(dx, d_x), _add(dr, d_r)
                d_inside += grads
            else:
                d_given.append(dz)
            if p.tail is not None and p.tail.affine:
                daff += [dgamma.to(p.tail.weight.dtype), dbeta.to(p.tail.bias.dtype)]
        if dr is not None:  # the shared ReLU, backpropagated once for all the ops that read it
            dx = _add(dx, torch.ops.aten.threshold_backward(dr, r, 0))
        return (None, None, dx, _as_weights_grad(dW, weights), *d_given, *d_inside, *daff)


def _forward_fast(edge: _Edge, x, weights, segmented: bool = True, known=None,
                  values: bool = True):
    """`segmented=False` (inside a recompute, which keeps little anyway): every body keeps
    its graph, which avoids recomputing the segments a second time. `known`: the tail
    statistics of the recomputed block's first pass; `values`: whether the output's value
    is read (`_accumulate_edge`)."""
    x = _as(x, edge.fmt)
    inside, inside_params = edge.inside if segmented else ((), ())
    outside = [p for p in edge.active
               if p.kind == "body" and not (segmented and p.segments is not None)]
    # The shared ReLU keeps a graph only for relu-first bodies run outside (FactorizedReduce,
    # or every conv body in a recompute).
    r = F.relu(x) if any(p.relu_first for p in outside) else None
    given = [edge.body_output(p, x, r) for p in outside]
    affine = []
    for p in edge.active:
        if p.kind == "body" and p.tail is not None and p.tail.affine:
            affine += [p.tail.weight, p.tail.bias]
    call = _FusedCall(inside, len(inside_params), len(given), known, values)
    return _FusedEdgeFunction.apply(edge, call, x, weights, *given, *inside_params, *affine)


# --------------------------------------------------------------------------------------
# memory="low" at the edge level: keep x, the weights and the statistics; recompute.

class _LowMemoryEdgeFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, edge: _Edge, x, weights, *params):
        w_acc = _weights_acc(weights, x, edge.acc)
        ctx.rng = RngState.capture(x.device) if edge.uses_rng else None
        ctx.autocast = AutocastState(x.device.type)
        out, stats = _forward_nograd(edge, x, w_acc)
        ctx.edge, ctx.stats = edge, stats
        ctx.save_for_backward(x, weights, w_acc)
        return out

    @staticmethod
    def backward(ctx, g):
        edge, stats = ctx.edge, ctx.stats
        x, weights, w_acc = ctx.saved_tensors
        x = _as(x, edge.fmt)
        g = _as(g, edge.fmt)
        params = [q for p in edge.active for q in _op_params(p)]
        grads = {id(q): None for q in params}
        need_x = ctx.needs_input_grad[1]
        dW = edge.new_weight_grads(x, ctx.needs_input_grad[2])
        dx = dr = None
        with torch.enable_grad(), frozen_bn_stats(edge.owner), RngState.restored(ctx.rng), \
                ctx.autocast():
            xd = x.detach().requires_grad_(need_x)
            r = F.relu(xd) if edge.share_relu else None
            for p in edge.active:
                if p.kind == "identity":
                    dx = _add(dx, _identity_backward(edge, g, x, w_acc, p, need_x, dW))
                    continue
                z = edge.body_output(p, xd, r)
                dz, dgamma, dbeta = edge.op_backward(g, z.detach(), w_acc, p, stats[p.index],
                                                     True, dW)
                src = r if (p.relu_first and edge.share_relu) else xd
                body_params = _body_params(p)
                inputs = ([src] if src.requires_grad else []) + body_params
                if inputs and z.requires_grad:
                    got = torch.autograd.grad(z, inputs, dz, allow_unused=True)
                    if src.requires_grad:
                        d_src, got = got[0], got[1:]
                        if src is r:
                            dr = _add(dr, d_src)
                        else:
                            dx = _add(dx, d_src)
                    for q, gq in zip(body_params, got):
                        grads[id(q)] = _add(grads[id(q)], gq)
                if p.tail is not None and p.tail.affine:
                    for q, gq in ((p.tail.weight, dgamma), (p.tail.bias, dbeta)):
                        if q.requires_grad:
                            grads[id(q)] = gq.to(q.dtype)
                del z, dz
            if dr is not None:
                (d_relu,) = torch.autograd.grad(r, xd, dr)
                dx = d_relu if dx is None else dx + d_relu
        return (None, dx, _as_weights_grad(dW, weights), *[grads[id(q)] for q in params])


def mixed_forward(owner: nn.Module, x: torch.Tensor, weights: torch.Tensor,
                  memory: str = "low", backend: Optional[str] = None) -> torch.Tensor:
    """The fused forward of any module with an `_ops` ModuleList (ours or patched)."""
    if memory == "reference":
        skipped = owner.__dict__.get("skipped_ops", ())
        return sum(w * op(x) for k, (w, op) in enumerate(zip(weights, owner._ops))
                   if k not in skipped)
    _check_inputs(owner, x, weights)
    edge = _Edge(owner, x, backend)
    wants_grad = torch.is_grad_enabled() and (
        x.requires_grad or weights.requires_grad
        or any(q.requires_grad for p in edge.active for q in p.params))
    if not wants_grad:
        with torch.no_grad():
            out, stats = _forward_nograd(edge, x, _weights_acc(weights, x, edge.acc))
        tape = recording_tape()  # the first pass of a recomputed block: keep the statistics
        if tape is not None:
            tape.record(owner, stats)
        return out
    if is_recomputing():
        return _forward_fast(edge, x, weights, segmented=False, known=replayed_stats(owner),
                             values=not values_unread())
    if memory == "fast":
        return _forward_fast(edge, x, weights)
    if memory == "low":
        params = [q for p in edge.active for q in _op_params(p)]
        return _LowMemoryEdgeFunction.apply(edge, x, weights, *params)
    raise ValueError(f"memory must be one of {list(MEMORY_MODES)}; got {memory!r}")


# --------------------------------------------------------------------------------------
# Modules.

def check_memory(memory: str) -> str:
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {list(MEMORY_MODES)}; got {memory!r}")
    return memory


class FusedMixedOp(nn.Module):
    """An edge over an `_ops` ModuleList, run by the fused kernels in `memory` mode."""

    def __init__(self, ops: nn.ModuleList, memory: str = "low", backend: Optional[str] = None):
        super().__init__()
        self._ops = ops
        self.memory = check_memory(memory)
        self.backend = backend

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return mixed_forward(self, x, weights, self.memory, self.backend)

    def skip_ops(self, indices) -> None:
        """Leave ops `indices` out of the sum from now on (DrNAS's pruned ops, whose mixing
        weights are exactly 0). A host-side list set once per pruning, so skipping costs no
        per-step test of the weights and no host synchronisation; `()` restores them all."""
        indices = frozenset(int(k) for k in indices)
        if any(not 0 <= k < len(self._ops) for k in indices):
            raise ValueError(f"indices: op indices must lie in [0, {len(self._ops)}); got "
                             f"{sorted(indices)}")
        if len(indices) == len(self._ops):
            raise ValueError("indices: at least one op of an edge must stay")
        self.__dict__["skipped_ops"] = indices

    def fusion_report(self) -> list[str]:
        """One line per op: how the fused edge runs it."""
        out = []
        for p in plans_of(self):
            how = {"zero": "skipped", "identity": "w * x"}.get(p.kind)
            if how is None:
                how = ("body + folded " + type(p.tail).__name__ if p.tail is not None
                       else "body, no tail") + ("" if p.fused else " (not recognised: run whole)")
            out.append(f"{p.label}: {how}")
        return out


class MixedOp(FusedMixedOp):
    """A DARTS-space edge, `forward(x, weights)` exactly like the original DARTS MixedOp.

    Args:
        C: channels. stride: 1, or 2 on reduction edges.
        primitives: op names (the 8 DARTS ops by default; any of `fastdarts.ops.darts.OPS`).
        memory: ``low`` (default), ``fast`` or ``reference`` (see the module docstring).
        affine: BN affine parameters of the ops, the pools' BN included (False in search,
            True for RF-DARTS).
        backend: kernel backend (None: `FASTDARTS_BACKEND` or auto).
        aux_skip: DARTS-: one more op after the candidates, the auxiliary skip; `weights`
            then has len(primitives) + 1 entries, the last being its beta.

    Pools are followed by an affine-free BatchNorm as in the original, so `state_dict` keys
    are the original's (`_ops.<k>....`).
    """

    def __init__(self, C: int, stride: int, primitives: Optional[Sequence[str]] = None,
                 memory: str = "low", affine: bool = False, backend: Optional[str] = None,
                 aux_skip: bool = False):
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2; got {stride}")
        primitives = tuple(PRIMITIVES if primitives is None else primitives)
        ops = nn.ModuleList()
        for name in primitives:
            if name not in OPS:
                raise ValueError(f"primitives: unknown op {name!r}; known: {sorted(OPS)}")
            op = OPS[name](C, stride, affine)
            if name in POOL_OPS:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=affine))
            ops.append(op)
        if aux_skip:
            # DARTS-'s auxiliary skip: identity, or FactorizedReduce(C, C, affine=False) at
            # stride 2, i.e. the `skip_connect` op without affine BN, appended as the last op
            # so that its weight beta joins the one fused weighted sum.
            ops.append(OPS["skip_connect"](C, stride, False))
        super().__init__(ops, memory, backend)
        self.primitives = primitives
        self.aux_skip = aux_skip
