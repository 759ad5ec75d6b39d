"""Second-order DARTS the way the original code does it (DARTS cnn/architect.py), as the
reference the tests and the benchmark compare `fastdarts.algorithms.DARTS(order=2)` with.

A whole second supernet is built per step (the original's `model.new()` plus
`load_state_dict`, here `copy.deepcopy`, which also copies the architecture parameters) and
loaded with the unrolled weights; the Hessian-vector product perturbs the real model's
weights in place, one tensor at a time (`p += R v`, `p -= 2 R v`, `p += R v`, so the
restore is not bit-exact), with R = r / ||v|| computed on the host. BN running statistics
are updated by every training-mode pass, as in the original.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
from torch import nn
from torch.profiler import record_function

from ..hvp import ARITHMETIC

__all__ = ["unrolled_arch_grads_ref"]


def _concat(ts):
    return torch.cat([t.reshape(-1) for t in ts])


def unrolled_arch_grads_ref(model: nn.Module, loss_of: Callable, train_batch, val_batch,
                            w_optimizer: torch.optim.SGD, r: float = 1e-2) -> list[torch.Tensor]:
    """The second-order architecture gradient of `model` (a supernet with
    `weight_parameters()` and `arch_parameters()`); `loss_of(model, x, y)` is the loss.
    Returns the gradients (one per architecture parameter); nothing is stepped."""
    group = w_optimizer.param_groups[0]
    eta, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
    x, y = train_batch
    weights = model.weight_parameters()

    # _compute_unrolled_model: theta - eta * (moment + dtheta)
    loss = loss_of(model, x, y)
    grads = torch.autograd.grad(loss, weights)
    with record_function(ARITHMETIC):
        theta = _concat(weights).detach()
        try:
            moment = _concat(w_optimizer.state[v]["momentum_buffer"] for v in weights).mul(mu)
        except KeyError:
            moment = torch.zeros_like(theta)
        dtheta = _concat(grads) + wd * theta
        unrolled_theta = theta - eta * (moment + dtheta)
        unrolled = copy.deepcopy(model)
        state = unrolled.state_dict()
        offset = 0
        names = {id(p): n for n, p in model.named_parameters()}
        for p in weights:
            n = p.numel()
            state[names[id(p)]] = unrolled_theta[offset:offset + n].view(p.shape)
            offset += n
        unrolled.load_state_dict(state)

    # the unrolled model's validation gradients
    unrolled_loss = loss_of(unrolled, *val_batch)
    unrolled_loss.backward()
    dalpha = [a.grad for a in unrolled.arch_parameters()]
    vector = [p.grad.data for p in unrolled.weight_parameters()]

    # _hessian_vector_product
    with record_function(ARITHMETIC), torch.no_grad():
        R = r / _concat(vector).norm()
        for p, v in zip(weights, vector):
            p.add_(v, alpha=R.item())
    grads_p = torch.autograd.grad(loss_of(model, x, y), model.arch_parameters())
    with record_function(ARITHMETIC), torch.no_grad():
        for p, v in zip(weights, vector):
            p.sub_(v, alpha=2 * R.item())
    grads_n = torch.autograd.grad(loss_of(model, x, y), model.arch_parameters())
    with record_function(ARITHMETIC), torch.no_grad():
        for p, v in zip(weights, vector):
            p.add_(v, alpha=R.item())
        implicit = [(gp - gn).div_(2 * R) for gp, gn in zip(grads_p, grads_n)]
        return [g - eta * ig for g, ig in zip(dalpha, implicit)]
