"""Which implementation runs a fused op: triton | cuda | cpu | reference.

Each backend is a class with `NAME`, the devices and dtypes it handles, `unavailable_reasons()`
(why it cannot run at all: not built, Triton missing, no interpreter) and
`not_supported_reasons(*tensors)` (why it cannot run these inputs). Selection, per call:

* `backend=` argument, else `FASTDARTS_BACKEND`, else `auto`;
* an explicit backend that cannot run raises `NotImplementedError` listing every backend's
  reasons; it never falls back silently;
* `auto` tries, for CUDA tensors, cuda then triton (measured on an H100: a DARTS supernet
  step in `low` mode takes 0.68 s with the CUDA kernels and 0.95 s with Triton's, whose
  Python launcher costs more per launch at these sizes; `benchmarks/results/H100-2026-11-23-*`),
  for CPU tensors the C++ kernels; then the reference, with one warning naming why the fast
  backends could not run.
"""
from __future__ import annotations

import os
import warnings

import torch

from . import _ext
from .reference import (bn_accumulate_edge_ref, bn_accumulate_ref, bn_grad_input_edge_ref,
                        bn_grad_input_ref, bn_grad_reduce_edge_ref, bn_grad_reduce_ref,
                        bn_stats_edge_ref, bn_stats_ref, depthwise_conv_bwd_ref,
                        hvp_combine_ref, hvp_perturb_ref, hvp_sq_norm_ref,
                        hvp_virtual_step_ref, partial_combine_bwd_ref, partial_combine_fwd_ref,
                        weighted_sum_ref)

__all__ = ["Backend", "BACKENDS", "select_backend", "backend_report", "auto_picks", "ENV_VAR"]

ENV_VAR = "FASTDARTS_BACKEND"
_CHOICES = ("auto", "triton", "cuda", "cpu", "reference")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


