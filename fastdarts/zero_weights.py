"""Ops whose mixing weight is exactly zero, skipped without a host synchronisation per step.

DrNAS prunes ops between stages by zeroing their mixing weights (the Dirichlet sample is
masked), and its MixedOp leaves them out with `if not w == 0`: one host synchronisation
per op and step, and the pruned ops get no gradient at all (so momentum and weight decay
leave them alone) and run no BatchNorm. The fused edge of a patched model does the same
with one host read per model edit instead: `ZeroWeightWatch.skipped` reads which weights
are zero on the first call after the model tree was edited (the generation of
`fastdarts.structure`: DrNAS's stage change widens the ops, which replaces their
parameters), and from then on skips those ops.

Between edits the watch checks on the device that the pattern still holds, with no host
synchronisation: a few element-wise kernels on the weights, and the result read back
asynchronously (on a CUDA device, a pinned copy and an event polled at the next call).
* A weight that became zero (pruning with no edit of the model): the next call reads the
  pattern again. The one call in between computed that op, with a zero weight (its
  gradients zeros, not None).
* A skipped weight that is no longer zero: that op is missing from the outputs since, so
  the next call raises, naming the module. Call `fastdarts.refresh()` after changing
  which weights are zero without editing the model.
While a CUDA graph is being captured the watch neither reads nor checks: the pattern of
the last call is baked in, as every host-side decision of a captured step is.
"""
from __future__ import annotations

from typing import Optional

import torch

from .structure import generation

__all__ = ["ZeroWeightWatch"]

#: without skipped ops only a new zero can appear, which costs gradients of zeros instead
#: of None, not a wrong value: checked every this many calls, not on every one
_SPARSE_CHECK_EVERY = 16

_NEW_ZERO, _LOST_ZERO = 1, 2


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


class ZeroWeightWatch:
    """The exact zeros of one edge's weights (module docstring)."""

    def __init__(self, name: str):
        self.name = name
        self.generation: Optional[int] = None
        self.skip: frozenset = frozenset()
        self._code: Optional[torch.Tensor] = None  # per op: 1 computed, 2 skipped
        self._flag: Optional[torch.Tensor] = None  # max code of a changed weight so far
        self._host: Optional[torch.Tensor] = None  # its asynchronous copy (CUDA)
        self._event = None
        self._calls = 0

    def skipped(self, weights: torch.Tensor) -> frozenset:
        """The indices of the ops to leave out of this call (never all of them)."""
        if weights.dim() != 1 or _capturing(weights):
            return self.skip
        seen = self._poll()
        if seen == _LOST_ZERO:
            lost = sorted(self.skip)
            self.generation, self._flag = None, None  # the next call reads the pattern anew
            raise RuntimeError(
                f"fastdarts.patch: {self.name}: the mixing weights of ops {lost} were exactly "
                f"0 when the model last changed, so the fused edge skips those ops as the "
                f"original does, and at least one is not 0 any more: the outputs since then "
                f"miss it. After changing which weights are zero without editing the model, "
                f"call fastdarts.refresh().")
        now = generation()
        if seen == _NEW_ZERO or now != self.generation:
            self._observe(weights, now)
        else:
            self._check(weights)
        return self.skip

    def _observe(self, weights: torch.Tensor, now: int) -> None:
        zeros = weights.detach() == 0
        on_host = zeros.tolist()  # the one host read, once per edit of the model
        skip = frozenset(k for k, z in enumerate(on_host) if z)
        self.skip = skip if len(skip) < len(on_host) else frozenset()
        self._code = torch.tensor([_LOST_ZERO if k in self.skip else _NEW_ZERO
                                   for k in range(len(on_host))], dtype=torch.int8,
                                  device=weights.device)
        self._flag = torch.zeros((), dtype=torch.int8, device=weights.device)
        self._host = (torch.zeros((), dtype=torch.int8, pin_memory=True)
                      if weights.is_cuda else None)
        self._event = None
        self.generation = now
        self._calls = 0

    def _check(self, weights: torch.Tensor) -> None:
        self._calls += 1
        if not self.skip and self._calls % _SPARSE_CHECK_EVERY:
            return
        if weights.device != self._code.device:
            return  # a DataParallel replica's copy: its first device checks for all
        code = self._code
        changed = ((weights.detach() == 0) != (code == _LOST_ZERO)).to(torch.int8).mul_(code)
        torch.maximum(self._flag, changed.amax(), out=self._flag)
        if self._host is not None:
            self._host.copy_(self._flag, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()

    def _poll(self) -> int:
        """The flag as far as the device has got, without waiting for it."""
        if self._flag is None:
            return 0
        if self._host is None:
            return int(self._flag)  # a CPU tensor: no device to wait for
        if self._event is None or not self._event.query():
            return 0
        return int(self._host)
