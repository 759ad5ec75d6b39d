"""`fastdarts.patch(model)`: run an existing DARTS-style model through the fused kernels.

What it converts, in place:

* every DARTS-style mixed op: a module with an `_ops` ModuleList whose `forward(x, weights)`
  returns `sum(w * op(x) for w, op in zip(weights, self._ops))`, and every PC-DARTS-style one
  (an `mp` or an int `k`: the ops see the first C/K channels, the rest are bypassed and the
  result channel-shuffled; K from `k`, else from the ops' width), whose bypass and shuffle
  then run in the partial-channel combine kernel. Its forward is replaced on
  the instance by the fused one (`fastdarts.mixed.mixed_forward`); the ops are recognised
  from the modules (`fastdarts.plans.plan_op`), ops it cannot fuse run whole;
* with `memory="low"`, every DARTS-style cell (a module with `preprocess0`, `preprocess1` and
  an `_ops` list of mixed ops): it keeps only its inputs for backward and is recomputed
  (`fastdarts.recompute`), BN statistics updated once and random ops replayed.

No module, parameter or buffer is replaced: `state_dict` keys and checkpoints load as before.
The one change of class: an `nn.AvgPool2d` inside a converted mixed op becomes
`fastdarts.ops.pooling.AvgPool2d` (same arguments, no state), whose CUDA backward is right
for channels_last inputs (PyTorch's is not: see that module).
The first forward of each patched mixed op also runs the original forward (statistics frozen,
same random numbers) and compares; an op whose outputs differ is switched back to its original
forward and reported by name, never silently wrong. `unpatch(model)` undoes everything.

What a patched model follows while the user's code changes it between steps:
* the mixed op's forward is read first (`fastdarts.forward_source`): one that reads state the
  fused forward would not follow (an attribute of `self` other than `_ops`, `k`, `mp`, or a
  global object) keeps its own forward, and the report says what it reads; DARTS-'s
  auxiliary term `+ self.aux(x) * beta` is followed, beta evaluated from the user's
  expression on every call;
* parameters, buffers or modules replaced anywhere in the tree (DrNAS's Net2Wider, a swapped
  op, `load_state_dict(assign=True)`): every cache rebuilds (`fastdarts.structure`);
* K read from `self.k` on every call (DrNAS's `wider(k)`);
* ops whose mixing weight is exactly zero (DrNAS's pruned ops) are skipped as the original
  skips them, with one host read per model edit (`fastdarts.zero_weights`);
* `.to()`, `load_state_dict`, `train()`/`eval()` change tensors in place or flags the fused
  forward reads on every call.
"""
from __future__ import annotations

import inspect
import types
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .forward_source import ForwardReads, read_forward
from .mixed import MEMORY_MODES, FusedMixedOp, _as, _format_of, check_memory, mixed_forward
from .ops.pooling import AvgPool2d
from .partial import partial_combine
from .plans import plans_of
from .recompute import RngState, enable_cell_recompute, frozen_bn_stats, module_uses_rng
from .structure import cached
from .zero_weights import ZeroWeightWatch

__all__ = ["patch", "unpatch", "PatchReport"]


#: the attributes of `self` a mixed op's forward may read and stay fused: the fused forward
#: reads `_ops` and K (`k`, or the ops' width beside a bypass pool `mp`) on every call
FOLLOWED_ATTRIBUTES = frozenset({"_ops", "k", "mp"})


@dataclass
class PatchReport:
    """What `patch` did, per module: mixed ops fused, cells recomputed, ops run whole inside
    a fused edge, mixed ops that keep their own forward and why, extras followed, problems."""
    mixed_ops: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    unfused_ops: list[str] = field(default_factory=list)
    kept_forward: list[str] = field(default_factory=list)
    followed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __str__(self):
        lines = [f"fastdarts.patch: {len(self.mixed_ops)} mixed ops fused, "
                 f"{len(self.kept_forward)} kept their own forward, "
                 f"{len(self.cells)} cells recomputed"]
        lines += [f"  runs whole inside its fused edge: {n}" for n in self.unfused_ops]
        lines += [f"  keeps its own forward: {n}" for n in self.kept_forward]
        lines += [f"  follows: {n}" for n in self.followed]
        lines += [f"  problem: {p}" for p in self.problems]
        return "\n".join(lines)