class Backend:
    NAME = ""
    DEVICES: tuple[str, ...] = ()
    DTYPES: tuple[torch.dtype, ...] = ()

    @classmethod
    def unavailable_reasons(cls) -> list[str]:
        return []

    @classmethod
    def is_available(cls) -> bool:
        return not cls.unavailable_reasons()

    @classmethod
    def devices(cls) -> tuple[str, ...]:
        return cls.DEVICES

    @classmethod
    def not_supported_reasons(cls, *tensors: torch.Tensor) -> list[str]:
        reasons = list(cls.unavailable_reasons())
        for t in tensors:
            if t.device.type not in cls.devices():
                reasons.append(f"device {t.device.type} not in {list(cls.devices())}")
                break
        for t in tensors:
            if t.is_floating_point() and t.dtype not in cls.DTYPES:
                reasons.append(f"dtype {_dtype_name(t.dtype)} not in "
                               f"{[_dtype_name(d) for d in cls.DTYPES]}")
                break
        return reasons

    # weighted sum: y (K, M) contiguous; w (K,) in the accumulation dtype
    @staticmethod
    def weighted_sum_fwd(y, w):
        raise NotImplementedError

    @staticmethod
    def weighted_sum_bwd(y, w, g, need_dy):
        raise NotImplementedError

    # Fused mixed-op tail (csrc/mixed_op.h). Activations (N, C, H, W) share one layout
    # (NCHW or channels_last); vectors and w are in the accumulation dtype.
    @staticmethod
    def bn_stats(z, eps, running_mean=None, running_var=None, num_batches_tracked=None,
                 momentum=0.1):
        """-> (mean, var, rstd) per channel; with running buffers (accumulation dtype, and
        optionally `num_batches_tracked`) also nn.BatchNorm2d's training update of them."""
        raise NotImplementedError

    @staticmethod
    def bn_accumulate(acc, z, w, k, mean, rstd, gamma, beta, init):
        """acc (=|+=) w[k] * (gamma * (z - mean) * rstd + beta), in place."""
        raise NotImplementedError

    @staticmethod
    def bn_grad_reduce(g, z, mean, rstd, gamma=None, beta=None, dw=None, k=0):
        """-> (sum g, sum g * xhat) per channel; with `dw` ((K,), accumulation dtype) also
        writes dw[k] = sum_c gamma_c * sum_gx_c + beta_c * sum_g_c in the same call."""
        raise NotImplementedError

    @staticmethod
    def bn_grad_input(g, z, w, k, mean, rstd, gamma, sum_g, sum_gx, batch_stats):
        """-> dz through the BN tail (batch or fixed statistics)."""
        raise NotImplementedError

    # The same for every op of an edge in one call (lists with one entry per op, all z of
    # one shape, layout and dtype): on CUDA one launch set per 8 ops instead of per op.
    # Results equal the per-op calls in op order (fastdarts.reference's `*_edge_ref`).
    @staticmethod
    def bn_stats_edge(zs, eps, running_means, running_vars, num_batches_tracked, momenta):
        """-> ([mean_j], [var_j], [rstd_j]), (C,) per op."""
        raise NotImplementedError

    @staticmethod
    def bn_accumulate_edge(acc, zs, w, ks, means, rstds, gammas, betas, init):
        """acc (=|+=) sum_j w[k_j] * (gamma_j * (z_j - mean_j) * rstd_j + beta_j)."""
        raise NotImplementedError

    @staticmethod
    def bn_grad_reduce_edge(g, zs, means, rstds, gammas, betas, dw, ks):
        """-> ([sum g], [sum g * xhat_j]), (C,) per op; with `dw` also every dw[k_j]."""
        raise NotImplementedError

    @staticmethod
    def bn_grad_input_edge(g, zs, w, ks, means, rstds, gammas, sum_gs, sum_gxs, batch_stats):
        """-> [dz_j]."""
        raise NotImplementedError

    # Partial-channel combine (csrc/partial_channel.h). x dense (NCHW or channels_last);
    # beta a 0-dim tensor in the accumulation dtype or None (1).
    @staticmethod
    def partial_combine_fwd(out, m, x, beta, K, stride, accumulate):
        """-> out (=|+=) shuffle([m, beta * bypass(x)]); a new tensor when out is None."""
        raise NotImplementedError

    @staticmethod
    def partial_combine_bwd(g, x, beta, K, stride):
        """-> (g_m, dx (bypass channels; zero elsewhere), dbeta of the bypass part)."""
        raise NotImplementedError

    # Finite-difference HVP (csrc/hvp.h): flat 1-D buffers of one dtype; sq_norm a 1-value
    # tensor in the accumulation dtype.
    @staticmethod
    def hvp_virtual_step(out, w, g, m, lr, momentum, weight_decay):
        """out = w - lr * (momentum * m + g + weight_decay * w) (m None: 0), in place."""
        raise NotImplementedError

    @staticmethod
    def hvp_sq_norm(v):
        """-> sum v^2 (1 value, on v's device)."""
        raise NotImplementedError

    @staticmethod
    def hvp_perturb(out, w, v, sq_norm, r, sign):
        """out = w + sign * eps * v with eps = r / ||v|| (r when v = 0), in place."""
        raise NotImplementedError

    @staticmethod
    def hvp_combine(g_val, g_plus, g_minus, sq_norm, r, scale):
        """-> g_val + scale * (g_plus - g_minus) / (2 eps) (g_val None: 0)."""
        raise NotImplementedError

    # Depthwise-convolution backward (csrc/depthwise_conv.h): x, g (N, C, H, W) and
    # (N, C, Ho, Wo), weight (C, 1, kh, kw); stride, padding, dilation pairs.
    @staticmethod
    def depthwise_conv_bwd(g, x, weight, stride, padding, dilation, need_dx, need_dweight):
        """-> (dx or None, dweight or None)."""
        raise NotImplementedError


class ReferenceBackend(Backend):
    NAME = "reference"
    DEVICES = ("cpu", "cuda")
    DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)

    @staticmethod
    def weighted_sum_fwd(y, w):
        return weighted_sum_ref(y, w)

    @staticmethod
    def weighted_sum_bwd(y, w, g, need_dy):
        dy = w.to(y.dtype)[:, None] * g[None, :] if need_dy else None
        dw = (y.to(w.dtype) * g.to(w.dtype)[None, :]).sum(dim=1)
        return dy, dw

    bn_stats = staticmethod(bn_stats_ref)
    bn_accumulate = staticmethod(bn_accumulate_ref)
    bn_grad_reduce = staticmethod(bn_grad_reduce_ref)
    bn_grad_input = staticmethod(bn_grad_input_ref)
    bn_stats_edge = staticmethod(bn_stats_edge_ref)
    bn_accumulate_edge = staticmethod(bn_accumulate_edge_ref)
    bn_grad_reduce_edge = staticmethod(bn_grad_reduce_edge_ref)
    bn_grad_input_edge = staticmethod(bn_grad_input_edge_ref)
    partial_combine_fwd = staticmethod(partial_combine_fwd_ref)
    partial_combine_bwd = staticmethod(partial_combine_bwd_ref)
    hvp_virtual_step = staticmethod(hvp_virtual_step_ref)
    hvp_sq_norm = staticmethod(hvp_sq_norm_ref)
    hvp_perturb = staticmethod(hvp_perturb_ref)
    hvp_combine = staticmethod(hvp_combine_ref)
    depthwise_conv_bwd = staticmethod(depthwise_conv_bwd_ref)


