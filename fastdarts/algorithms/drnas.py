"""DrNAS (Chen et al., 2021; ALGORITHMS.md §2.5): the architecture as a Dirichlet
distribution, learned through pathwise gradients, with progressive learning.

* Parameterisation: theta shaped like DARTS's alphas; concentration beta = ELU(theta) + 1
  (floored at `MIN_CONCENTRATION`: as theta -> -inf beta -> 0, where gamma samples underflow
  and the pathwise gradient blows up). Every forward draws one reparameterised sample
  w ~ Dir(beta) per cell type, shared by its cells and the whole batch; the architecture and
  the weight step draw their own (the weight step's without a graph). Evaluation uses the
  Dirichlet mean, so that validation is deterministic.
* Regularisation: `l2` (Adam weight decay `drnas_reg_scale` on theta, pulling beta toward
  Dir(1)) or `kl` (`drnas_reg_scale * sum KL(Dir(beta) || Dir(1))` added to the
  architecture loss only, no weight decay).
* Derivation: from softmax(theta) over the kept ops, not from the Dirichlet mean.
* Progressive learning: stages with K partial-channel partitions and a number of kept ops
  each (DARTS space and S1-S4: K 6 -> 4, ops 7 -> 4; NB201: K 4 -> 2, ops 5 -> 3; the
  DARTS space drops `none`). Entering a stage prunes each edge to its top ops by raw theta
  (pruned theta set to 0), widens every edge to C/K channels (`fastdarts.wider`, which carries
  the SGD momentum over), rebuilds the flat weight buffers and restarts the architecture
  warm-up; the cosine schedule and the Adam state of theta continue.
* Pruned ops: sampling draws only the kept ops, w_kept ~ Dir(beta_kept), which is exactly the
  original's sample-all, zero-the-pruned, renormalise (Dirichlet aggregation). Each edge is
  told once per stage which ops to skip (`FusedMixedOp.skip_ops`), instead of the original's
  per-op `if w == 0` host test.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.distributions import Dirichlet, kl_divergence

from ..ops.darts import PRIMITIVES as DARTS_PRIMITIVES
from ..widen import wider
from .base import grads_into
from .darts import DARTS

__all__ = ["DrNAS", "concentration", "sample_weights", "mean_weights", "stage_plan",
           "MIN_CONCENTRATION"]

MIN_CONCENTRATION = 1e-3
#: DrNAS's 7 DARTS-space ops: the DARTS ops without `none`
DARTS_OPS = tuple(op for op in DARTS_PRIMITIVES if op != "none")
#: (K per stage, kept ops per stage) of progressive learning (ALGORITHMS.md §2.5)
PROGRESSIVE = {"darts": ((6, 4), (7, 4)), "imagenet": ((6, 3), (7, 4)),
               "nb201": ((4, 2), (5, 3))}
#: architecture warm-up: this many epochs of a stage of this many (the original's 10 of 25
#: in the DARTS space, 10 of 50 on NB201), scaled to the run's stage length
WARMUP = {"darts": (10, 25), "imagenet": (10, 25), "nb201": (10, 50)}


def _family(space: str, dataset: str = "") -> str:
    """The key of `PROGRESSIVE` and `WARMUP`: NB201, the DARTS spaces, or those on ImageNet
    (K 6 -> 3, ALGORITHMS.md §2.5)."""
    if space == "nb201":
        return "nb201"
    return "imagenet" if dataset == "imagenet" else "darts"


def concentration(theta: torch.Tensor) -> torch.Tensor:
    """beta = ELU(theta) + 1, floored at MIN_CONCENTRATION."""
    return (F.elu(theta) + 1).clamp_min(MIN_CONCENTRATION)


def _kept(theta: torch.Tensor, kept_idx: torch.Tensor | None) -> torch.Tensor:
    """The concentrations of the kept ops, (rows, k); all ops when `kept_idx` is None."""
    beta = concentration(theta)
    return beta if kept_idx is None else beta.gather(1, kept_idx)


def _scatter(theta: torch.Tensor, kept_idx: torch.Tensor | None, w: torch.Tensor):
    """Kept-op values back into rows shaped like theta, 0 on the pruned ops."""
    return w if kept_idx is None else torch.zeros_like(theta).scatter(1, kept_idx, w)


def sample_weights(theta: torch.Tensor, kept_idx: torch.Tensor | None = None,
                   reparameterised: bool = True) -> torch.Tensor:
    """One sample per row of Dir(beta) over the kept ops (`kept_idx` (rows, k), None for
    all); pruned ops get exactly 0. Pathwise gradients when `reparameterised`."""
    # validate_args=False: validation would synchronise with the host
    dist = Dirichlet(_kept(theta, kept_idx), validate_args=False)
    return _scatter(theta, kept_idx, dist.rsample() if reparameterised else dist.sample())


def mean_weights(theta: torch.Tensor, kept_idx: torch.Tensor | None = None) -> torch.Tensor:
    """The Dirichlet mean beta_kept / sum(beta_kept) (0 on pruned ops)."""
    b = _kept(theta, kept_idx)
    return _scatter(theta, kept_idx, b / b.sum(-1, keepdim=True))


def kl_to_uniform(theta: torch.Tensor, kept_idx: torch.Tensor | None = None) -> torch.Tensor:
    """sum over rows of KL(Dir(beta_kept) || Dir(1))."""
    b = _kept(theta, kept_idx)
    return kl_divergence(Dirichlet(b, validate_args=False),
                         Dirichlet(torch.ones_like(b), validate_args=False)).sum()


def stage_plan(epochs: int, ks, ops) -> list[tuple[int, int, int]]:
    """(first epoch, K, kept ops) per stage; the epochs are split evenly."""
    if len(ks) != len(ops) or not ks:
        raise ValueError(f"drnas_k and drnas_ops need one entry per stage; got {list(ks)} and "
                         f"{list(ops)}")
    if len(ks) > epochs:
        raise ValueError(f"epochs: {len(ks)} progressive stages need at least {len(ks)} "
                         f"epochs; got {epochs}")
    for a, b in zip(ks, ks[1:]):
        if b > a:
            raise ValueError(f"drnas_k must not grow from stage to stage (edges only widen); "
                             f"got {list(ks)}")
    for a, b in zip(ops, ops[1:]):
        if b > a:
            raise ValueError(f"drnas_ops must not grow (pruned ops do not come back); got "
                             f"{list(ops)}")
    return [(round(i * epochs / len(ks)), k, n) for i, (k, n) in enumerate(zip(ks, ops))]


def edges_by_row(model) -> list[list[list]]:
    """Per architecture tensor, per row: the edge modules that row weighs."""
    if hasattr(model, "alphas_normal"):
        groups = [[[] for _ in range(model.alphas_normal.shape[0])] for _ in range(2)]
        for cell in model.cells:
            for e, op in enumerate(cell._ops):
                groups[int(cell.reduction)][e].append(op)
        return groups
    groups = [[[] for _ in model.edge_keys]]
    for cell in model.cells:
        for key, op in getattr(cell, "edges", {}).items():
            groups[0][cell.edge2index[key]].append(op)
    return groups


class DrNAS(DARTS):
    name = "drnas"
    summary = ("Dirichlet architecture distribution (ELU + 1 concentration, pathwise "
               "gradients) with progressive learning: partial channels K 6 -> 4 while "
               "pruning ops 7 -> 4")

    # digits: the preset's C = 8 does not split into 6 partitions; 12 does at every stage
    # ImageNet: C = 48, L = 14, batch 512 (ALGORITHMS.md §3.3); 48 splits into 6 and 3
    DATASET_DEFAULTS = {"digits": {"init_channels": 12},
                        "imagenet": {"init_channels": 48, "layers": 14, "batch_size": 512}}

    @classmethod
    def defaults(cls, space, dataset):
        _, above = super().defaults(space, dataset)
        if space == "nb201":
            below = {"epochs": 100, "lr": 0.025, "lr_min": 0.001, "arch_lr": 3e-4}
        else:  # searches at evaluation size, C = 36, L = 20
            below = {"epochs": 50, "lr": 0.1, "lr_min": 0.0, "arch_lr": 6e-4,
                     "init_channels": 36, "layers": 20}
        return below, above

    @classmethod
    def default_warmup(cls, values):
        if not values["drnas_progressive"]:
            return 0
        family = _family(values["space"], values["dataset"])
        n_stages = len(values["drnas_k"] or PROGRESSIVE[family][0])
        warm, of = WARMUP[family]
        return round(warm * values["epochs"] / n_stages / of)

    def __init__(self, config):
        super().__init__(config)
        if config.order != 1:
            raise ValueError("order: DrNAS is first order (its architecture gradient is "
                             "through Dirichlet samples)")
        if config.partial_k is not None:
            raise ValueError("partial_k: DrNAS sets K per stage; use drnas_k (--drnas-k)")
        self.stage = 0
        self.kept = None  # per architecture tensor: bool (rows, n_ops), None = all kept
        self.kept_idx = None

    # -- stages ----------------------------------------------------------------------------
    def stages(self) -> list[tuple[int, int, int]]:
        c = self.config
        n_ops = self.n_ops()
        if c.drnas_k is not None or c.drnas_ops is not None:
            if c.drnas_k is None or c.drnas_ops is None:
                raise ValueError("drnas_k and drnas_ops go together (one entry per stage each)")
            ks, ops = c.drnas_k, c.drnas_ops
        elif c.drnas_progressive:
            ks, ops = PROGRESSIVE[_family(c.space, c.dataset)]
        else:
            ks, ops = (1,), (n_ops,)
        # S1-S4 have two or three ops per edge: the stages then keep them all
        return stage_plan(c.epochs, ks, tuple(min(n, n_ops) for n in ops))

    def n_ops(self) -> int:
        """Ops per edge of the supernet (the DARTS space without `none`)."""
        space = self.config.space
        if space == "darts":
            return len(DARTS_OPS)
        if space == "nb201":
            from ..ops.nb201 import PRIMITIVES
            return len(PRIMITIVES)
        from ..spaces.darts import space_edge_ops
        return len(space_edge_ops(space)[0][0])

    def stage_of(self, epoch: int) -> int:
        return max(i for i, (start, _, _) in enumerate(self.stages()) if start <= epoch)

    def supernet_options(self):
        k = self.stages()[0][1]
        options = {} if k == 1 else {"partial_k": k}
        if self.config.space != "nb201" and k != 1:
            options["edge_normalisation"] = False  # DrNAS has no edge normalisation
        if self.config.space == "darts":
            options["primitives"] = DARTS_OPS
        return options

    def prepare_model(self, model, state=None):
        """Bring a fresh supernet to the stage of `state` (a resumed run): prune and widen
        it the way the run did, so the checkpoint's tensors fit."""
        if state is None or state.get("stage", 0) == 0 and state.get("kept") is None:
            return
        self.stage = state["stage"]
        self._set_kept(model, state["kept"])
        wider(model, self.stages()[self.stage][1])

    def _set_kept(self, model, kept) -> None:
        """Record the kept-op masks (list of bool (rows, n) or None) and tell every edge
        which ops to skip; the one host transfer of a stage change."""
        if kept is None:
            self.kept = self.kept_idx = None
            return
        arch = model.arch_parameters()
        self.kept = [torch.as_tensor(m, dtype=torch.bool, device=a.device)
                     for m, a in zip(kept, arch)]
        self.kept_idx = [m.nonzero()[:, 1].view(m.shape[0], -1) for m in self.kept]
        for mask, rows in zip(self.kept, edges_by_row(model)):
            for row, edges in zip(mask.tolist(), rows):
                for edge in edges:
                    edge.skip_ops(k for k, keep in enumerate(row) if not keep)

    def on_epoch_start(self, epoch, model, training=None):
        stage = self.stage_of(epoch)
        if stage == self.stage and not (epoch == 0 and self._prunes_at_start(model)):
            return
        start, k, n_ops = self.stages()[stage]
        with torch.no_grad():
            kept = []
            for theta, old in zip(model.arch_parameters(),
                                  self.kept or [None] * len(model.arch_parameters())):
                score = theta if old is None else theta.masked_fill(~old, -1e6)
                top = score.topk(n_ops, dim=1).indices
                mask = torch.zeros_like(theta, dtype=torch.bool).scatter_(1, top, True)
                theta.masked_fill_(~mask, 0.0)
                kept.append(mask)
        self._set_kept(model, [m.cpu() for m in kept])
        if training is not None:
            wider(model, k, training.optimizer)
            self.flat_weights = training.parameters_replaced()
        else:
            wider(model, k)
        self.stage = stage

    def _prunes_at_start(self, model) -> bool:
        return self.stage == 0 and self.kept is None and self.stages()[0][2] < self.n_ops()

    def arch_updates_enabled(self, epoch: int) -> bool:
        start = self.stages()[self.stage_of(epoch)][0]
        return epoch - start >= self.config.arch_warmup_epochs

    # -- weights ---------------------------------------------------------------------------
    def _kept_idx(self, i):
        return None if self.kept_idx is None else self.kept_idx[i]

    def mixing_weights(self, model, phase):
        arch = model.arch_parameters()
        if phase == "eval":
            return tuple(mean_weights(t, self._kept_idx(i)) for i, t in enumerate(arch))
        return tuple(sample_weights(t, self._kept_idx(i), reparameterised=phase == "arch")
                     for i, t in enumerate(arch))

    def genotype(self, model):
        """From softmax(theta) over the kept ops (the original's rule)."""
        with torch.no_grad():
            weights = []
            for i, theta in enumerate(model.arch_parameters()):
                t = theta if self.kept is None else theta.masked_fill(~self.kept[i], -math.inf)
                weights.append(F.softmax(t, dim=-1))
        return model.genotype(tuple(weights))

    # -- architecture step -----------------------------------------------------------------
    def setup(self, model, weight_optimizer=None, flat_weights=None):
        super().setup(model, weight_optimizer, flat_weights)
        c = self.config
        self.arch_optimizer = torch.optim.Adam(
            model.arch_parameters(), lr=c.arch_lr, betas=tuple(c.arch_betas),
            weight_decay=c.drnas_reg_scale if c.drnas_reg == "l2" else 0.0)

    def arch_step(self, model, train_batch, val_batch, lr):
        x_val, y_val = val_batch
        arch = model.arch_parameters()
        self.arch_optimizer.zero_grad(set_to_none=True)
        with self.weights_frozen(model):
            loss = self.loss(model(x_val, self.mixing_weights(model, "arch")), y_val)
            objective = loss
            if self.config.drnas_reg == "kl":
                objective = loss + self.config.drnas_reg_scale * sum(
                    kl_to_uniform(t, self._kept_idx(i)) for i, t in enumerate(arch))
            grads_into(objective, arch)
        self.step_architecture()
        return {"arch_loss": loss.detach()}

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self):
        return {**super().state_dict(), "stage": self.stage,
                "kept": None if self.kept is None else [m.cpu() for m in self.kept]}

    def load_state_dict(self, state):
        super().load_state_dict(state)
        self.stage = state.get("stage", 0)

    def describe(self):
        c = self.config
        stages = ", ".join(f"epochs {s + 1}-: K={k}, {n} ops" for s, k, n in self.stages())
        return (f"stages [{stages}], architecture warm-up {c.arch_warmup_epochs} epochs per "
                f"stage, regulariser {c.drnas_reg} x {c.drnas_reg_scale}")