def _positional_params(fn) -> int:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return -1
    return sum(1 for p in sig.parameters.values()
               if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _is_mixed_op(m: nn.Module) -> bool:
    ops = getattr(m, "_ops", None)
    if not isinstance(ops, nn.ModuleList) or not len(ops):
        return False
    if isinstance(m, FusedMixedOp):
        return True
    # forward(self, x, weights); a cell's forward takes (s0, s1, weights, ...)
    return _positional_params(type(m).forward) == 3 and not hasattr(m, "preprocess0")


def _is_partial_channel(m: nn.Module) -> bool:
    return hasattr(m, "mp") or hasattr(m, "k") and isinstance(getattr(m, "k"), int)


def _is_cell(m: nn.Module) -> bool:
    ops = getattr(m, "_ops", None)
    return (hasattr(m, "preprocess0") and hasattr(m, "preprocess1")
            and isinstance(ops, nn.ModuleList) and len(ops) > 0
            and all(_is_mixed_op(op) for op in ops))


def _partial_width(m: nn.Module) -> int | None:
    """Channels the ops of a partial-channel mixed op are built for (C/K)."""
    for sub in m._ops.modules():
        if isinstance(sub, nn.BatchNorm2d):
            return sub.num_features
        if isinstance(sub, nn.Conv2d):
            return sub.out_channels
    return None


def patched_partial_width(m: nn.Module, name: str) -> int | None:
    """C/K of a patched partial-channel mixed op that `fastdarts.wider` can widen, None for
    any other module; an error for one whose K it cannot set."""
    state = m.__dict__.get("_fastdarts_patch")
    if state is None or not state["partial"]:
        return None
    if not isinstance(getattr(m, "k", None), int):
        raise ValueError(f"wider: {name} ({type(m).__name__}) has no int attribute k to set; "
                         f"its K is fixed by its code")
    return _partial_width(m)


def _fused(self, state, x, weights, memory):
    """The fused forward of a patched mixed op; for a PC-DARTS one, the mixed op on the first
    C/K channels and the partial-channel combine kernel (bypass, shuffle); plus the auxiliary
    term it follows (DARTS-)."""
    if torch.is_tensor(weights):
        skip = state["zeros"].skipped(weights)
        if skip != self.__dict__.get("skipped_ops", frozenset()):
            self.__dict__["skipped_ops"] = skip
    out = _weighted_sum(self, state, x, weights, memory)
    aux = state["aux"]
    if aux is not None:
        names = dict(zip(state["arg_names"][1:], (x, weights)))
        on, beta = aux.value(state["forward"], state["arg_names"][0], self, names)
        if on:
            out = out + getattr(self, aux.module)(x) * beta
    return out


def _weighted_sum(self, state, x, weights, memory):
    if not state["partial"]:
        return mixed_forward(self, x, weights, memory, state["backend"])
    k = getattr(self, "k", None)
    C = x.shape[1]
    # without an int `k`: the ops' width, read again after every edit of the model
    width = (C // k if isinstance(k, int) and k > 0
             else cached(self, "_fastdarts_partial_width", _partial_width))
    if width is None or C % width:
        raise ValueError(f"fastdarts.patch: {state['name']}: cannot tell K from the input's "
                         f"{C} channels and ops of width {width}")
    if width == C:
        return mixed_forward(self, x, weights, memory, state["backend"])
    x = _as(x, _format_of(x))
    mixed = mixed_forward(self, x[:, :width], weights, memory, state["backend"])
    stride = 1 if mixed.shape[2] == x.shape[2] else 2
    return partial_combine([mixed], [x], C // width, [stride], backend=state["backend"])


def _patched_mixed_forward(self, x, weights):
    state = self.__dict__["_fastdarts_patch"]
    if state["verified"] or not torch.is_tensor(x):
        return _fused(self, state, x, weights, state["memory"])
    return _verify_then_forward(self, state, x, weights)


def _verify_then_forward(self, state, x, weights):
    """First call: compare the fused forward with the original on this input."""
    original = type(self).forward
    rng = RngState.capture(x.device) if module_uses_rng(self) else None
    with torch.no_grad(), frozen_bn_stats(self):
        with RngState.restored(rng):
            expected = original(self, x, weights)
        with RngState.restored(rng):
            got = _fused(self, state, x, weights, "low")
    state["verified"] = True
    tol = 1e-3 if x.dtype in (torch.float16, torch.bfloat16) else 1e-4
    same = (expected.shape == got.shape and
            torch.allclose(got.float(), expected.float(), rtol=tol, atol=tol))
    if not same:
        name = state["name"]
        message = (f"fastdarts.patch: {name} ({type(self).__name__}) gives different outputs "
                   f"fused and original; it runs its original forward")
        state["report"].problems.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        del self.forward
        return original(self, x, weights)
    return _fused(self, state, x, weights, state["memory"])


def _unfollowed(m: nn.Module, reads: ForwardReads | None) -> str | None:
    """Why `m`'s forward reads state the fused forward would not follow, or None."""
    if reads is None:
        return None  # no source to read: the first-call check is all there is
    allowed = FOLLOWED_ATTRIBUTES | ({reads.aux.module} | reads.aux.reads if reads.aux else set())
    attrs = sorted(reads.self_attributes - allowed)
    globs = sorted(reads.state_globals - (reads.aux.reads if reads.aux else set()))
    if reads.aux is not None and _is_partial_channel(m):
        return (f"it adds {reads.aux.module}(x) * {reads.aux.beta_text} to a partial-channel "
                f"sum, which the fused edge does not follow")
    if not attrs and not globs:
        return None
    what = [f"self.{a}" for a in attrs] + [f"the global {g}" for g in globs]
    return (f"its forward reads {', '.join(what)}, which the fused forward would not follow "
            f"if it changed")


def patch(model: nn.Module, memory: str = "low", backend: str | None = None,
          verify: bool = True) -> PatchReport:
    """Convert, in place, the DARTS-style mixed ops and cells of `model` (module docstring).

    Returns a `PatchReport`; problems are also raised as one RuntimeWarning.
    """
    check_memory(memory)
    report = PatchReport()
    for name, m in model.named_modules():
        if isinstance(m, FusedMixedOp):
            m.memory, m.backend = memory, backend
            report.mixed_ops.append(name)
            continue
        if _is_mixed_op(m):
            forward = type(m).forward
            reads = read_forward(forward)
            why = _unfollowed(m, reads)
            if why is not None:
                report.kept_forward.append(f"{name} ({type(m).__name__}): {why}")
                if "forward" in m.__dict__:
                    del m.forward
                continue
            partial = _is_partial_channel(m)
            plans = plans_of(m)
            report.unfused_ops += [f"{name}.{p.label}" for p in plans
                                   if p.kind == "body" and not p.fused]
            aux = reads.aux if reads is not None else None
            if aux is not None:
                report.followed.append(
                    f"{name}: + {aux.module}(x) * {aux.beta_text}"
                    + (f" when {aux.cond_text}" if aux.cond is not None else "")
                    + ", evaluated on every call")
            if reads is None:
                report.followed.append(f"{name}: its forward's source cannot be read; fused "
                                       f"on the first-call check alone")
            m.__dict__["_fastdarts_patch"] = {
                "memory": memory, "backend": backend, "verified": not verify, "name": name,
                "report": report, "partial": partial, "aux": aux, "forward": forward,
                "arg_names": reads.arg_names if reads is not None else (),
                "zeros": ZeroWeightWatch(name)}
            m.forward = types.MethodType(_patched_mixed_forward, m)
            for pool in m.modules():
                if type(pool) is nn.AvgPool2d:
                    pool.__class__ = AvgPool2d
                    pool.__dict__["_fastdarts_was_plain"] = True
            report.mixed_ops.append(name)
    for name, m in model.named_modules():
        if getattr(m, "memory", None) in MEMORY_MODES and not isinstance(m, FusedMixedOp):
            m.memory = memory  # our own supernets and cells switch mode by attribute
            if hasattr(m, "_ops") or hasattr(m, "edges"):
                report.cells.append(name)
        elif _is_cell(m):
            if memory == "low":
                enable_cell_recompute(m)
                report.cells.append(name)
            elif "forward" in m.__dict__:
                del m.forward
    if report.problems:
        warnings.warn("\n".join(report.problems), RuntimeWarning, stacklevel=2)
    return report


def unpatch(model: nn.Module) -> None:
    """Undo `patch`: original forwards everywhere (our own modules back to `reference`)."""
    for m in model.modules():
        if "forward" in m.__dict__:
            del m.forward
        if m.__dict__.pop("_fastdarts_patch", None) is not None:
            m.__dict__.pop("skipped_ops", None)
        if m.__dict__.pop("_fastdarts_was_plain", False):
            m.__class__ = nn.AvgPool2d
        if isinstance(m, FusedMixedOp) or hasattr(m, "memory"):
            m.memory = "reference"