class CpuBackend(Backend):
    NAME = "cpu"
    DEVICES = ("cpu",)
    DTYPES = (torch.float32, torch.float64)

    @classmethod
    def unavailable_reasons(cls):
        if _ext.C is None:
            return [f"fastdarts._C is not importable ({_ext.IMPORT_ERROR}); {_ext.BUILD_HINT}"]
        return []

    @staticmethod
    def weighted_sum_fwd(y, w):
        return _ext.C.weighted_sum_fwd(y, w)

    @staticmethod
    def weighted_sum_bwd(y, w, g, need_dy):
        dy, dw = _ext.C.weighted_sum_bwd(y, w, g, need_dy)
        return (dy if need_dy else None), dw

    @staticmethod
    def bn_stats(z, eps, running_mean=None, running_var=None, num_batches_tracked=None,
                 momentum=0.1):
        return tuple(_ext.C.bn_stats(z, eps, running_mean, running_var, num_batches_tracked,
                                     momentum))

    @staticmethod
    def bn_accumulate(acc, z, w, k, mean, rstd, gamma, beta, init):
        _ext.C.bn_accumulate(acc, z, w, k, mean, rstd, gamma, beta, init)

    @staticmethod
    def bn_grad_reduce(g, z, mean, rstd, gamma=None, beta=None, dw=None, k=0):
        return tuple(_ext.C.bn_grad_reduce(g, z, mean, rstd, gamma, beta, dw, k))

    @staticmethod
    def bn_grad_input(g, z, w, k, mean, rstd, gamma, sum_g, sum_gx, batch_stats):
        return _ext.C.bn_grad_input(g, z, w, k, mean, rstd, gamma, sum_g, sum_gx, batch_stats)

    @staticmethod
    def bn_stats_edge(zs, eps, running_means, running_vars, num_batches_tracked, momenta):
        return tuple(_ext.C.bn_stats_edge(zs, eps, running_means, running_vars,
                                          num_batches_tracked, momenta))

    @staticmethod
    def bn_accumulate_edge(acc, zs, w, ks, means, rstds, gammas, betas, init):
        _ext.C.bn_accumulate_edge(acc, zs, w, ks, means, rstds, gammas, betas, init)

    @staticmethod
    def bn_grad_reduce_edge(g, zs, means, rstds, gammas, betas, dw, ks):
        return tuple(_ext.C.bn_grad_reduce_edge(g, zs, means, rstds, gammas, betas, dw, ks))

    @staticmethod
    def bn_grad_input_edge(g, zs, w, ks, means, rstds, gammas, sum_gs, sum_gxs, batch_stats):
        return _ext.C.bn_grad_input_edge(g, zs, w, ks, means, rstds, gammas, sum_gs, sum_gxs,
                                         batch_stats)

    @staticmethod
    def partial_combine_fwd(out, m, x, beta, K, stride, accumulate):
        return _ext.C.partial_combine_fwd(out, m, x, beta, K, stride, accumulate)

    @staticmethod
    def partial_combine_bwd(g, x, beta, K, stride):
        return tuple(_ext.C.partial_combine_bwd(g, x, beta, K, stride))

    @staticmethod
    def hvp_virtual_step(out, w, g, m, lr, momentum, weight_decay):
        _ext.C.hvp_virtual_step(out, w, g, m, lr, momentum, weight_decay)

    @staticmethod
    def hvp_sq_norm(v):
        return _ext.C.hvp_sq_norm(v)

    @staticmethod
    def hvp_perturb(out, w, v, sq_norm, r, sign):
        _ext.C.hvp_perturb(out, w, v, sq_norm, r, sign)

    @staticmethod
    def hvp_combine(g_val, g_plus, g_minus, sq_norm, r, scale):
        return _ext.C.hvp_combine(g_val, g_plus, g_minus, sq_norm, r, scale)

    @staticmethod
    def depthwise_conv_bwd(g, x, weight, stride, padding, dilation, need_dx, need_dweight):
        dx, dw = _ext.C.depthwise_conv_bwd(g, x, weight, list(stride), list(padding),
                                           list(dilation), need_dx, need_dweight)
        return dx, dw


