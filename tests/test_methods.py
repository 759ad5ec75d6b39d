"""The seed methods' mechanisms (ALGORITHMS.md §2.3-§2.6): RF-DARTS / RF-PCDARTS, SDARTS-RS /
-ADV, DrNAS with progressive learning, DARTS-. Each is compared with an exact computation,
with a reference written like the original (`fastdarts.reference.methods`) or with the
distribution it must follow."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastdarts.algorithms import DrNAS, DARTSMinus, SDARTSADV, SDARTSRS, get_algorithm
from fastdarts.algorithms.darts_minus import aux_beta_at
from fastdarts.algorithms.drnas import (concentration, edges_by_row, kl_to_uniform,
                                        mean_weights, sample_weights, stage_plan)
from fastdarts.algorithms.sdarts import attack, epsilon_at, project_rows
from fastdarts.mixed import MixedOp
from fastdarts.random_features import FrozenConv2d, freeze_random_features
from fastdarts.reference.methods import (darts_minus_beta_ref, drnas_masked_sample_ref,
                                         sdarts_clip_ref, sdarts_pgd_ref, sdarts_random_ref)
from fastdarts.search import SearchConfig, run_search
from fastdarts.spaces import build_supernet
from fastdarts.training import WeightTraining, trainable_weights

MODES = ("low", "fast", "reference")


def _supernet(space="darts", dtype=torch.float64, **kw):
    kw.setdefault("C", 4)
    kw.setdefault("layers", 3 if space != "nb201" else 1)
    return build_supernet(space, 10, 1, **kw).to(dtype)


def _batch(n=4, dtype=torch.float64):
    return torch.randn(n, 1, 8, 8, dtype=dtype), torch.randint(0, 10, (n,))


def _config(algo, space="darts", **kw):
    return SearchConfig(algo=algo, space=space, dataset="synthetic", **kw).resolved()


# ---------------------------------------------------------------------------------------
# RF-DARTS / RF-PCDARTS

def _sgd_step(model, x, y, weights=None):
    training = WeightTraining(model, 0.1, 0.9, 3e-4, 1, 0.0)
    training.flat.zero_grad()
    F.cross_entropy(model(x, weights), y).backward(inputs=training.params)
    training.optimizer.step()


@pytest.mark.parametrize("memory", MODES)
@pytest.mark.parametrize("partial_k", [None, 2])
@pytest.mark.parametrize("train_classifier", [True, False])
def test_rf_step_changes_only_batchnorm_and_classifier(memory, partial_k, train_classifier):
    model = _supernet(memory=memory, affine=True, partial_k=partial_k)
    freeze_random_features(model, seed=3, train_classifier=train_classifier)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _sgd_step(model, *_batch())
    for name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            changed = not torch.equal(before[full], p.detach())
            if isinstance(module, nn.Conv2d):
                assert not changed, f"frozen conv {full} changed"
                assert type(module) is FrozenConv2d
            elif isinstance(module, nn.Linear):
                assert changed == train_classifier, full
            elif isinstance(module, nn.BatchNorm2d):
                assert changed, full  # trained (weight decay moves even a zero gradient)
            else:  # the architecture parameters are not stepped by the weight optimiser
                assert not changed, full


def test_rf_features_depend_on_the_seed_only():
    torch.manual_seed(1)
    a = _supernet(affine=True, dtype=torch.float32)
    torch.manual_seed(2)
    b = _supernet(affine=True, dtype=torch.float32)
    freeze_random_features(a, seed=7)
    freeze_random_features(b, seed=7)
    convs_a = [m.weight for m in a.modules() if isinstance(m, nn.Conv2d)]
    convs_b = [m.weight for m in b.modules() if isinstance(m, nn.Conv2d)]
    assert all(torch.equal(u, v) for u, v in zip(convs_a, convs_b))
    c = _supernet(affine=True, dtype=torch.float32)
    freeze_random_features(c, seed=8)
    assert not torch.equal(convs_a[0], next(m.weight for m in c.modules()
                                             if isinstance(m, nn.Conv2d)))
    # Kaiming normal, fan-in, ReLU gain: w / sqrt(2 / fan_in) is standard normal
    z = torch.cat([(w / math.sqrt(2 / w[0].numel())).flatten() for w in convs_a])
    assert z.numel() > 5000
    assert z.std().item() == pytest.approx(1.0, rel=0.05)
    assert z.mean().item() == pytest.approx(0.0, abs=0.05)


def test_rf_needs_affine_batchnorm():
    with pytest.raises(ValueError, match="affine=True"):
        freeze_random_features(_supernet(), seed=0)


def test_frozen_conv_gradient_equals_conv_and_keeps_no_input():
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1, dilation=1, bias=False).double()
    conv.weight.requires_grad_(False)
    frozen = copy.deepcopy(conv)
    frozen.__class__ = FrozenConv2d
    x = torch.randn(2, 6, 9, 7, dtype=torch.float64, requires_grad=True)
    g = torch.randn_like(conv(x))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = frozen(x)
    assert not any(t.data_ptr() == x.data_ptr() for t in saved)
    assert [tuple(t.shape) for t in saved] == [tuple(conv.weight.shape)]
    (dx,) = torch.autograd.grad(y, x, g)
    (dx_ref,) = torch.autograd.grad(conv(x), x, g)
    torch.testing.assert_close(y, conv(x), rtol=0, atol=0)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-12, atol=1e-12)


def _conv_fed_tensors(model):
    """Hooks keeping every tensor a pointwise conv (one fed by another conv) reads."""
    fed = []
    handles = []
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            mods = list(m)
            for a, b in zip(mods, mods[1:]):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.Conv2d):
                    handles.append(b.register_forward_pre_hook(
                        lambda mod, args: fed.append(args[0])))
    return fed, handles


@pytest.mark.parametrize("memory", MODES)
def test_rf_fused_backward_stores_no_conv_inputs_for_weight_gradients(memory):
    """With frozen convolutions nothing keeps a conv input that only a weight gradient would
    read (the depthwise outputs inside SepConv/DilConv), in forward or in the recomputes of
    backward; with trainable convs the plain modules do keep them (the check can fail)."""
    def stored(rf: bool):
        torch.manual_seed(0)
        model = _supernet(memory=memory, affine=True, dtype=torch.float32)
        if rf:
            freeze_random_features(model, seed=0)
        fed, handles = _conv_fed_tensors(model)
        saved = []
        x, y = _batch(dtype=torch.float32)
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t,
                                                      lambda t: t):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        for h in handles:
            h.remove()
        fed_ptrs = {t.untyped_storage().data_ptr() for t in fed}
        assert fed_ptrs, "the hooks saw no pointwise conv"
        return sum(t.untyped_storage().data_ptr() in fed_ptrs for t in saved)
    assert stored(rf=True) == 0
    if memory == "reference":
        assert stored(rf=False) > 0


@pytest.mark.parametrize("memory", ["low", "fast"])
def test_rf_fused_gradients_equal_the_plain_frozen_supernet(memory):
    torch.manual_seed(0)
    fused = _supernet(memory=memory, affine=True)
    freeze_random_features(fused, seed=4)
    plain = _supernet(memory="reference", affine=True)
    plain.load_state_dict(fused.state_dict())
    for p_plain, p_fused in zip(plain.parameters(), fused.parameters()):
        p_plain.requires_grad_(p_fused.requires_grad)
    assert all(type(m) is nn.Conv2d for m in plain.modules() if isinstance(m, nn.Conv2d))
    x, y = _batch()
    for model in (fused, plain):
        F.cross_entropy(model(x), y).backward()
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11, msg=name)
        else:
            assert a.grad is None and b.grad is None


# ---------------------------------------------------------------------------------------
# SDARTS

def test_projection_equals_the_original_clip():
    rows = torch.randn(50, 7, dtype=torch.float64) * 0.6
    rows[3] = -torch.rand(7, dtype=torch.float64)  # all negative: the argmax becomes 1
    rows[4, 2] = 5.0
    out = project_rows(rows)
    torch.testing.assert_close(out, sdarts_clip_ref(rows), rtol=0, atol=1e-15)
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(50, dtype=torch.float64))
    assert out[3].tolist() == F.one_hot(rows[3].argmax(), 7).double().tolist()


def test_epsilon_schedule():
    assert epsilon_at(0, 50, 0.03, 0.3) == pytest.approx(0.03)
    assert epsilon_at(25, 50, 0.03, 0.3) == pytest.approx(0.165)
    assert epsilon_at(49, 50, 0.03, 0.3) == pytest.approx(0.03 + 0.27 * 49 / 50)


def _capture_edge_weights(model):
    """Hooks recording the weights the first normal and reduce edges receive."""
    seen = {}
    normal = next(c for c in model.cells if not c.reduction)
    reduce = next(c for c in model.cells if c.reduction)
    def hook(key):
        def record(module, args):
            seen.setdefault(key, args[1].detach().clone())
        return record
    for key, cell in (("normal", normal), ("reduce", reduce)):
        cell._ops[0].register_forward_pre_hook(hook(key))
    return seen


@pytest.mark.parametrize("space", ["darts", "s1"])
def test_sdarts_rs_feeds_the_reference_perturbation_to_the_fused_op(space):
    model = _supernet(space, memory="low")
    algo = SDARTSRS(_config("sdarts-rs", space, epochs=10))
    algo.on_epoch_start(9, model)
    eps = algo.epsilon
    assert eps == pytest.approx(0.03 + 0.27 * 0.9)
    batch = _batch()
    state = torch.get_rng_state()
    weights = algo.weight_step_weights(model, batch)
    torch.set_rng_state(state)
    ref = sdarts_random_ref([model.alphas_normal, model.alphas_reduce], eps)
    for w, r, a in zip(weights, ref, (model.alphas_normal, model.alphas_reduce)):
        assert not w.requires_grad
        torch.testing.assert_close(w, r, rtol=0, atol=1e-15)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0], dtype=w.dtype))
        assert not torch.allclose(w, F.softmax(a, -1), atol=1e-3)
    seen = _capture_edge_weights(model)
    model(_batch()[0], weights)
    torch.testing.assert_close(seen["normal"], ref[0][0], rtol=0, atol=0)
    torch.testing.assert_close(seen["reduce"], ref[1][0], rtol=0, atol=0)


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_sdarts_adv_equals_the_reference_attack_and_does_not_lower_the_loss(space):
    model = _supernet(space, memory="low")
    algo = SDARTSADV(_config("sdarts-adv", space, epochs=4))
    algo.on_epoch_start(3, model)
    x, y = _batch(8)
    model.train()
    state = torch.get_rng_state()
    weights = algo.weight_step_weights(model, (x, y))
    assert model.training  # restored after the attack in eval mode
    assert all(p.grad is None for p in model.parameters())  # no weight or alpha gradients
    torch.set_rng_state(state)
    arch = model.arch_parameters()
    ref = sdarts_pgd_ref(lambda ws: F.cross_entropy(model(x, tuple(ws)), y), model, arch,
                         algo.epsilon, 7)
    for w, r in zip(weights, ref):
        torch.testing.assert_close(w, r, rtol=0, atol=1e-12)
        assert (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0], dtype=w.dtype))
    model.eval()
    with torch.no_grad():
        p0 = tuple(F.softmax(a, -1) for a in arch)
        assert F.cross_entropy(model(x, weights), y) >= F.cross_entropy(model(x, p0), y)


def test_sdarts_adv_reverts_when_the_attack_lowers_the_loss():
    p0 = (F.softmax(torch.randn(5, 4, dtype=torch.float64), -1),)
    dummy = nn.Linear(1, 1)
    peak = attack(lambda ws: -((ws[0] - p0[0]) ** 2).sum(), dummy, p0, 0.2, 7)
    assert torch.equal(peak[0], p0[0])  # any move lowers this loss: reverted to p0
    uphill = attack(lambda ws: ws[0][:, 0].sum(), dummy, p0, 0.2, 7)
    assert (uphill[0][:, 0] > p0[0][:, 0]).all()
    # the pre-projection iterate stays within eps of p0, so column 0 rises by at most eps
    # before the renormalisation, which can only add the mass taken from the other columns
    assert (uphill[0][:, 0] - p0[0][:, 0]).max() <= 0.2 * 4


# ---------------------------------------------------------------------------------------
# DrNAS

def _dirichlet_moments(beta):
    b0 = beta.sum(-1, keepdim=True)
    return beta / b0, beta * (b0 - beta) / (b0 ** 2 * (b0 + 1))


def test_drnas_samples_follow_the_dirichlet_moments():
    theta = torch.tensor([[0.3, -0.5, 1.2, 0.0], [-2.0, 0.5, 0.1, 2.5]], dtype=torch.float64)
    beta = F.elu(theta) + 1
    torch.testing.assert_close(concentration(theta), beta)
    samples = torch.stack([sample_weights(theta) for _ in range(20000)])
    mean, var = _dirichlet_moments(beta)
    torch.testing.assert_close(samples.mean(0), mean, rtol=0, atol=4e-3)
    torch.testing.assert_close(samples.var(0), var, rtol=0.05, atol=2e-4)
    torch.testing.assert_close(mean_weights(theta), mean)


def test_drnas_masked_sampling_equals_dirichlet_of_the_kept_ops():
    theta = torch.tensor([[0.3, -0.5, 1.2, 0.0, 0.7]], dtype=torch.float64)
    kept = torch.tensor([[True, False, True, True, False]])
    kept_idx = kept.nonzero()[:, 1].view(1, -1)
    beta = concentration(theta)
    ours = torch.stack([sample_weights(theta, kept_idx) for _ in range(20000)])
    ref = torch.stack([drnas_masked_sample_ref(beta, kept) for _ in range(20000)])
    assert (ours[..., ~kept[0]] == 0).all() and (ref[..., ~kept[0]] == 0).all()
    mean, var = _dirichlet_moments(beta[:, kept[0]])
    for s in (ours, ref):
        torch.testing.assert_close(s[..., kept[0]].mean(0), mean, rtol=0, atol=4e-3)
        torch.testing.assert_close(s[..., kept[0]].var(0), var, rtol=0.05, atol=2e-4)
    torch.testing.assert_close(mean_weights(theta, kept_idx)[:, kept[0]], mean)


def test_drnas_pathwise_gradient_matches_the_gradient_of_the_mean():
    """E[dw/dtheta] of reparameterised samples = d E[w] / dtheta = d(beta_i / beta_0)/dtheta."""
    theta = torch.tensor([[0.4, -0.3, 0.9]], dtype=torch.float64, requires_grad=True)
    c = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64)
    n = 20000
    mc = torch.autograd.grad((sample_weights(theta.expand(n, 3)) * c).sum() / n, theta)[0]
    exact = torch.autograd.grad((mean_weights(theta) * c).sum(), theta)[0]
    torch.testing.assert_close(mc, exact, rtol=0, atol=0.02)


def test_drnas_tiny_concentrations_stay_finite():
    theta = torch.tensor([[-40.0, -40.0, 3.0]], requires_grad=True)
    w = sample_weights(theta)
    w[0, 2].backward()
    assert torch.isfinite(w).all() and torch.isfinite(theta.grad).all()


def test_drnas_kl_regulariser_is_zero_at_the_uniform_dirichlet():
    assert kl_to_uniform(torch.zeros(14, 7)).item() == pytest.approx(0.0, abs=1e-6)
    assert kl_to_uniform(torch.full((14, 7), 0.5)).item() > 0
    algo = DrNAS(_config("drnas", drnas_reg="kl", init_channels=12))
    model = build_supernet("darts", 10, 1, C=12, layers=3, **algo.supernet_options())
    algo.setup(model)
    assert algo.arch_optimizer.param_groups[0]["weight_decay"] == 0.0
    algo = DrNAS(_config("drnas", init_channels=12))
    algo.setup(model)
    assert algo.arch_optimizer.param_groups[0]["weight_decay"] == 1e-3


def test_drnas_stage_plan_and_defaults():
    assert stage_plan(50, (6, 4), (7, 4)) == [(0, 6, 7), (25, 4, 4)]
    assert DrNAS(_config("drnas", "nb201", epochs=100)).stages() == [(0, 4, 5), (50, 2, 3)]
    assert DrNAS(_config("drnas", "s2", epochs=10)).stages() == [(0, 6, 2), (5, 4, 2)]
    assert DrNAS(_config("drnas", drnas_progressive=False, epochs=9)).stages() == [(0, 1, 7)]
    cfg = SearchConfig(algo="drnas", dataset="cifar10").resolved()
    assert (cfg.epochs, cfg.lr, cfg.lr_min, cfg.arch_lr, cfg.init_channels, cfg.layers) == (
        50, 0.1, 0.0, 6e-4, 36, 20)
    assert cfg.arch_warmup_epochs == 10  # per stage of 25
    assert SearchConfig(algo="drnas", space="nb201", dataset="cifar10").resolved(
    ).arch_warmup_epochs == 10  # per stage of 50
    assert SearchConfig(algo="drnas", dataset="digits").resolved().init_channels == 12
    with pytest.raises(ValueError, match="must not grow"):
        stage_plan(10, (4, 6), (7, 4))
    with pytest.raises(ValueError, match="order"):
        DrNAS(_config("drnas", order=2))


def test_skipped_ops_equal_zero_weights():
    op = MixedOp(4, 1, memory="fast").double()
    x = torch.randn(2, 4, 6, 6, dtype=torch.float64, requires_grad=True)
    w = torch.softmax(torch.randn(8, dtype=torch.float64), 0)
    w = torch.where(torch.tensor([0, 1, 0, 1, 1, 0, 1, 1]).bool(), w, torch.zeros_like(w))
    full = op(x, w)
    (gx_full,) = torch.autograd.grad(full.sum(), x)
    op.skip_ops([0, 2, 5])
    part = op(x, w)
    (gx_part,) = torch.autograd.grad(part.sum(), x)
    torch.testing.assert_close(part, full, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx_part, gx_full, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at least one op"):
        op.skip_ops(range(8))


def _drnas_setup(space="darts", **kw):
    cfg = _config("drnas", space, epochs=4, init_channels=12, layers=3,
                  arch_warmup_epochs=1, **kw)
    algo = DrNAS(cfg)
    torch.manual_seed(0)
    model = build_supernet(space, 10, 1, C=12, layers=cfg.layers if space != "nb201" else 1,
                           memory="low", **algo.supernet_options())
    training = WeightTraining(model, 0.1, 0.9, 3e-4, cfg.epochs, 0.0)
    algo.setup(model, training.optimizer, training.flat)
    return algo, model, training


def _weight_step(algo, model, training, batch):
    x, y = batch
    weights = algo.weight_step_weights(model, batch)
    training.flat.zero_grad()
    loss = F.cross_entropy(model(x, weights), y)
    loss.backward(inputs=training.params)
    training.optimizer.step()
    return loss.item()


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_drnas_stage_transition_prunes_widens_and_keeps_training(space):
    algo, model, training = _drnas_setup(space)
    batch = _batch(8, torch.float32)
    algo.on_epoch_start(0, model, training)
    for _ in range(2):
        _weight_step(algo, model, training, batch)
    for a in model.arch_parameters():  # give the ranking something to rank
        a.data.copy_(torch.randn_like(a))
    arch = [a.detach().clone() for a in model.arch_parameters()]
    edges = [e for rows in edges_by_row(model) for row in rows for e in row]
    k0 = edges[0].k
    old_params = {id(p): p for p in training.params}
    old_state = {id(p): training.optimizer.state[p]["momentum_buffer"].clone()
                 for p in training.params}
    (_, k1, n1), = [s for s in algo.stages() if s[0] == 2]
    algo.on_epoch_start(2, model, training)  # stage 2 starts at epoch 2 of 4
    assert algo.stage == 1 and all(e.k == k1 < k0 for e in edges)
    for a, before, mask in zip(model.arch_parameters(), arch, algo.kept):
        assert (mask.sum(1) == n1).all()
        top = before.topk(n1, dim=1).indices
        assert torch.equal(mask, torch.zeros_like(mask).scatter_(1, top, True))
        assert torch.equal(a[mask], before[mask]) and (a[~mask] == 0).all()
    for mask, rows in zip(algo.kept, edges_by_row(model)):
        for row, row_edges in zip(mask.tolist(), rows):
            for e in row_edges:
                assert e.__dict__["skipped_ops"] == {k for k, keep in enumerate(row)
                                                     if not keep}
    # the optimiser holds the new weights, every one a view of the new flat buffer, and
    # carried momentum: unchanged weights keep theirs, widened ones start with the old
    held = [p for g in training.optimizer.param_groups for p in g["params"]]
    assert [id(p) for p in held] == [id(p) for p in training.params]
    assert set(map(id, trainable_weights(model))) == set(map(id, held))
    assert algo.flat_weights is training.flat
    base = training.flat.data.untyped_storage().data_ptr()
    assert all(p.untyped_storage().data_ptr() == base for p in training.params)
    widened = 0
    for p in training.params:
        m = training.optimizer.state[p]["momentum_buffer"]
        assert m.shape == p.shape
        if id(p) in old_params:
            torch.testing.assert_close(m, old_state[id(p)], rtol=0, atol=0)
        else:
            widened += 1
            old = old_state[id(next(q for q in old_params.values() if q.dim() == p.dim()
                                    and q.shape[0] <= p.shape[0]))]
            assert m.abs().sum() > 0
    assert widened > 0
    # one sample per cell type, pruned ops exactly 0
    w = algo.mixing_weights(model, "weight")
    for wi, mask in zip(w, algo.kept):
        assert (wi[~mask] == 0).all()
        torch.testing.assert_close(wi.sum(-1), torch.ones(wi.shape[0]))
    losses = [_weight_step(algo, model, training, batch) for _ in range(3)]
    assert all(math.isfinite(v) for v in losses)
    # the warm-up (1 epoch here) restarts in every stage
    assert [algo.arch_updates_enabled(e) for e in range(4)] == [False, True, False, True]
    # the genotype never names a pruned op, even where a pruned theta (0) is the largest
    for a, mask in zip(model.arch_parameters(), algo.kept):
        a.data[mask] = -5.0
    geno = algo.genotype(model)
    if space == "nb201":
        names = [op for node in geno.nodes for op, _ in node]
        kept_names = [{model.primitives[k] for k in range(5) if algo.kept[0][r, k]}
                      for r in range(6)]
        rows = [model.edge_keys.index(f"{i}<-{j}") for i, node in enumerate(geno.nodes, 1)
                for _, j in node]
        assert all(n in kept_names[r] for n, r in zip(names, rows))
    else:
        ops = model.normal_ops[0]
        for name, _ in geno.normal:
            assert any(algo.kept[0][:, ops.index(name)].tolist())


def test_drnas_resume_across_a_stage_transition_is_exact(tmp_path):
    def cfg(run_dir):
        return SearchConfig(algo="drnas", dataset="digits", epochs=4, layers=3,
                            steps_per_epoch=2, arch_warmup_epochs=0, run_dir=str(run_dir),
                            progress=False)
    full = run_search(cfg(tmp_path / "full"), log=lambda *a: None)
    run_search(cfg(tmp_path / "cut"), stop_after_epochs=2, log=lambda *a: None)
    resumed = run_search(cfg(tmp_path / "cut"), resume=True, log=lambda *a: None)
    assert [h["val_loss"] for h in resumed.history] == [h["val_loss"] for h in full.history]
    assert resumed.history[-1]["weights"] == full.history[-1]["weights"]
    assert resumed.test_accuracy == full.test_accuracy
    # the cut came right after the last epoch of stage 1: the resumed run made the transition
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=False)
    assert a["algorithm"]["stage"] == b["algorithm"]["stage"] == 1
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


# ---------------------------------------------------------------------------------------
# DARTS-

def test_darts_minus_beta_schedule():
    values = [aux_beta_at(t, 50) for t in range(50)]
    assert values[0] == 1.0 and values[1] == pytest.approx(0.98)
    assert values[-1] == pytest.approx(0.02) and min(values) > 0
    assert values == [pytest.approx(darts_minus_beta_ref(t, 50)) for t in range(50)]
    model = _supernet(aux_skip=True)
    algo = DARTSMinus(_config("darts-minus", epochs=50))
    algo.on_epoch_start(49, model)
    assert model.aux_beta.item() == pytest.approx(0.02)


@pytest.mark.parametrize("space", ["darts", "s3", "nb201"])
@pytest.mark.parametrize("memory", ["low", "fast"])
def test_darts_minus_aux_skip_is_folded_into_the_fused_sum(space, memory):
    """Supernet output and every gradient equal sum_o softmax(alpha)_o o(x) + beta aux(x)
    computed by the plain modules, with the aux a stride-matched skip without affine BN."""
    torch.manual_seed(0)
    fused = _supernet(space, memory=memory, aux_skip=True)
    plain = _supernet(space, memory="reference", aux_skip=True)
    plain.load_state_dict(fused.state_dict())
    for m in (fused, plain):
        m.set_aux_beta(0.37)
    x, y = _batch()
    for m in (fused, plain):
        F.cross_entropy(m(x), y).backward()
    for (name, a), b in zip(fused.named_parameters(), plain.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-11, msg=name)
    if space != "nb201":
        reduce = next(c for c in fused.cells if c.reduction)
        aux = reduce._ops[0]._ops[-1]
        assert type(aux).__name__ == "FactorizedReduce" and not aux.bn.affine
        assert len(reduce._ops[0]._ops) == len(fused.reduce_ops[0]) + 1
    # beta really enters: another beta changes the output
    with torch.no_grad():
        out = fused(x)
        fused.set_aux_beta(0.0)
        assert not torch.allclose(out, fused(x))


def test_darts_minus_genotype_ignores_the_aux_skip():
    torch.manual_seed(0)
    with_aux = _supernet(aux_skip=True)
    without = _supernet()
    without.load_state_dict({k: v for k, v in with_aux.state_dict().items()
                             if k in without.state_dict()}, strict=False)
    assert with_aux.alphas_normal.shape == (14, 8)
    with_aux.set_aux_beta(100.0)
    assert with_aux.genotype() == without.genotype()
    seen = _capture_edge_weights(with_aux)
    with torch.no_grad():
        with_aux(_batch()[0])
    w = F.softmax(with_aux.alphas_normal, -1)[0]
    torch.testing.assert_close(seen["normal"], torch.cat([w, w.new_tensor([100.0])]))


def test_methods_reject_what_they_cannot_do():
    with pytest.raises(ValueError, match="partial_k"):
        build_supernet("darts", 10, 1, C=8, layers=3, partial_k=2, aux_skip=True)
    with pytest.raises(ValueError, match="partial_k"):
        get_algorithm("drnas", _config("drnas", partial_k=2))
    with pytest.raises(ValueError, match="sdarts_epsilon"):
        SearchConfig(algo="sdarts-rs", sdarts_epsilon=1.5).resolved()
    with pytest.raises(ValueError, match="drnas_reg"):
        SearchConfig(algo="drnas", drnas_reg="l1").resolved()
