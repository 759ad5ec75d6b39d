"""The finite-difference Hessian-vector product of second-order DARTS (DESIGN.md §5).

    H v  ~=  [grad_arch L(w + eps v) - grad_arch L(w - eps v)] / (2 eps),  eps = r / ||v||

Every whole-model operation is one kernel on a flat buffer (`fastdarts.flat`): the virtual
SGD step, the squared norm of v, each perturbation written from a saved copy of w, and the
final combination. eps stays on the device (no host synchronisation); the weights are
restored by copying the saved buffer back, so they end bit-for-bit as they started (the
original code adds and subtracts eps * v in place, which drifts).

`fd_hvp(loss_fn, weights, arch, vector)` is the generic entry point; the second-order
architect of `fastdarts.algorithms.darts` uses the kernel wrappers below directly.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch.profiler import record_function

from .backends import select_backend
from .flat import FlatParameters
from .training import weights_frozen

__all__ = ["fd_hvp", "virtual_step", "sq_norm", "perturb", "combine", "flat_grads",
           "ARITHMETIC"]

#: profiler label of the second-order step's bookkeeping outside the model passes (copies,
#: zeroing, concatenation); the kernels carry their own `fastdarts::hvp_*` labels. The
#: benchmark counts the operations under both (benchmarks/bench_second_order.py).
ARITHMETIC = "fastdarts::second_order_arithmetic"


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _check_flat(fn: str, name: str, t: torch.Tensor | None, like: torch.Tensor,
                optional: bool = False) -> None:
    if t is None:
        if not optional:
            raise ValueError(f"{fn}: argument '{name}' is required")
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: argument '{name}' must be a tensor; got {type(t).__name__}")
    if t.dim() != 1 or t.numel() != like.numel() or not t.is_contiguous():
        raise ValueError(f"{fn}: argument '{name}' must be a contiguous 1-D buffer of "
                         f"{like.numel()} elements; got shape {tuple(t.shape)}")
    if t.dtype != like.dtype or t.device != like.device:
        raise ValueError(f"{fn}: argument '{name}' must be {like.dtype} on {like.device}; "
                         f"got {t.dtype} on {t.device}")


def _check_sq(fn: str, sq: torch.Tensor, like: torch.Tensor) -> None:
    if sq.numel() != 1 or sq.dtype != _acc(like) or sq.device != like.device:
        raise ValueError(f"{fn}: argument 'sq_norm' must be one {_acc(like)} value on "
                         f"{like.device}; got shape {tuple(sq.shape)}, {sq.dtype} on "
                         f"{sq.device}")


def _check_r(fn: str, r: float) -> float:
    r = float(r)
    if not (math.isfinite(r) and r > 0):
        raise ValueError(f"{fn}: argument 'r' must be a positive finite number; got {r}")
    return r


def virtual_step(out, w, g, m, lr, momentum, weight_decay, backend=None) -> None:
    """out = w - lr * (momentum * m + g + weight_decay * w): SGD's next weights, m None
    before the first step; `out` may be `w`."""
    fn = "virtual_step"
    _check_flat(fn, "w", w, w)
    for name, t, opt in (("g", g, False), ("m", m, True), ("out", out, False)):
        _check_flat(fn, name, t, w, optional=opt)
    with record_function("fastdarts::hvp_virtual_step"):
        select_backend(w, backend=backend).hvp_virtual_step(
            out, w, g, m, float(lr), float(momentum), float(weight_decay))


def sq_norm(v, backend=None) -> torch.Tensor:
    """sum v^2 as a 1-value tensor on v's device, in the accumulation dtype."""
    _check_flat("sq_norm", "v", v, v)
    with record_function("fastdarts::hvp_sq_norm"):
        return select_backend(v, backend=backend).hvp_sq_norm(v)


def perturb(out, w, v, sq, r, sign, backend=None) -> None:
    """out = w + sign * eps * v, eps = r / sqrt(sq) computed on the device (r when sq = 0)."""
    fn = "perturb"
    _check_flat(fn, "w", w, w)
    _check_flat(fn, "v", v, w)
    _check_flat(fn, "out", out, w)
    _check_sq(fn, sq, w)
    if sign not in (1, -1):
        raise ValueError(f"{fn}: argument 'sign' must be +1 or -1; got {sign}")
    r = _check_r(fn, r)
    with record_function("fastdarts::hvp_perturb"):
        select_backend(w, backend=backend).hvp_perturb(out, w, v, sq, r, float(sign))


