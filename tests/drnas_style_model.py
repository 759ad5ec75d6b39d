"""A DrNAS-style progressive search model written independently of fastdarts, doing to
itself what the original does between stages (DARTS-space/model_search.py, operations.py):

* partial channels with K in `self.k`, read on every forward; no `none` op; pools wrapped
  with their BN in one module (`AvgPoolBN`, `MaxPoolBN`, forward `self.op(x)`);
* `pruning(num_keep)`: a mask over each edge's ops; the mixing weights outside it are
  exactly 0 and the MixedOp leaves those ops out (`if not w == 0`);
* `wider(k)`: Net2Wider, which *replaces* the conv weights and BN buffers inside every op
  with wider ones (new `nn.Parameter`s, modules put back into their `nn.Sequential`), sets
  the depthwise convs' `groups` by hand, and changes K.

Used to check that a patched model follows all of it (tests/test_lifecycle.py)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests import darts_style_model as dsm

PRIMS = ["max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
         "dil_conv_3x3", "dil_conv_5x5"]


def _extra(old: int, new: int) -> torch.Tensor:
    """Net2Wider's random choice of the old channels the new ones copy."""
    return torch.randint(0, old, (new - old,))


def widen_conv_in(conv: nn.Conv2d, new: int, index=None):
    w = conv.weight
    index = _extra(w.size(1), new) if index is None else index
    conv.weight = nn.Parameter(torch.cat([w, w[:, index].clone()], dim=1))
    conv.in_channels = new
    return index


def widen_conv_out(conv: nn.Conv2d, new: int, index=None):
    w = conv.weight
    index = _extra(w.size(0), new) if index is None else index
    conv.weight = nn.Parameter(torch.cat([w, w[index].clone()], dim=0))
    conv.out_channels = new
    return index


def widen_bn(bn: nn.BatchNorm2d, new: int, index=None):
    index = _extra(bn.num_features, new) if index is None else index
    bn.running_mean = torch.cat([bn.running_mean, bn.running_mean[index].clone()])
    bn.running_var = torch.cat([bn.running_var, bn.running_var[index].clone()])
    if bn.affine:
        bn.weight = nn.Parameter(torch.cat([bn.weight, bn.weight[index].clone()]))
        bn.bias = nn.Parameter(torch.cat([bn.bias, bn.bias[index].clone()]))
    bn.num_features = new
    return index


class AvgPoolBN(nn.Module):
    def __init__(self, C, stride):
        super().__init__()
        self.op = nn.Sequential(nn.AvgPool2d(3, stride=stride, padding=1,
                                             count_include_pad=False),
                                nn.BatchNorm2d(C, affine=False))

    def forward(self, x):
        return self.op(x)

    def wider(self, new_in, new_out):
        bn = self.op[1]
        widen_bn(bn, new_out)
        self.op[1] = bn


class MaxPoolBN(AvgPoolBN):
    def __init__(self, C, stride):
        super().__init__(C, stride)
        self.op[0] = nn.MaxPool2d(3, stride=stride, padding=1)


class SepConv(dsm.SepConv):
    def wider(self, new_in, new_out):
        op = self.op
        for dw, pw, bn in ((1, 2, 3), (5, 6, 7)):
            index = widen_conv_out(op[dw], new_in)
            op[dw].groups = new_in
            widen_conv_in(op[pw], new_in, index)
            index = widen_conv_out(op[pw], new_out)
            widen_bn(op[bn], new_out, index)
            op[dw], op[pw], op[bn] = op[dw], op[pw], op[bn]  # put back, as DrNAS does


class DilConv(dsm.DilConv):
    def wider(self, new_in, new_out):
        op = self.op
        index = widen_conv_out(op[1], new_in)
        op[1].groups = new_in
        widen_conv_in(op[2], new_in, index)
        index = widen_conv_out(op[2], new_out)
        widen_bn(op[3], new_out, index)
        op[1], op[2], op[3] = op[1], op[2], op[3]  # put back, as DrNAS does


class Identity(dsm.Identity):
    def wider(self, new_in, new_out):
        pass