class CudaBackend(CpuBackend):
    NAME = "cuda"
    DEVICES = ("cuda",)
    DTYPES = (torch.float32, torch.float16, torch.bfloat16)

    @classmethod
    def unavailable_reasons(cls):
        reasons = CpuBackend.unavailable_reasons()
        if not reasons and not _ext.C.with_cuda():
            reasons.append("fastdarts._C was built without CUDA (torch without CUDA, no nvcc, "
                           "or FASTDARTS_SKIP_CUDA=1)")
        if not torch.cuda.is_available():
            reasons.append("torch sees no CUDA device")
        return reasons

    # No CUDA twin: on the CPU PyTorch's depthwise backward was the step's largest cost
    # (csrc/depthwise_conv.h); on the H100 the step is bound by the host, not by cuDNN's
    # depthwise kernels, so the GPU keeps them until a measurement says otherwise.
    depthwise_conv_bwd = staticmethod(depthwise_conv_bwd_ref)


class TritonBackend(Backend):
    NAME = "triton"
    DTYPES = (torch.float32, torch.float16, torch.bfloat16)

    @classmethod
    def devices(cls):
        # Triton runs on the CPU only in its interpreter.
        from fastdarts.kernels import is_interpreting
        return ("cuda", "cpu") if is_interpreting() else ("cuda",)

    @classmethod
    def unavailable_reasons(cls):
        from fastdarts.kernels import is_interpreting, triton_import_error

        err = triton_import_error()
        if err is not None:
            return [f"triton is not importable ({type(err).__name__}: {err})"]
        if not torch.cuda.is_available() and not is_interpreting():
            return ["no CUDA device, and TRITON_INTERPRET=1 was not set before triton was "
                    "imported (the interpreter runs the kernels on the CPU)"]
        return []

    @staticmethod
    def weighted_sum_fwd(y, w):
        from fastdarts.kernels.weighted_sum import weighted_sum_fwd
        return weighted_sum_fwd(y, w)

    @staticmethod
    def weighted_sum_bwd(y, w, g, need_dy):
        from fastdarts.kernels.weighted_sum import weighted_sum_bwd
        return weighted_sum_bwd(y, w, g, need_dy)

    @staticmethod
    def bn_stats(z, eps, running_mean=None, running_var=None, num_batches_tracked=None,
                 momentum=0.1):
        from fastdarts.kernels.mixed_op import bn_stats
        return bn_stats(z, eps, running_mean, running_var, num_batches_tracked, momentum)

    @staticmethod
    def bn_accumulate(acc, z, w, k, mean, rstd, gamma, beta, init):
        from fastdarts.kernels.mixed_op import bn_accumulate
        bn_accumulate(acc, z, w, k, mean, rstd, gamma, beta, init)

    @staticmethod
    def bn_grad_reduce(g, z, mean, rstd, gamma=None, beta=None, dw=None, k=0):
        from fastdarts.kernels.mixed_op import bn_grad_reduce
        return bn_grad_reduce(g, z, mean, rstd, gamma, beta, dw, k)

    @staticmethod
    def bn_grad_input(g, z, w, k, mean, rstd, gamma, sum_g, sum_gx, batch_stats):
        from fastdarts.kernels.mixed_op import bn_grad_input
        return bn_grad_input(g, z, w, k, mean, rstd, gamma, sum_g, sum_gx, batch_stats)

    # No edge kernels in Triton yet: each op runs its own kernels, in op order (`auto`
    # picks the CUDA backend on GPUs, whose edge kernels batch the ops).
    @staticmethod
    def bn_stats_edge(zs, eps, running_means, running_vars, num_batches_tracked, momenta):
        from fastdarts.kernels.mixed_op import bn_stats
        return bn_stats_edge_ref(zs, eps, running_means, running_vars, num_batches_tracked,
                                 momenta, op=bn_stats)

    @staticmethod
    def bn_accumulate_edge(acc, zs, w, ks, means, rstds, gammas, betas, init):
        from fastdarts.kernels.mixed_op import bn_accumulate
        bn_accumulate_edge_ref(acc, zs, w, ks, means, rstds, gammas, betas, init,
                               op=bn_accumulate)

    @staticmethod
    def bn_grad_reduce_edge(g, zs, means, rstds, gammas, betas, dw, ks):
        from fastdarts.kernels.mixed_op import bn_grad_reduce
        return bn_grad_reduce_edge_ref(g, zs, means, rstds, gammas, betas, dw, ks,
                                       op=bn_grad_reduce)

    @staticmethod
    def bn_grad_input_edge(g, zs, w, ks, means, rstds, gammas, sum_gs, sum_gxs, batch_stats):
        from fastdarts.kernels.mixed_op import bn_grad_input
        return bn_grad_input_edge_ref(g, zs, w, ks, means, rstds, gammas, sum_gs, sum_gxs,
                                      batch_stats, op=bn_grad_input)

    @staticmethod
    def partial_combine_fwd(out, m, x, beta, K, stride, accumulate):
        from fastdarts.kernels.partial_channel import partial_combine_fwd
        return partial_combine_fwd(out, m, x, beta, K, stride, accumulate)

    @staticmethod
    def partial_combine_bwd(g, x, beta, K, stride):
        from fastdarts.kernels.partial_channel import partial_combine_bwd
        return partial_combine_bwd(g, x, beta, K, stride)

    @staticmethod
    def hvp_virtual_step(out, w, g, m, lr, momentum, weight_decay):
        from fastdarts.kernels.hvp import hvp_virtual_step
        hvp_virtual_step(out, w, g, m, lr, momentum, weight_decay)

    @staticmethod
    def hvp_sq_norm(v):
        from fastdarts.kernels.hvp import hvp_sq_norm
        return hvp_sq_norm(v)

    @staticmethod
    def hvp_perturb(out, w, v, sq_norm, r, sign):
        from fastdarts.kernels.hvp import hvp_perturb
        hvp_perturb(out, w, v, sq_norm, r, sign)

    @staticmethod
    def hvp_combine(g_val, g_plus, g_minus, sq_norm, r, scale):
        from fastdarts.kernels.hvp import hvp_combine
        return hvp_combine(g_val, g_plus, g_minus, sq_norm, r, scale)

    depthwise_conv_bwd = staticmethod(depthwise_conv_bwd_ref)  # cuDNN's; see CudaBackend


