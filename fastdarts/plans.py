"""How the fused edge runs each candidate op: recognised from the modules, split into a
*body* and a *tail* (its final BatchNorm, folded into the mixed-op kernels), and the body
cut into *segments* that keep only their input for backward.

A segment is a run of cheap modules (ReLU, BatchNorm, pools, depthwise convs) ending in at
most one full convolution. In backward it recomputes the cheap part from its saved input and
backpropagates the final conv without running it again (`aten.convolution_backward` on the
recomputed conv input). So a SepConv keeps two tensors (its middle BN input and its pre-BN
output) instead of five and a DilConv one instead of two, while no full convolution is
ever computed twice. Bodies without a full conv (pools) keep their graph: their recompute
would cost more than the little it saves. Segments are what `memory="fast"` runs, inside
the fused edge's one autograd Function (`segments_forward`, `segments_backward`); `low`'s
replays, which keep nothing past the backward of their block anyway, and the edge-level
`low` backward run the plain modules with their graphs.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import depthwise
from .ops.darts import is_factorized_reduce
from .ops.pointwise import strided_pointwise_conv, subsample, subsamples_first, unsubsample
from .forward_source import single_child_call
from .recompute import AutocastState, frozen_bn_stats, module_uses_rng
from .structure import generation

__all__ = ["OpPlan", "Segment", "as_dtype", "plan_op", "plan_ops", "plans_of", "segments_forward",
           "segments_backward"]


def _call(m: nn.Module) -> Callable:
    """How a plan runs `m`: depthwise convs through `fastdarts.depthwise`, strided 1x1 convs
    through `fastdarts.ops.pointwise` (the CPU's wrong weight gradient), the rest as is."""
    if depthwise.is_depthwise(m):
        return lambda x: depthwise.conv(m, x)
    if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1):
        return lambda x: strided_pointwise_conv(m, x)
    return m


def _chain(mods: Sequence[nn.Module]) -> Callable:
    """The modules one after the other, each as `_call` runs it."""
    steps = tuple(_call(m) for m in mods)

    def run(x):
        for step in steps:
            x = step(x)
        return x
    return run


# --------------------------------------------------------------------------------------
# Segments.

_CHEAP = (nn.ReLU, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.BatchNorm2d)


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups == m.in_channels and m.groups > 1


def _is_plain_conv(m: nn.Module) -> bool:
    """A Conv2d whose backward `aten.convolution_backward` gives exactly (zero padding)."""
    return (isinstance(m, nn.Conv2d) and m.padding_mode == "zeros"
            and not isinstance(m.padding, str))


@dataclass(eq=False)
class Segment:
    """`last(head(x))`, keeping only `x` for backward (see the module docstring).

    head: the cheap modules; last: the final full conv, or None (the segment is all cheap and
    is recomputed whole). relu_first: head starts with the ReLU that the edge computes once
    and shares, so the forward can start from it.
    """
    head_modules: tuple
    last: Optional[nn.Conv2d]
    relu_first: bool
    modules: tuple = field(init=False)
    params: tuple = field(init=False)

    def __post_init__(self):
        self.modules = self.head_modules + (() if self.last is None else (self.last,))
        self.params = tuple(q for m in self.modules for q in m.parameters())
        self.n_head_params = sum(1 for m in self.head_modules for _ in m.parameters())
        self._head = _chain(self.head_modules)
        self._head_after_relu = _chain(self.head_modules[1:])
        # A head of ReLUs, depthwise convs and BatchNorms (every head of the DARTS and
        # NB201 ops) is backpropagated by hand: two aten calls per module instead of a
        # nested autograd pass, whose host cost is what a host-bound GPU step pays for.
        self.simple_head = all(type(m) in (nn.ReLU, nn.BatchNorm2d) or depthwise.is_depthwise(m)
                               for m in self.head_modules)

    def forward_from(self, x, r):
        after_relu = self.relu_first and r is not None
        a = self.head_from(r if after_relu else x, after_relu)
        return a if self.last is None else self.last(a)

    def head_from(self, a, after_relu: bool):
        """The head on `a`; `after_relu`: `a` is relu(input) and the leading ReLU is skipped."""
        return (self._head_after_relu if after_relu else self._head)(a)


