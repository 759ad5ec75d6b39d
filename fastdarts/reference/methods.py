"""The methods' mixing-weight rules written the way the original code writes them (per-row
loops, in-place updates of cloned architecture tensors), for the tests to compare the
vectorised `fastdarts.algorithms` against.

* SDARTS [SD sota/cnn/model_search.py `clip`, attacker/perturb.py `Random_alpha`,
  `Linf_PGD_alpha`, attacker/linf_sgd.py];
* DrNAS [DR utils.py `process_step_vector`]: sample every op, zero the pruned, renormalise;
* DARTS- [DM src/utils.py `DecayScheduler`, linear].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["sdarts_clip_ref", "sdarts_random_ref", "sdarts_pgd_ref", "drnas_masked_sample_ref",
           "darts_minus_beta_ref"]


def sdarts_clip_ref(rows: torch.Tensor) -> torch.Tensor:
    """The original `clip`, one row at a time, in place on a copy."""
    out = rows.clone()
    for line in out.view(-1, out.shape[-1]):
        max_index = line.argmax()
        line.clamp_(0, 1)
        if line.sum() == 0.0:
            line[max_index] = 1.0
        line.div_(line.sum())
    return out


def sdarts_random_ref(alphas, eps: float) -> list[torch.Tensor]:
    """`Random_alpha` after the softmax overwrite: add U(-eps, eps), clip."""
    out = []
    for a in alphas:
        p = F.softmax(a.detach(), dim=-1).clone()
        p.add_(torch.zeros_like(p).uniform_(-eps, eps))
        out.append(sdarts_clip_ref(p))
    return out


def sdarts_pgd_ref(loss_fn, model, alphas, eps: float, steps: int) -> list[torch.Tensor]:
    """`Linf_PGD_alpha` with a random start: the architecture tensors hold softmax(alpha),
    a sign-SGD optimiser descends -loss, differences to the start are clamped to eps and
    the rows clipped after every step; reverted if the loss went down."""
    training = model.training
    model.eval()
    params = [F.softmax(a.detach(), dim=-1).clone().requires_grad_(True) for a in alphas]
    saved = [p.detach().clone() for p in params]
    with torch.no_grad():
        loss_before = loss_fn(params)
        for p in params:
            p.add_(torch.zeros_like(p).uniform_(-eps, eps))
            p.copy_(sdarts_clip_ref(p))
    lr = 2 * eps / steps
    for _ in range(steps):
        for p in params:
            p.grad = None
        (-loss_fn(params)).backward()
        with torch.no_grad():
            for p, s in zip(params, saved):
                p.add_(torch.sign(p.grad), alpha=-lr)  # Linf_SGD: a step on the sign
                p.copy_(s + (p - s).clamp_(-eps, eps))
                p.copy_(sdarts_clip_ref(p))
    with torch.no_grad():
        loss_after = loss_fn(params)
        if loss_before > loss_after:
            for p, s in zip(params, saved):
                p.copy_(s)
    model.train(training)
    return [p.detach() for p in params]


def drnas_masked_sample_ref(beta: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """`process_step_vector` with a mask: a Dirichlet sample over all ops, the pruned
    zeroed, the rest divided by their sum."""
    w = torch.distributions.Dirichlet(beta).rsample()
    w = w * kept.to(w.dtype)
    return w / w.sum(-1, keepdim=True)


def darts_minus_beta_ref(epoch: int, t_max: int, t_start: int = 0, base: float = 1.0) -> float:
    """`DecayScheduler(base, T_max, T_start, 'linear')` at `epoch`."""
    if epoch < t_start:
        return base
    return base * (t_max - epoch) / (t_max - t_start)
