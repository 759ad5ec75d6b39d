"""Plain-PyTorch references of the finite-difference HVP kernels (formulas in csrc/hvp.h).

Flat 1-D buffers of one dtype; arithmetic in the accumulation dtype (float32, float64 for
float64 storage); the squared norm of v is a 1-value tensor and eps = r / ||v|| never leaves
the device. A zero norm gives eps = r, so that w+ = w- = w and the quotient is exactly 0.
"""
from __future__ import annotations

import torch

__all__ = ["hvp_virtual_step_ref", "hvp_sq_norm_ref", "hvp_perturb_ref", "hvp_combine_ref",
           "hvp_epsilon_ref"]


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def hvp_virtual_step_ref(out, w, g, m, lr, momentum, weight_decay):
    """out = w - lr * (momentum * m + g + weight_decay * w), m None meaning 0; in place."""
    a = _acc(w)
    d = g.to(a) + weight_decay * w.to(a)
    if m is not None:
        d = momentum * m.to(a) + d
    out.copy_(w.to(a) - lr * d)


def hvp_sq_norm_ref(v):
    """sum v^2 as a 1-value tensor in the accumulation dtype."""
    return v.to(_acc(v)).square().sum().reshape(1)


def hvp_epsilon_ref(sq_norm, r):
    """r / ||v|| on the device; r when v = 0."""
    return torch.where(sq_norm > 0, r / sq_norm.sqrt(), torch.full_like(sq_norm, r))


def hvp_perturb_ref(out, w, v, sq_norm, r, sign):
    """out = w + sign * eps * v, in place."""
    a = _acc(w)
    out.copy_(w.to(a) + (sign * hvp_epsilon_ref(sq_norm, r)) * v.to(a))


def hvp_combine_ref(g_val, g_plus, g_minus, sq_norm, r, scale):
    """g_val + scale * (g_plus - g_minus) / (2 eps), g_val None meaning 0."""
    a = _acc(g_plus)
    fd = (g_plus.to(a) - g_minus.to(a)) / (2 * hvp_epsilon_ref(sq_norm, r))
    out = scale * fd if g_val is None else g_val.to(a) + scale * fd
    return out.to(g_plus.dtype)