def combine(g_val, g_plus, g_minus, sq, r, scale, backend=None) -> torch.Tensor:
    """g_val + scale * (g_plus - g_minus) / (2 eps) (g_val None: 0), eps as in `perturb`."""
    fn = "combine"
    _check_flat(fn, "g_plus", g_plus, g_plus)
    _check_flat(fn, "g_minus", g_minus, g_plus)
    _check_flat(fn, "g_val", g_val, g_plus, optional=True)
    _check_sq(fn, sq, g_plus)
    if not math.isfinite(scale):
        raise ValueError(f"{fn}: argument 'scale' must be finite; got {scale}")
    r = _check_r(fn, r)
    with record_function("fastdarts::hvp_combine"):
        return select_backend(g_plus, backend=backend).hvp_combine(
            g_val, g_plus, g_minus, sq, r, float(scale))


def flat_grads(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> torch.Tensor:
    """The gradient of `loss` with respect to `params` as one flat tensor (zeros for a
    parameter the loss does not depend on)."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    with record_function(ARITHMETIC):
        return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1)
                          for p, g in zip(params, grads)])


def finite_difference(loss_fn: Callable[[], torch.Tensor], out: torch.Tensor,
                      w0: torch.Tensor, v: torch.Tensor, arch: Sequence[torch.Tensor],
                      r: float, backend=None, write: Callable[[], None] | None = None):
    """(g_plus, g_minus, sq): the flat arch gradients of `loss_fn` at w0 + eps v and
    w0 - eps v, written in turn into `out` (a flat weight buffer; `write` then copies it into
    the weights when they are not views of it). The caller restores the weights from w0."""
    sq = sq_norm(v, backend)
    grads = []
    for sign in (1, -1):
        perturb(out, w0, v, sq, r, sign, backend)
        if write is not None:
            write()
        grads.append(flat_grads(loss_fn(), arch))
    return grads[0], grads[1], sq


def fd_hvp(loss_fn: Callable[[], torch.Tensor], weights, arch: Sequence[torch.Tensor],
           vector: Sequence[torch.Tensor], r: float = 1e-2, backend=None) -> list[torch.Tensor]:
    """Finite-difference estimate of (d^2 L / d arch d weights) . vector.

    Args:
        loss_fn: computes the loss at the current values of `weights` (called twice).
        weights: the weight tensors (leaves), or a `FlatParameters` holding them. With a
            `FlatParameters` the perturbations are written straight into its buffer; other
            weights are gathered into a temporary buffer and copied out with one
            multi-tensor copy per perturbation.
        arch: the tensors to differentiate with respect to (each requires grad).
        vector: one tensor shaped like each weight (v).
        r: eps = r / ||v||, DARTS's 0.01 by default.

    Returns a list shaped like `arch`. The weights end bit-for-bit as they were.
    """
    r = _check_r("fd_hvp", r)
    flat = weights if isinstance(weights, FlatParameters) else None
    params = flat.ensure().params if flat is not None else list(weights)
    vector, arch = list(vector), list(arch)
    if len(vector) != len(params):
        raise ValueError(f"fd_hvp: argument 'vector' must have one tensor per weight "
                         f"({len(params)}); got {len(vector)}")
    for i, (p, v) in enumerate(zip(params, vector)):
        if v.shape != p.shape:
            raise ValueError(f"fd_hvp: vector[{i}] must have weights[{i}]'s shape "
                             f"{tuple(p.shape)}; got {tuple(v.shape)}")
    if not arch or not all(a.requires_grad for a in arch):
        raise ValueError("fd_hvp: argument 'arch' must be a non-empty list of tensors that "
                         "require grad")
    with torch.no_grad():
        if flat is not None:
            w0, out, write = flat.data.clone(), flat.data, None
            v = torch.cat([t.reshape(-1) for t in vector]).to(w0.dtype)
            restore = lambda: flat.data.copy_(w0)  # noqa: E731
        else:
            w0 = torch.cat([p.detach().reshape(-1) for p in params])
            v = torch.cat([t.reshape(-1) for t in vector]).to(w0.dtype)
            out = torch.empty_like(w0)
            targets = [p.data for p in params]
            sizes = [p.numel() for p in params]
            out_views = [t.view(p.shape) for t, p in zip(torch.split(out, sizes), params)]
            w0_views = [t.view(p.shape) for t, p in zip(torch.split(w0, sizes), params)]
            write = lambda: torch._foreach_copy_(targets, out_views)  # noqa: E731
            restore = lambda: torch._foreach_copy_(targets, w0_views)  # noqa: E731
    try:
        with weights_frozen(params):  # the two passes want d/d arch only
            g_plus, g_minus, sq = finite_difference(loss_fn, out, w0, v, arch, r, backend,
                                                    write)
    finally:
        with torch.no_grad():
            restore()
    result = combine(None, g_plus, g_minus, sq.to(_acc(g_plus)), r, 1.0, backend)
    return [t.view(a.shape) for t, a in zip(torch.split(result, [a.numel() for a in arch]),
                                            arch)]
