"""Random features (RF-DARTS / RF-PCDARTS, ALGORITHMS.md §2.3): every convolution of a
supernet keeps its random initialisation and only the BatchNorm affine parameters (and, by
default, the classifier) are trained.

`freeze_random_features(model, seed)` draws every convolution's weight from Kaiming normal
(fan-in, ReLU gain, as in "Training BatchNorm and Only BatchNorm", Frankle et al. 2021) with
a generator seeded by `seed` on the CPU, so the features depend on the seed alone and not on
the device; then it freezes them and turns them into `FrozenConv2d`.

A frozen convolution needs its weight for backward, never its input: the input is only
needed for the weight gradient. `FrozenConv2d` therefore saves nothing but the weight (and
the input's shape), where `nn.Conv2d` keeps its input alive. Inside a DARTS SepConv that is
the depthwise conv's output, which nothing else keeps; the fused edge's segments
(`fastdarts.plans`) already skip the weight gradient when a weight needs none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["FrozenConv2d", "freeze_random_features"]


class _FrozenConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.conf = (x.shape, stride, padding, dilation, groups)
        ctx.save_for_backward(weight)
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):
        (weight,) = ctx.saved_tensors
        shape, stride, padding, dilation, groups = ctx.conf
        # dx is the transposed convolution of g; output_padding recovers the rows and
        # columns a strided forward dropped. (conv2d_input, on an expanded empty input,
        # runs 2-4x slower on the CPU.)
        k = weight.shape[2:]
        extra = tuple(shape[2 + i] - ((g.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                      + dilation[i] * (k[i] - 1) + 1) for i in range(2))
        dx = F.conv_transpose2d(g, weight, None, stride, padding, extra, groups, dilation)
        return dx, None, None, None, None, None, None


class FrozenConv2d(nn.Conv2d):
    """An `nn.Conv2d` whose weight (and bias) is fixed: backward keeps only the weight.

    Same parameters, buffers and `state_dict` keys as the Conv2d it was. Falls back to the
    plain forward when a parameter requires a gradient, when no gradient is wanted, and
    under autocast or a non-zero padding mode."""

    def _conv_forward(self, x, weight, bias):
        if (weight.requires_grad or (bias is not None and bias.requires_grad)
                or not (torch.is_grad_enabled() and x.requires_grad)
                or self.padding_mode != "zeros" or isinstance(self.padding, str)
                or torch.is_autocast_enabled(x.device.type)):
            return super()._conv_forward(x, weight, bias)
        return _FrozenConvFunction.apply(x, weight, bias, self.stride, self.padding,
                                         self.dilation, self.groups)


def freeze_random_features(model: nn.Module, seed: int, train_classifier: bool = True
                           ) -> dict:
    """Re-draw and freeze every convolution of `model` (module docstring); leave trainable
    only the BatchNorm affine parameters and, if `train_classifier`, the `nn.Linear`
    layers. Every BatchNorm must be affine (build the supernet with `affine=True`).

    Returns counts for the run log: frozen convolutions and trained/frozen parameters."""
    plain_bn = [name for name, m in model.named_modules()
                if isinstance(m, _BatchNorm) and not m.affine]
    if plain_bn:
        raise ValueError(f"model: random features train only BatchNorm, but {len(plain_bn)} "
                         f"BatchNorm layers have no affine parameters (first: {plain_bn[0]}); "
                         f"build the supernet with affine=True")
    arch = {id(p) for p in getattr(model, "arch_parameters", lambda: [])()}
    generator = torch.Generator().manual_seed(seed)
    n_convs = 0
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            w = torch.empty(m.weight.shape, dtype=torch.float32)
            nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu", generator=generator)
            with torch.no_grad():
                m.weight.copy_(w)
                if m.bias is not None:
                    m.bias.zero_()
            if type(m) is nn.Conv2d:
                m.__class__ = FrozenConv2d
            n_convs += 1
    trained = frozen = 0
    for m in model.modules():
        keep = isinstance(m, _BatchNorm) or (train_classifier and isinstance(m, nn.Linear))
        for p in m.parameters(recurse=False):
            if id(p) in arch:
                continue
            p.requires_grad_(keep)
            if keep:
                trained += p.numel()
            else:
                frozen += p.numel()
    return {"frozen_convolutions": n_convs, "trained_weights": trained,
            "frozen_weights": frozen}