def _segments_of(seq: Sequence[nn.Module]) -> Optional[list[Segment]]:
    """Cut a body (its tail removed) after each full conv; None if a module is not one we
    know to be deterministic and cheap, or a conv we cannot backpropagate by hand."""
    segments, head = [], []
    for m in seq:
        if isinstance(m, nn.ReLU) and m.inplace:  # would overwrite the saved input
            return None
        if isinstance(m, _CHEAP) or (_is_depthwise(m) and _is_plain_conv(m)):
            head.append(m)
        elif _is_plain_conv(m):
            segments.append(Segment(tuple(head), m, bool(head) and isinstance(head[0], nn.ReLU)))
            head = []
        else:
            return None
    if not segments:  # no full conv (a pool): recomputing it would save nothing worth it
        return None
    if head:
        segments.append(Segment(tuple(head), None, isinstance(head[0], nn.ReLU)))
    return segments


def segments_forward(segments: Sequence[Segment], x: torch.Tensor,
                     r: Optional[torch.Tensor]) -> tuple[torch.Tensor, list]:
    """A segmented body on `x` without a graph (`r` = relu(x) or None, see
    `Segment.forward_from`) -> (its output, the input of every segment after the first:
    what its backward keeps besides `x`)."""
    kept = []
    a = segments[0].forward_from(x, r)
    for seg in segments[1:]:
        kept.append(a)
        a = seg.forward_from(a, None)
    return a, kept


def segments_backward(segments: Sequence[Segment], x, kept, g, need_x: bool, need_p,
                      autocast: AutocastState, r: Optional[torch.Tensor] = None):
    """Backward of `segments_forward` from the gradient `g` of its output.

    need_p: per parameter of the segments (in order), whether its gradient is wanted.
    r: relu(x), shared by the edge; given when the forward started from it, the first
    segment is backpropagated from `r` (its leading ReLU skipped) and the gradient of `r`
    is returned instead of that of `x`.
    -> (dx or None, dr or None, a gradient or None per parameter)."""
    grads: list = [None] * len(need_p)
    ends = []
    end = 0
    for seg in segments:
        end += len(seg.params)
        ends.append(end)
    d_in = None
    for i in reversed(range(len(segments))):
        seg = segments[i]
        lo = ends[i] - len(seg.params)
        after_relu = i == 0 and r is not None and seg.relu_first
        need_in = need_x if i == 0 else (need_x or any(need_p[:lo]))
        a0 = (r if after_relu else x) if i == 0 else kept[i - 1]
        d_in, grads[lo:ends[i]] = _segment_backward(seg, a0, g, need_in, need_p[lo:ends[i]],
                                                    autocast, after_relu)
        if d_in is None:
            break
        g = d_in
    if r is not None and segments[0].relu_first:
        return None, d_in, grads
    return d_in, None, grads


def _segment_backward(seg: Segment, a0, g, need_in: bool, need_p, autocast: AutocastState,
                      after_relu: bool):
    """One segment: its cheap head recomputed from its input `a0` (`relu(input)` when
    `after_relu`: the head's leading ReLU is then skipped), its final conv backpropagated
    without running it. -> (gradient of a0 or None, a gradient or None per parameter)."""
    modules = seg.head_modules[1:] if after_relu else seg.head_modules
    if (seg.simple_head and not autocast.enabled
            and not any(depthwise.hooked(m) for m in modules)):
        return _simple_head_backward(seg, modules, a0, g, need_in, need_p)
    n_head = seg.n_head_params
    head_params = [q for q, need in zip(seg.params[:n_head], need_p) if need]
    with torch.enable_grad(), frozen_bn_stats(seg.modules), autocast():
        ad = a0.detach().requires_grad_(need_in)
        a = seg.head_from(ad, after_relu)
    grads = [None] * len(seg.params)
    ga = _last_conv_backward(seg, a.detach(), g, need_p, grads)
    inputs = ([ad] if need_in else []) + head_params
    d_in = None
    if inputs and a.requires_grad:
        got = list(torch.autograd.grad(a, inputs, ga, allow_unused=True))
        if need_in:
            d_in = got.pop(0)
        it = iter(got)
        for i in range(n_head):
            if need_p[i]:
                grads[i] = next(it)
    return d_in, grads


def as_dtype(t: Optional[torch.Tensor], dtype) -> Optional[torch.Tensor]:
    """`t.to(dtype)`, but only when it changes something: a no-op `.to` is still a
    dispatcher call, and the fused paths cast per op of every edge (None passes through)."""
    return t if t is None or t.dtype == dtype else t.to(dtype)