BACKENDS: dict[str, type[Backend]] = {
    b.NAME: b for b in (TritonBackend, CudaBackend, CpuBackend, ReferenceBackend)}

_AUTO_ORDER = {"cuda": ("cuda", "triton"), "cpu": ("cpu",)}
_warned: set[str] = set()


def _requested(backend: str | None) -> str:
    name = (backend or os.environ.get(ENV_VAR) or "auto").strip().lower()
    if name not in _CHOICES:
        raise ValueError(f"backend must be one of {list(_CHOICES)} (argument or {ENV_VAR}); "
                         f"got {name!r}")
    return name


_selected: dict = {}


def select_backend(*tensors: torch.Tensor, backend: str | None = None) -> type[Backend]:
    """The backend class that runs an op on `tensors` (see the module docstring). The choice
    depends only on the request, the extension and the tensors' devices and dtypes, so it is
    made once per combination (it runs for every edge of every step)."""
    name = _requested(backend)
    if len(tensors) == 1:  # the common case, without a generator (this is per edge and step)
        key = (name, id(_ext.C), tensors[0].device.type, tensors[0].dtype)
    else:
        key = (name, id(_ext.C), *((t.device.type, t.dtype) for t in tensors))
    cls = _selected.get(key)
    if cls is None:
        cls = _selected[key] = _select(name, tensors)
    return cls


def _select(name: str, tensors) -> type[Backend]:
    if name != "auto":
        cls = BACKENDS[name]
        if not cls.not_supported_reasons(*tensors):
            return cls
        lines = [f"  {b}: " + ("; ".join(BACKENDS[b].not_supported_reasons(*tensors)) or "ok")
                 for b in BACKENDS]
        raise NotImplementedError(f"backend {name!r} cannot run these inputs:\n" +
                                  "\n".join(lines))
    device_type = tensors[0].device.type
    tried = []
    for candidate in _AUTO_ORDER.get(device_type, ()):
        reasons = BACKENDS[candidate].not_supported_reasons(*tensors)
        if not reasons:
            return BACKENDS[candidate]
        tried.append(f"{candidate}: {'; '.join(reasons)}")
    message = "fastdarts: falling back to the reference backend (" + " | ".join(tried) + ")"
    if tried and message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
    return ReferenceBackend


def auto_picks() -> dict[str, str]:
    """What `auto` runs for fp32 tensors of each device type this machine has: the first
    available backend of `_AUTO_ORDER`, else the reference (for `python -m fastdarts.info`;
    a call's own dtype or layout can still send it further down the order)."""
    present = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return {device_type: next((name for name in _AUTO_ORDER[device_type]
                               if BACKENDS[name].is_available()), "reference")
            for device_type in present}


def backend_report() -> list[tuple[str, bool, list[str]]]:
    """(name, available, reasons) for every backend, for `python -m fastdarts.info`."""
    return [(name, cls.is_available(), cls.unavailable_reasons())
            for name, cls in BACKENDS.items()]
