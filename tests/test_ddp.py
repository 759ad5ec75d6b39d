"""`low` under DistributedDataParallel (DESIGN.md §3b: running candidate paths inside an
autograd Function's backward has broken DDP's reducer elsewhere). Two CPU processes (gloo),
each with its own batch; the averaged gradients must equal the mean of the per-batch
gradients of the reference supernet, and BN statistics must be updated once per step."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from fastdarts.spaces import build_supernet

WORLD = 2


def _model(memory):
    torch.manual_seed(0)
    # fp64, so that the comparison is tight (fp32 rounding differs between the paths).
    return build_supernet("darts", 10, C=4, layers=3, memory=memory).double()


def _batch(rank):
    g = torch.Generator().manual_seed(100 + rank)
    return (torch.randn(3, 3, 8, 8, generator=g, dtype=torch.float64),
            torch.randint(0, 10, (3,), generator=g))


MODES = ("low", "fast")


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        for memory in MODES:
            model = torch.nn.parallel.DistributedDataParallel(_model(memory))
            x, y = _batch(rank)
            for _ in range(2):  # two steps: the reducer must be ready again after the first
                model.zero_grad(set_to_none=True)
                F.cross_entropy(model(x), y).backward()
            if rank == 0:
                module = model.module
                torch.save({"grads": {n: p.grad for n, p in module.named_parameters()},
                            "buffers": dict(module.named_buffers())},
                           os.path.join(out_dir, f"{memory}.pt"))
    finally:
        dist.destroy_process_group()


def _expected():
    """Mean over ranks of the reference supernet's gradients (each rank's batch alone)."""
    grads = {}
    for rank in range(WORLD):
        model = _model("reference")
        x, y = _batch(rank)
        F.cross_entropy(model(x), y).backward()
        for n, p in model.named_parameters():
            grads[n] = grads.get(n, 0) + p.grad / WORLD
    return grads


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_ddp_gradients_equal_the_mean_of_per_rank_reference_gradients():
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), tmp), nprocs=WORLD, join=True)
        runs = {m: torch.load(os.path.join(tmp, f"{m}.pt")) for m in MODES}
    expected = _expected()
    for memory, got in runs.items():
        _check(memory, got, expected)


def _check(memory, got, expected):
    assert set(got["grads"]) == set(expected)
    for name, g in expected.items():
        assert got["grads"][name] is not None, f"{memory} {name}: no gradient under DDP"
        torch.testing.assert_close(got["grads"][name], g, rtol=1e-9, atol=1e-12,
                                   msg=lambda m: f"{memory} {name}: {m}")
    # Two steps ran: every BN counted exactly 2 batches (recompute did not count again).
    tracked = {n: int(b) for n, b in got["buffers"].items() if n.endswith("num_batches_tracked")}
    assert tracked and set(tracked.values()) == {2}, (memory, tracked)