def _last_conv_backward(seg: Segment, a_in, g, need_p, grads):
    """Backpropagate the segment's final full conv (if any) from its recomputed input `a_in`
    without running it: its parameter gradients go into `grads`; -> gradient of `a_in`."""
    if seg.last is None:
        return g
    conv, n_head = seg.last, seg.n_head_params
    has_bias = conv.bias is not None
    x, stride, padding = a_in, conv.stride, conv.padding
    cut = subsamples_first(a_in, conv.weight, stride, padding, need_p[n_head])
    if cut:  # oneDNN's strided 1x1 weight gradient (fastdarts.ops.pointwise)
        x, stride = subsample(a_in, stride), (1, 1)
    ga, gw, gb = torch.ops.aten.convolution_backward(
        as_dtype(g, a_in.dtype), x, as_dtype(conv.weight, a_in.dtype).detach(),
        [conv.out_channels] if has_bias else None, stride, padding, conv.dilation,
        False, [0, 0], conv.groups, [True, need_p[n_head], has_bias and need_p[n_head + 1]])
    if cut:
        ga = unsubsample(ga, a_in, conv.stride)
    grads[n_head] = as_dtype(gw, conv.weight.dtype)
    if has_bias and gb is not None:
        grads[n_head + 1] = as_dtype(gb, conv.bias.dtype)
    return ga


def _bn_train(m: nn.BatchNorm2d) -> bool:
    return m.training or m.running_mean is None


def _simple_head_backward(seg: Segment, modules, a0, g, need_in: bool, need_p):
    """`_segment_backward` for a head of ReLUs, depthwise convs and BatchNorms: recomputed
    without a graph, keeping what each module's backward reads, and backpropagated with
    the aten ops autograd would run (ReLU: `threshold_backward` on its output; BN: its batch
    statistics, running ones left alone as in any recompute)."""
    acts, saved = [a0.detach()], [None] * len(modules)
    # (an empty head, a ReLU-Conv after the edge's shared ReLU, goes straight to the conv)
    with torch.no_grad() if modules else contextlib.nullcontext():
        for i, m in enumerate(modules):
            a = acts[-1]
            if type(m) is nn.ReLU:
                a = torch.relu(a)
            elif type(m) is nn.BatchNorm2d:
                train = _bn_train(m)
                a, mean, invstd = torch.ops.aten.native_batch_norm(
                    a, m.weight, m.bias, None if train else m.running_mean,
                    None if train else m.running_var, train, 0.0, m.eps)
                saved[i] = (mean, invstd, train)
            else:
                a = F.conv2d(a, m.weight, None, m.stride, m.padding, m.dilation, m.groups)
            acts.append(a)
    grads = [None] * len(seg.params)
    ga = _last_conv_backward(seg, acts[-1], g, need_p, grads)
    index = seg.n_head_params  # one past the parameter slots of the module being handled
    for i in reversed(range(len(modules))):
        m = modules[i]
        need = i > 0 or need_in
        if type(m) is nn.ReLU:
            ga = torch.ops.aten.threshold_backward(ga, acts[i + 1], 0) if need else None
        elif type(m) is nn.BatchNorm2d:
            mean, invstd, train = saved[i]
            n_p = 2 if m.weight is not None else 0
            index -= n_p
            need_w = n_p > 0 and need_p[index]
            need_b = n_p > 0 and need_p[index + 1]
            if need or need_w or need_b:
                ga, gw, gb = torch.ops.aten.native_batch_norm_backward(
                    ga, acts[i], m.weight, None if train else m.running_mean,
                    None if train else m.running_var, mean, invstd, train, m.eps,
                    [need, need_w, need_b])
                if n_p:
                    grads[index], grads[index + 1] = gw, gb
            else:
                ga = None
        else:
            index -= 1
            ga, gw = depthwise.backward(ga, acts[i], m.weight, m.stride, m.padding,
                                        m.dilation, need, need_p[index])
            grads[index] = gw
        if ga is None:
            break
    return (ga if need_in else None), grads


# --------------------------------------------------------------------------------------
# Plans.

@dataclass
class OpPlan:
    """How the fused edge runs op `index` of an `_ops` list.

    kind: ``zero`` (skipped), ``identity`` (`w * x`), ``body`` (`tail(body(x))`).
    relu_first: the body starts with a ReLU that the edge computes once and shares;
    `rest` then maps `relu(x)` to `z`. tail: the op's final BatchNorm or None.
    segments: the body cut into segments (None: it keeps its autograd graph).
    fused: False for an op we did not recognise, which runs whole as its own body.
    """
    index: int
    kind: str
    module: nn.Module
    body: Optional[Callable] = None
    rest: Optional[Callable] = None
    relu_first: bool = False
    tail: Optional[_BatchNorm] = None
    segments: Optional[list] = None
    uses_rng: bool = False
    fused: bool = True
    label: str = ""
    params: tuple = field(init=False, default=())
    body_params: tuple = field(init=False, default=())
    segment_params: tuple = field(init=False, default=())

    def __post_init__(self):
        # Listed once: walking the module tree on every call costs more than the kernels.
        self.params = tuple(self.module.parameters())
        tail = set() if self.tail is None else {id(q) for q in self.tail.parameters()}
        self.body_params = tuple(q for q in self.params if id(q) not in tail)
        # The segments' parameters in segment order, as `segments_backward` returns them.
        self.segment_params = tuple(q for seg in self.segments or () for q in seg.params)