class FactorizedReduce(dsm.FactorizedReduce):
    def wider(self, new_in, new_out):
        half = self.conv_1.out_channels
        widen_conv_in(self.conv_1, new_in)
        first = widen_conv_out(self.conv_1, new_out // 2)
        widen_conv_in(self.conv_2, new_in)
        second = widen_conv_out(self.conv_2, new_out // 2)
        # as DrNAS: the BN's new channels are appended after all the old ones
        widen_bn(self.bn, new_out, torch.cat([first, second + half]))


OPS = {
    "avg_pool_3x3": lambda C, s: AvgPoolBN(C, s),
    "max_pool_3x3": lambda C, s: MaxPoolBN(C, s),
    "skip_connect": lambda C, s: Identity() if s == 1 else FactorizedReduce(C, C, affine=False),
    "sep_conv_3x3": lambda C, s: SepConv(C, C, 3, s, 1, affine=False),
    "sep_conv_5x5": lambda C, s: SepConv(C, C, 5, s, 2, affine=False),
    "dil_conv_3x3": lambda C, s: DilConv(C, C, 3, s, 2, 2, affine=False),
    "dil_conv_5x5": lambda C, s: DilConv(C, C, 5, s, 4, 2, affine=False),
}


class MixedOp(nn.Module):
    def __init__(self, C, stride, k):
        super().__init__()
        self.k, self.C = k, C
        self.mp = nn.MaxPool2d(2, 2)
        self._ops = nn.ModuleList(OPS[p](C // k, stride) for p in PRIMS)

    def forward(self, x, weights):
        dim_2 = x.shape[1]
        xtemp = x[:, : dim_2 // self.k, :, :]
        xtemp2 = x[:, dim_2 // self.k:, :, :]
        temp1 = sum(w * op(xtemp) for w, op in zip(weights, self._ops) if not w == 0)
        if self.k == 1:
            return temp1
        if temp1.shape[2] == x.shape[2]:
            ans = torch.cat([temp1, xtemp2], dim=1)
        else:
            ans = torch.cat([temp1, self.mp(xtemp2)], dim=1)
        return dsm.pc_shuffle(ans, self.k)

    def wider(self, k):
        self.k = k
        for op in self._ops:
            op.wider(self.C // k, self.C // k)


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_pp, C_p, C, reduction, reduction_prev, k):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (dsm.FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else dsm.ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = dsm.ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList(MixedOp(C, 2 if reduction and j < 2 else 1, k)
                                  for i in range(steps) for j in range(2 + i))

    def forward(self, s0, s1, weights):
        states, offset = [self.preprocess0(s0), self.preprocess1(s1)], 0
        for _ in range(self._steps):
            s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    def __init__(self, C=8, num_classes=5, layers=3, steps=2, multiplier=2, k=4):
        super().__init__()
        self._steps = steps
        C_curr = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            C_curr *= 2 if reduction else 1
            self.cells.append(Cell(steps, multiplier, C_pp, C_p, C_curr, reduction,
                                   reduction_prev, k))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        edges = sum(2 + i for i in range(steps))
        self.alphas_normal = (1e-1 * torch.randn(edges, len(PRIMS))).requires_grad_()
        self.alphas_reduce = (1e-1 * torch.randn(edges, len(PRIMS))).requires_grad_()
        self._mask_normal = torch.ones(edges, len(PRIMS))
        self._mask_reduce = torch.ones(edges, len(PRIMS))

    @staticmethod
    def _weights(alphas, mask):
        """DrNAS's masked, renormalised mixing weights (its Dirichlet sample made
        deterministic: the softmax); exactly 0 outside the mask."""
        w = F.softmax(alphas, dim=-1) * mask.to(alphas.dtype)
        return w / w.sum(-1, keepdim=True)

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                w = self._weights(self.alphas_reduce, self._mask_reduce)
            else:
                w = self._weights(self.alphas_normal, self._mask_normal)
            s0, s1 = s1, cell(s0, s1, w)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def pruning(self, num_keep):
        """Keep each edge's `num_keep` strongest ops (masks on the host, as DrNAS's)."""
        for alphas, mask in ((self.alphas_normal, self._mask_normal),
                             (self.alphas_reduce, self._mask_reduce)):
            keep = (alphas.detach() * mask - 1e9 * (1 - mask)).topk(num_keep, dim=-1).indices
            mask.zero_().scatter_(1, keep, 1.0)

    def wider(self, k):
        for cell in self.cells:
            for op in cell._ops:
                op.wider(k)
