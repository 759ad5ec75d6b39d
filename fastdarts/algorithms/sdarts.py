"""SDARTS-RS and SDARTS-ADV (Chen & Hsieh, 2020; ALGORITHMS.md §2.4): the weight step runs
at perturbed mixing weights, which smooths the loss landscape in the architecture and keeps
DARTS from collapsing.

The perturbation lives in probability space: each edge row starts at p0 = softmax(alpha), a
point of the simplex, and the perturbed point is projected back onto the simplex per row
(`project_rows`, the original's `clip`). RS adds U(-eps, eps) noise; ADV runs a PGD attack
on the training batch in eval mode: a random start, `steps` sign-gradient ascent steps of
2 eps / steps each kept within eps of p0 and projected, and a revert to p0 if the attack
ended below the unperturbed loss. eps grows linearly from eps_min (0.03) to eps (0.3)
over the epochs. The architecture step is DARTS's, on the unperturbed alphas.

Gradients: the perturbed weights carry no graph to alpha (the weight step would throw the
alpha gradient away), and the attack differentiates only with respect to the point it
perturbs, never the network weights. The revert is a `torch.where`, not a host test.
"""
from __future__ import annotations

import torch

from .darts import DARTS

__all__ = ["SDARTSRS", "SDARTSADV", "project_rows", "epsilon_at"]


def project_rows(p: torch.Tensor) -> torch.Tensor:
    """SDARTS's projection onto the simplex, per row of the last dimension: remember the
    argmax, clamp to [0, 1], put 1 at the argmax of a row that became all zeros, divide by
    the row sum."""
    top = p.argmax(-1, keepdim=True)
    q = p.clamp(0, 1)
    onehot = torch.zeros_like(q).scatter_(-1, top, 1.0)
    q = torch.where(q.sum(-1, keepdim=True) == 0, onehot, q)
    return q / q.sum(-1, keepdim=True)


def epsilon_at(epoch: int, epochs: int, eps_min: float, eps_max: float) -> float:
    """eps_t = eps_min + (eps_max - eps_min) t / T, t = 0 .. T-1 (the original's schedule)."""
    return eps_min + (eps_max - eps_min) * epoch / epochs


def _uniform_like(t: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.empty_like(t).uniform_(-eps, eps)


class _SDARTS(DARTS):
    def __init__(self, config):
        super().__init__(config)
        self.epsilon = config.sdarts_epsilon_min

    def on_epoch_start(self, epoch, model, training=None):
        c = self.config
        self.epsilon = epsilon_at(epoch, c.epochs, c.sdarts_epsilon_min, c.sdarts_epsilon)

    def _split(self, model):
        """-> (op-weight rows to perturb, the rest (PC-DARTS edge weights), unperturbed)."""
        with torch.no_grad():
            weights = tuple(w.detach() for w in self.mixing_weights(model, "weight"))
        n = 1 if len(weights) == 1 else 2  # NB201: one tensor; DARTS spaces: normal, reduce
        return weights[:n], weights[n:]

    def describe(self):
        c = self.config
        return (f"perturbation radius {c.sdarts_epsilon_min} -> {c.sdarts_epsilon} "
                f"(this epoch {self.epsilon:.4f})")


class SDARTSRS(_SDARTS):
    name = "sdarts-rs"
    summary = ("DARTS whose weight step sees the softmax mixing weights plus uniform noise "
               "of radius eps (0.03 -> 0.3), projected back onto the simplex")

    def weight_step_weights(self, model, batch):
        ops, rest = self._split(model)
        return tuple(project_rows(p + _uniform_like(p, self.epsilon)) for p in ops) + rest


class SDARTSADV(_SDARTS):
    name = "sdarts-adv"
    summary = ("DARTS whose weight step sees the mixing weights after a 7-step PGD attack "
               "of radius eps (0.03 -> 0.3) on the training batch")

    def weight_step_weights(self, model, batch):
        p0, rest = self._split(model)
        with self.weights_frozen(model):  # the attack differentiates the mixing weights only
            return attack(lambda ws: self.loss(model(batch[0], ws + rest), batch[1]), model,
                          p0, self.epsilon, self.config.sdarts_attack_steps)


def attack(loss_of, model, p0: tuple, eps: float, steps: int) -> tuple:
    """SDARTS-ADV's L-inf PGD attack on the mixing-weight rows `p0` (module docstring):
    `loss_of(weights)` is the training loss at `weights`. Runs `model` in eval mode and
    returns the perturbed rows (p0 itself if the attack lowered the loss)."""
    was_training = model.training
    model.eval()
    try:
        step = 2 * eps / steps
        with torch.no_grad():
            loss_before = loss_of(p0)
            p = tuple(project_rows(q + _uniform_like(q, eps)) for q in p0)
        for _ in range(steps):
            p = tuple(q.detach().requires_grad_(True) for q in p)
            grads = torch.autograd.grad(loss_of(p), p)  # the point only, no weight grads
            with torch.no_grad():
                p = tuple(project_rows(q0 + (q + step * g.sign() - q0).clamp(-eps, eps))
                          for q, q0, g in zip(p, p0, grads))
        with torch.no_grad():
            worse = loss_of(p) >= loss_before  # the original reverts when it is lower
            return tuple(torch.where(worse, q, q0) for q, q0 in zip(p, p0))
    finally:
        model.train(was_training)