def _factorized_reduce_body(m: nn.Module) -> Callable:
    """DARTS FactorizedReduce (ours or a user's, matched by structure) without its ReLU and
    BN: maps relu(x) to the concat."""
    def rest(r):
        if r.shape[-1] % 2 or r.shape[-2] % 2:
            raise ValueError(
                f"FactorizedReduce needs an even spatial size; got {tuple(r.shape[-2:])}")
        return torch.cat([strided_pointwise_conv(m.conv_1, r),
                          strided_pointwise_conv(m.conv_2, r[:, :, 1:, 1:])], dim=1)
    return rest


def _sequence_plan(index, module, seq: Sequence[nn.Module], label) -> OpPlan:
    seq = list(seq)
    tail = seq.pop() if seq and isinstance(seq[-1], nn.BatchNorm2d) else None
    relu_first = bool(seq) and isinstance(seq[0], nn.ReLU)
    uses_rng = module_uses_rng(module)
    return OpPlan(index, "body", module, body=_chain(seq),
                  rest=_chain(seq[1:]) if relu_first else None, relu_first=relu_first,
                  tail=tail, segments=None if uses_rng else _segments_of(seq),
                  uses_rng=uses_rng, label=label)


@functools.lru_cache(maxsize=None)
def _forwards_to(cls: type, child: str) -> bool:
    """`cls.forward` is `return self.<child>(x)`, read once per class."""
    return single_child_call(cls.forward) == child


def plan_op(index: int, module: nn.Module) -> OpPlan:
    """Recognise one candidate op (see the module docstring)."""
    name = type(module).__name__
    label = f"_ops.{index} ({name})"
    if name == "Zero":
        return OpPlan(index, "zero", module, label=label)
    if isinstance(module, nn.Identity) or name == "Identity":
        return OpPlan(index, "identity", module, label=label)
    if isinstance(module, nn.Sequential):
        return _sequence_plan(index, module, list(module), label)
    children = dict(module.named_children())
    # ReLUConvBN / DilConv / SepConv, DrNAS's AvgPoolBN / MaxPoolBN: a wrapper of one
    # nn.Sequential whose forward is `return self.op(x)` (read from its source).
    if (set(children) == {"op"} and isinstance(children["op"], nn.Sequential)
            and (name in ("ReLUConvBN", "DilConv", "SepConv")
                 or _forwards_to(type(module), "op"))):
        return _sequence_plan(index, module, list(children["op"]), label)
    # DARTS FactorizedReduce: relu, conv_1, conv_2, bn.
    if is_factorized_reduce(module):
        rest = _factorized_reduce_body(module)
        return OpPlan(index, "body", module, body=lambda x: rest(F.relu(x)), rest=rest,
                      relu_first=True, tail=module.bn, label=label)
    # Anything else runs whole (no tail folded), still inside the fused sum and recompute.
    return OpPlan(index, "body", module, body=module, uses_rng=module_uses_rng(module),
                  fused=False, label=label)


def plan_ops(ops: nn.ModuleList) -> list[OpPlan]:
    return [plan_op(k, m) for k, m in enumerate(ops)]


def plans_of(owner: nn.Module) -> list[OpPlan]:
    """Cached plans of `owner._ops`, rebuilt when a module tree was edited (the generation of
    `fastdarts.structure`) or the op modules were swapped (replicas). A parameter reshaped in
    place (`.data =`) keeps its object, and the plans read every module attribute on each
    call, so they follow it."""
    ops = owner._modules.get("_ops")
    if ops is None:  # not a registered child (a plain attribute): the slow lookup
        ops = owner._ops
    key = (generation(), tuple(map(id, ops._modules.values())))
    cached = owner.__dict__.get("_fastdarts_plans")
    if cached is None or cached[0] != key:
        cached = (key, plan_ops(ops))
        owner.__dict__["_fastdarts_plans"] = cached
    return cached[1]
