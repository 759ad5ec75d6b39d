"""A patched model stays exact while the user's own code changes it mid-search, as the
originals do: DrNAS's prune + Net2Wider widening + K change (tests/drnas_style_model.py),
DARTS-'s auxiliary skip with a beta that decays every step (read from a module-global
scheduler), parameters and ops replaced after patch, `load_state_dict(assign=True)`.
Each runs the unpatched and the patched model side by side with a real optimiser, several
steps across the change, and compares the loss, every gradient (and which parameters have
one), the architecture gradients and the BN buffers."""
import copy
import types

import pytest
import torch
import torch.nn.functional as F

import fastdarts
from fastdarts import patch
from fastdarts.structure import generation
from fastdarts.zero_weights import ZeroWeightWatch
from tests import darts_style_model as dsm
from tests import drnas_style_model as drnas

ARCH = ("alphas_normal", "alphas_reduce")


def _batch(step, n=4, size=8):
    g = torch.Generator().manual_seed(100 + step)
    return (torch.randn(n, 3, size, size, generator=g, dtype=torch.float64),
            torch.randint(0, 5, (n,), generator=g))


def _optimizer(model):
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=3e-4)


def _step(model, opt, x, y):
    opt.zero_grad(set_to_none=True)
    for a in ARCH:
        getattr(model, a).grad = None
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    arch = [getattr(model, a).grad.clone() for a in ARCH]
    opt.step()
    return loss.detach(), grads, arch


def _assert_same(step, original, patched, out_a, out_b):
    (loss_a, grads_a, arch_a), (loss_b, grads_b, arch_b) = out_a, out_b
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-10, atol=1e-12,
                               msg=lambda m: f"step {step}: loss: {m}")
    no_grad_a = sorted(n for n, g in grads_a.items() if g is None)
    no_grad_b = sorted(n for n, g in grads_b.items() if g is None)
    assert no_grad_b == no_grad_a, f"step {step}: parameters without a gradient differ"
    for n, g in grads_a.items():
        if g is not None:
            torch.testing.assert_close(grads_b[n], g, rtol=1e-8, atol=1e-11,
                                       msg=lambda m, n=n: f"step {step}: {n}: {m}")
    for a, b in zip(arch_a, arch_b):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-11)
    buffers_b = dict(patched.named_buffers())
    for n, buf in original.named_buffers():
        torch.testing.assert_close(buffers_b[n], buf, rtol=1e-10, atol=1e-12,
                                   msg=lambda m, n=n: f"step {step}: buffer {n}: {m}")


def _still_fused(model, report):
    """No mixed op fell back to its own forward (the first-call check reports those)."""
    assert not report.problems, str(report)
    ops = [m for m in model.modules() if "_fastdarts_patch" in m.__dict__]
    assert ops and all("forward" in m.__dict__ for m in ops)


def _pair(build, memory):
    original = build()
    patched = copy.deepcopy(original)
    for a in ARCH:
        setattr(patched, a, getattr(original, a).detach().clone().requires_grad_())
    report = patch(patched, memory=memory)
    return original, patched, report


@pytest.mark.parametrize("memory", ["low", "fast"])
def test_drnas_prune_and_widen_through_its_own_code(memory):
    def build():
        torch.manual_seed(0)
        return drnas.Network(C=8, layers=3, steps=2, k=4).double()

    original, patched, report = _pair(build, memory)
    assert not report.kept_forward and not report.problems
    assert not report.unfused_ops, "the pool+BN wrappers are fused"
    opts = [_optimizer(original), _optimizer(patched)]
    for step in range(5):
        if step == 2:  # DrNAS's stage change: prune, Net2Wider to K=2, a new optimiser
            for n, model in enumerate((original, patched)):
                model.pruning(4)
                torch.manual_seed(7)  # the same random Net2Wider mapping in both
                model.wider(2)
                opts[n] = _optimizer(model)
            assert patched.cells[0]._ops[0]._ops[3].op[1].weight.shape[0] == 4
        x, y = _batch(step)
        _assert_same(step, original, patched, _step(original, opts[0], x, y),
                     _step(patched, opts[1], x, y))
    _still_fused(patched, report)
    pruned = [n for n, p in original.named_parameters() if p.grad is None]
    assert pruned, "pruning left ops without gradients in the original"
    # the pruned ops were skipped: their BN counters stayed where the prune left them
    edge = patched.cells[0]._ops[0]
    assert edge.__dict__["skipped_ops"] == frozenset(
        k for k in range(len(drnas.PRIMS)) if patched._mask_normal[0, k] == 0)


