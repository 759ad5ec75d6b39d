"""Measure one supernet step in this process: bytes autograd keeps per image, peak memory over
the whole step (forward + backward) and the step time. Prints one JSON line.

    python benchmarks/memory_probe.py --space darts --mode low --batch 8 [--device cuda]

CPU peak: the resident-set high-water mark (VmHWM, reset through /proc/self/clear_refs) minus
the resident set before the step; run with MALLOC_MMAP_THRESHOLD_ fixed (bench_mixed_op.py
does) so freed activations go back to the OS and the peak is not hidden by reuse.
GPU peak: torch.cuda.max_memory_allocated minus the allocation before the step.
Modes: reference | checkpoint (torch.utils.checkpoint on every cell) | fast | low.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import time

import torch
import torch.nn.functional as F
import torch.utils.checkpoint as tcp

from fastdarts.spaces import build_supernet

MODES = ("reference", "checkpoint", "fast", "low")


def probe_env(root) -> dict:
    """Environment of a fresh probe process: every allocation of 4 KiB or more is its own
    mapping, returned to the system when freed, so the resident-set peak follows the live
    tensors (small tensors would otherwise stay in the heap and hide the peak)."""
    return dict(os.environ, MALLOC_MMAP_THRESHOLD_="4096", MALLOC_TRIM_THRESHOLD_="0",
                PYTHONPATH=str(root))


def build(space: str, mode: str, C: int, layers: int | None, device, channels_last: bool,
          seed: int = 0, stem: str = "cifar", num_classes: int = 10,
          partial_k: int | None = None, primitives: tuple[str, ...] | None = None,
          edge_normalisation: bool = True):
    torch.manual_seed(seed)
    memory = "reference" if mode in ("reference", "checkpoint") else mode
    extra = {} if partial_k is None else {"partial_k": partial_k}
    if primitives is not None:
        extra["primitives"] = tuple(primitives)
    if not edge_normalisation:
        extra["edge_normalisation"] = False
    model = build_supernet(space, num_classes, C=C, layers=layers, memory=memory,
                           stem=stem, **extra).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if mode == "checkpoint":
        for cell in model.cells:
            cell.forward = checkpointed(cell)
    return model


def checkpointed(cell):
    """`cell` run under torch.utils.checkpoint (non-reentrant): what a user would try first."""
    plain = cell.forward

    def forward(*args):
        return tcp.checkpoint(plain, *args, use_reentrant=False)
    return forward


def step(model, x, y):
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss


def saved_bytes(model, x, y) -> int:
    """Unique storages autograd keeps for backward during one forward (DESIGN.md §2)."""
    seen: dict[int, int] = {}

    def pack(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    del loss
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for ptr, n in seen.items() if ptr not in params)


# Dispatcher ops that only allocate or make a view: they run no device kernel.
_NO_KERNEL = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
              "promote_types", "result_type", "is_same_size", "lift_fresh", "set_"}
# Device kernels one fastdarts call launches with the CUDA backend (csrc/*.cu; 1 if not
# listed): the reductions are a partial and a finalize kernel. An edge call (`*_edge`) runs
# its ops in batches of 8 (csrc/mixed_op.cuh), one launch set per batch; no edge of our
# supernets has more than 8 ops. The depthwise backward runs our C++ kernel on the CPU and
# cuDNN's one convolution_backward on a GPU.
_CUDA_LAUNCHES = {"bn_stats": 2, "bn_grad_reduce": 2, "bn_stats_edge": 2,
                  "bn_grad_reduce_edge": 2, "hvp_sq_norm": 2, "weighted_sum_bwd": 2}


# Where an edge call (`*_edge`: every op of an edge at once) takes its list of op outputs.
_EDGE_OUTPUTS_ARG = {"bn_stats_edge": 0, "bn_accumulate_edge": 1, "bn_grad_reduce_edge": 1,
                     "bn_grad_input_edge": 1}


class KernelCalls(dict):
    """{kernel name: calls}; `ops`: {per-op primitive: ops run}, where an edge call counts
    each of its ops (`bn_stats_edge` on 3 outputs: 3 `bn_stats` ops) and a per-op call one."""

    def __init__(self):
        super().__init__()
        self.ops: dict[str, int] = {}

    def add(self, name: str, args) -> None:
        self[name] = self.get(name, 0) + 1
        at = _EDGE_OUTPUTS_ARG.get(name)
        op, n = (name, 1) if at is None else (name[:-len("_edge")], len(args[at]))
        self.ops[op] = self.ops.get(op, 0) + n


@contextlib.contextmanager
def kernel_calls(include_reference: bool = False):
    """Counts every call of the backends' kernels (the `Backend` staticmethods) while the
    block runs: yields a `KernelCalls`, filled as they happen; the backends are restored
    on exit. Calls that the reference backend answers with aten ops are left out unless
    `include_reference` (a dispatch mode counts those ops already)."""
    from fastdarts.backends import BACKENDS, Backend

    names = [n for n, v in vars(Backend).items() if isinstance(v, staticmethod)]
    calls = KernelCalls()
    originals = {}
    for cls in BACKENDS.values():
        for name in names:
            original = cls.__dict__.get(name)
            if original is None:  # inherited: counted through the class that defines it
                continue
            originals[(cls, name)] = original
            fn = original.__func__ if isinstance(original, staticmethod) else original
            if not include_reference and fn is getattr(BACKENDS["reference"], name):
                continue

            def counted(*args, _fn=fn, _name=name, **kwargs):
                calls.add(_name, args)
                return _fn(*args, **kwargs)
            setattr(cls, name, staticmethod(counted))
    try:
        yield calls
    finally:
        for (cls, name), original in originals.items():
            setattr(cls, name, original)


def host_work(model, x, y) -> dict:
    """What one step asks of the host, counted (the GPU step at these sizes is bound by the
    host, so this is what `fast` and `low` must not add to): every dispatcher op, those that
    run a device kernel (views and bare allocations excluded), and the fastdarts kernel calls,
    with the device launches they make on CUDA. Deterministic, so comparable across machines
    and loads, unlike CPU times here."""
    from torch.utils._python_dispatch import TorchDispatchMode

    counts = {"aten_ops": 0, "aten_kernel_ops": 0}

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            counts["aten_ops"] += 1
            if not func.is_view and func.overloadpacket.__name__ not in _NO_KERNEL:
                counts["aten_kernel_ops"] += 1
            return func(*args, **(kwargs or {}))

    with kernel_calls() as calls, Count():
        step(model, x, y)
    counts["fastdarts_calls"] = dict(calls)
    # On a GPU (CUDA backend): the aten kernels plus our launches. Measured on the CPU this
    # is an estimate: a CPU kernel's own aten helpers (the depthwise dx pads g) are counted
    # too, which the CUDA path does not run.
    counts["cuda_launches_estimate"] = counts["aten_kernel_ops"] + sum(
        n * _CUDA_LAUNCHES.get(name, 1) for name, n in calls.items())
    return counts


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_bytes(model, x, y, device) -> int:
    model.zero_grad(set_to_none=False)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(model, x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
    base = _rss_kib("VmRSS")
    step(model, x, y)
    return (_rss_kib("VmHWM") - base) * 1024


def measure(space, mode, batch, size, C, layers, device, channels_last, repeats, stem,
            num_classes, partial_k=None, primitives=None, edge_normalisation=True):
    device = torch.device(device)
    model = build(space, mode, C, layers, device, channels_last, stem=stem,
                  num_classes=num_classes, partial_k=partial_k, primitives=primitives,
                  edge_normalisation=edge_normalisation)
    g = torch.Generator().manual_seed(1)
    in_ch = 3
    x = torch.randn(batch, in_ch, size, size, generator=g).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    step(model, x, y)  # warm-up: allocates .grad, caches, autotuning
    step(model, x, y)
    peak = peak_bytes(model, x, y, device)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step(model, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    saved = saved_bytes(model, x, y)
    host = host_work(model, x, y)
    nbt = sum(int(m.num_batches_tracked) for m in model.modules()
              if isinstance(m, torch.nn.BatchNorm2d) and m.num_batches_tracked is not None)
    bns = sum(1 for m in model.modules()
              if isinstance(m, torch.nn.BatchNorm2d) and m.num_batches_tracked is not None)
    return {
        "space": space, "mode": mode, "batch": batch, "size": size, "C": C, "layers": layers,
        "stem": stem, "partial_k": partial_k,
        "device": str(device), "channels_last": channels_last,
        "saved_bytes_per_image": saved / batch, "peak_bytes": peak,
        "step_s_median": sorted(times)[len(times) // 2], "step_s_all": times,
        # steps run so far: 2 warm-up + peak + repeats + the counted step (+1: the
        # saved-bytes pass is forward only but updates BN statistics once more)
        "bn_batches_tracked_per_bn": nbt / max(bns, 1),
        "steps_run": 3 + repeats + 2,
        "host_work": host,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--space", default="darts")
    ap.add_argument("--mode", choices=MODES, default="low")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--C", type=int, default=16)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--stem", default="cifar")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--partial-k", type=int, default=None, help="PC-DARTS partitions K")
    ap.add_argument("--primitives", default=None, help="comma-separated ops of every edge")
    ap.add_argument("--no-edge-normalisation", action="store_true",
                    help="partial-channel edges without betas (DrNAS)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args(argv)
    print(json.dumps(measure(a.space, a.mode, a.batch, a.size, a.C, a.layers, a.device,
                             not a.no_channels_last, a.repeats, a.stem, a.num_classes,
                             a.partial_k, a.primitives and tuple(a.primitives.split(",")),
                             not a.no_edge_normalisation)))


if __name__ == "__main__":
    main()
