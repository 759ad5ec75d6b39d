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
"""
from __future__ import annotations

import inspect
import types
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from .ops.pooling import AvgPool2d
from .mixed import MEMORY_MODES, FusedMixedOp, _as, _format_of, check_memory, mixed_forward
from .partial import partial_combine
from .plans import plans_of
from .recompute import RngState, enable_cell_recompute, frozen_bn_stats, module_uses_rng

__all__ = ["patch", "unpatch", "PatchReport"]


@dataclass
class PatchReport:
    """What `patch` did: module names converted, ops run whole, and problems."""
    mixed_ops: list[str] = field(default_factory=list)
    cells: list[str] = field(default_factory=list)
    unfused_ops: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def __str__(self):
        lines = [f"fastdarts.patch: {len(self.mixed_ops)} mixed ops, "
                 f"{len(self.cells)} cells recomputed"]
        lines += [f"  runs whole (not fused): {n}" for n in self.unfused_ops]
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


def _fused(self, state, x, weights, memory):
    """The fused forward of a patched mixed op; for a PC-DARTS one, the mixed op on the first
    C/K channels and the partial-channel combine kernel (bypass, shuffle)."""
    if not state["partial"]:
        return mixed_forward(self, x, weights, memory, state["backend"])
    k = getattr(self, "k", None)
    C = x.shape[1]
    width = C // k if isinstance(k, int) and k > 0 else state["width"]
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
            partial = _is_partial_channel(m)
            plans = plans_of(m)
            report.unfused_ops += [f"{name}.{p.label}" for p in plans
                                   if p.kind == "body" and not p.fused]
            m.__dict__["_fastdarts_patch"] = {"memory": memory, "backend": backend,
                                              "verified": not verify, "name": name,
                                              "report": report, "partial": partial,
                                              "width": _partial_width(m) if partial else None}
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
        m.__dict__.pop("_fastdarts_patch", None)
        if m.__dict__.pop("_fastdarts_was_plain", False):
            m.__class__ = nn.AvgPool2d
        if isinstance(m, FusedMixedOp) or hasattr(m, "memory"):
            m.memory = "reference"