def test_fastdarts_wider_widens_a_patched_drnas_model_like_its_own_code():
    torch.manual_seed(0)
    own = drnas.Network(C=8, layers=3, steps=2, k=4).double()
    ours = copy.deepcopy(own)
    patch(ours, memory="low")
    fastdarts.wider(ours, 2, generator=torch.Generator().manual_seed(3))
    own.wider(2)
    shapes = {n: t.shape for n, t in [*ours.named_parameters(), *ours.named_buffers()]}
    assert shapes == {n: t.shape for n, t in [*own.named_parameters(), *own.named_buffers()]}
    assert all(op.k == 2 for cell in ours.cells for op in cell._ops)
    # and the widened patched model is exact against itself unpatched
    plain = copy.deepcopy(ours)
    fastdarts.unpatch(plain)
    for a in ARCH:
        setattr(plain, a, getattr(ours, a).detach().clone().requires_grad_())
    x, y = _batch(0)
    _assert_same(0, plain, ours, _step(plain, _optimizer(plain), x, y),
                 _step(ours, _optimizer(ours), x, y))


def test_fastdarts_wider_refuses_a_patched_op_whose_k_is_fixed_by_its_code():
    class FixedK(dsm.PCMixedOp):
        def forward(self, x, weights):
            part = x.shape[1] // 4
            temp1 = sum(w * op(x[:, :part]) for w, op in zip(weights, self._ops))
            rest = x[:, part:] if temp1.shape[2] == x.shape[2] else self.mp(x[:, part:])
            return dsm.pc_shuffle(torch.cat([temp1, rest], dim=1), 4)

    torch.manual_seed(0)
    model = dsm.Network(C=8, layers=3, steps=2, k=4).double()
    for cell in model.cells:
        for op in cell._ops:
            op.__class__ = FixedK
            del op.k
    report = patch(model)
    assert len(report.mixed_ops) == 15, str(report)
    with pytest.raises(ValueError, match=r"cells\.0\._ops\.0 \(FixedK\).*no int attribute k"):
        fastdarts.wider(model, 2)


# --- DARTS-: an auxiliary skip scaled by a beta that decays during the search ----------

class BetaSchedule:
    """DARTS-'s module-global decay scheduler (`beta_decay_scheduler.decay_rate`)."""
    decay_rate = 1.0


beta_schedule = BetaSchedule()
search_args = types.SimpleNamespace(auxiliary_skip=True)


class DartsMinusMixedOp(dsm.MixedOp):
    def __init__(self, C, stride, prims):
        super().__init__(C, stride, prims)
        self.auxiliary_op = (dsm.Identity() if stride == 1
                             else dsm.FactorizedReduce(C, C, affine=False))

    def forward(self, x, weights):
        res = sum(w * op(x) for w, op in zip(weights, self._ops))
        if search_args.auxiliary_skip:
            res += self.auxiliary_op(x) * beta_schedule.decay_rate
        return res


def _darts_minus_network():
    torch.manual_seed(0)
    built_with, dsm.MixedOp = dsm.MixedOp, DartsMinusMixedOp  # dsm.Cell builds its edges
    try:
        return dsm.Network(C=4, layers=3, steps=2, multiplier=2).double()
    finally:
        dsm.MixedOp = built_with


@pytest.mark.parametrize("memory", ["low", "fast"])
def test_darts_minus_patches_fused_and_follows_the_decaying_beta(memory):
    beta_schedule.decay_rate = 1.0  # patched at beta = 1, where the first-call check is
    original, patched, report = _pair(_darts_minus_network, memory)  # all the old code had
    assert len(report.mixed_ops) == 3 * 5 and not report.kept_forward, str(report)
    assert sum("auxiliary_op(x) * beta_schedule.decay_rate" in f for f in report.followed) == 15
    opts = [_optimizer(original), _optimizer(patched)]
    try:
        for step in range(5):
            beta_schedule.decay_rate = 1.0 - step / 4  # 1 -> 0, read on every forward
            x, y = _batch(step)
            _assert_same(step, original, patched, _step(original, opts[0], x, y),
                         _step(patched, opts[1], x, y))
        search_args.auxiliary_skip = False  # the condition is followed too
        x, y = _batch(9)
        _assert_same(9, original, patched, _step(original, opts[0], x, y),
                     _step(patched, opts[1], x, y))
        _still_fused(patched, report)
    finally:
        beta_schedule.decay_rate, search_args.auxiliary_skip = 1.0, True


def test_a_forward_reading_unfollowed_state_keeps_its_own_forward():
    class Dropping(dsm.MixedOp):
        def forward(self, x, weights):
            return sum(w * op(x) for w, op in zip(weights, self._ops)) * (1 - self.drop)

    torch.manual_seed(0)
    model = dsm.Network(C=4, layers=3, steps=2).double()
    for cell in model.cells:
        for op in cell._ops:
            op.__class__ = Dropping
            op.drop = 0.0
    original, patched, report = _pair(lambda: copy.deepcopy(model), "low")
    assert len(report.kept_forward) == 15 and not report.mixed_ops
    assert "reads self.drop" in report.kept_forward[0]
    for m in (original, patched):
        for cell in m.cells:
            for op in cell._ops:
                op.drop = 0.5  # a change the fused forward would have missed
    opts = [_optimizer(original), _optimizer(patched)]
    x, y = _batch(0)
    _assert_same(0, original, patched, _step(original, opts[0], x, y),
                 _step(patched, opts[1], x, y))


# --- replaced after patch ------------------------------------------------------------

@pytest.mark.parametrize("memory", ["low", "fast"])
def test_ops_and_parameters_replaced_after_patch_are_followed(memory):
    def build():
        torch.manual_seed(0)
        return dsm.Network(C=4, layers=3, steps=2).double()

    original, patched, _ = _pair(build, memory)
    opts = [_optimizer(original), _optimizer(patched)]
    for step in range(4):
        if step == 1:  # an op swapped for a fresh one, the same in both
            for model in (original, patched):
                torch.manual_seed(5)
                model.cells[0]._ops[1]._ops[4] = dsm.SepConv(4, 4, 3, 1, 1, affine=False).double()
        if step == 2:  # a round trip through fp32, then every parameter a new object
            for model in (original, patched):
                model.float().double()
            state = copy.deepcopy(original.state_dict())
            for model in (original, patched):
                model.load_state_dict(copy.deepcopy(state), assign=True)
        if step == 3:  # a weight reshaped in place, past every registration hook
            for model in (original, patched):
                conv = model.cells[1]._ops[0]._ops[6].op[1]
                torch.manual_seed(6)
                conv.weight.data = torch.randn(conv.weight.shape[0], 1, 5, 5,
                                               dtype=torch.float64)
                conv.kernel_size, conv.padding = (5, 5), (4, 4)
        opts = [_optimizer(original), _optimizer(patched)] if step >= 1 else opts
        x, y = _batch(step)
        _assert_same(step, original, patched, _step(original, opts[0], x, y),
                     _step(patched, opts[1], x, y))


# --- the zero-weight watch -------------------------------------------------------------

def test_zero_weight_watch_rereads_a_new_zero_and_refuses_a_lost_one():
    watch = ZeroWeightWatch("cells.0._ops.0")
    w = torch.tensor([0.5, 0.0, 0.5])
    assert watch.skipped(w) == {1}
    assert watch.skipped(w) == {1}
    w2 = torch.tensor([0.0, 0.0, 1.0])  # pruned further, the model not edited
    assert watch.skipped(w2) == {1}  # checked on the device; read at the next call
    assert watch.skipped(w2) == {0, 1}
    w3 = torch.tensor([0.2, 0.3, 0.5])  # a skipped op's weight is back: it was left out
    watch.skipped(w3)
    with pytest.raises(RuntimeError, match=r"cells\.0\._ops\.0: .*ops \[0, 1\].*refresh"):
        watch.skipped(w3)
    fastdarts.refresh()
    assert watch.skipped(w3) == frozenset()
    assert watch.skipped(torch.zeros(3)) == frozenset(), "never every op"


def test_steady_state_steps_rebuild_no_cache():
    """The generation moves only when a module tree is edited: a search step edits none,
    so the caches are built once, not on every step."""
    model = fastdarts.build_supernet("darts", num_classes=5, C=4, layers=3)
    opt = torch.optim.SGD(model.weight_parameters(), lr=0.01, momentum=0.9)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    generations = []
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        generations.append(generation())
    assert generations[1] == generations[2] == generations[0]
