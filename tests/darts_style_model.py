"""A DARTS-style search model written independently of fastdarts, the way the original
repositories write it (operations.py + model_search.py): own op classes, a MixedOp summing
`w * op(x)`, a Cell with preprocess0/1 and an `_ops` list, unregistered alphas. Used to
check that `fastdarts.patch` leaves losses and gradients unchanged."""
import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMS = ["none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
         "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, k, stride, pad, affine=True):
        super().__init__()
        self.op = nn.Sequential(nn.ReLU(inplace=False),
                                nn.Conv2d(C_in, C_out, k, stride=stride, padding=pad, bias=False),
                                nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, k, stride, pad, dil, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, k, stride, pad, dilation=dil, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    def __init__(self, C_in, C_out, k, stride, pad, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, k, stride, pad, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, k, 1, pad, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, padding=0, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


class FactorizedReduce(nn.Module):
    def __init__(self, C_in, C_out, affine=True):
        super().__init__()
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out // 2, 1, stride=2, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        return self.bn(torch.cat([self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])], dim=1))


class Shifted(nn.Module):
    """An op no fusion rule knows: it must still run, whole."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return torch.tanh(x[:, :, ::self.stride, ::self.stride]) * 0.5


OPS = {
    "none": lambda C, s, a: Zero(s),
    "avg_pool_3x3": lambda C, s, a: nn.AvgPool2d(3, stride=s, padding=1, count_include_pad=False),
    "max_pool_3x3": lambda C, s, a: nn.MaxPool2d(3, stride=s, padding=1),
    "skip_connect": lambda C, s, a: Identity() if s == 1 else FactorizedReduce(C, C, affine=a),
    "sep_conv_3x3": lambda C, s, a: SepConv(C, C, 3, s, 1, affine=a),
    "sep_conv_5x5": lambda C, s, a: SepConv(C, C, 5, s, 2, affine=a),
    "dil_conv_3x3": lambda C, s, a: DilConv(C, C, 3, s, 2, 2, affine=a),
    "dil_conv_5x5": lambda C, s, a: DilConv(C, C, 5, s, 4, 2, affine=a),
    "shifted_tanh": lambda C, s, a: Shifted(s),
}


class MixedOp(nn.Module):
    def __init__(self, C, stride, prims):
        super().__init__()
        self._ops = nn.ModuleList()
        for p in prims:
            op = OPS[p](C, stride, False)
            if "pool" in p:
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_pp, C_p, C, reduction, reduction_prev, prims, k=None):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self._steps, self._multiplier = steps, multiplier
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(MixedOp(C, stride, prims) if k is None
                                 else PCMixedOp(C, stride, prims, k))

    def forward(self, s0, s1, weights, weights2=None):
        s0, s1 = self.preprocess0(s0), self.preprocess1(s1)
        states, offset = [s0, s1], 0
        for _ in range(self._steps):
            if weights2 is None:
                s = sum(self._ops[offset + j](h, weights[offset + j])
                        for j, h in enumerate(states))
            else:  # PC-DARTS: each edge scaled by its edge-normalisation weight
                s = sum(weights2[offset + j] * self._ops[offset + j](h, weights[offset + j])
                        for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    """The DARTS search network; with `k` the PC-DARTS one (partial channels, betas)."""

    def __init__(self, C=4, num_classes=5, layers=3, steps=2, multiplier=2, prims=PRIMS, k=None):
        super().__init__()
        self.prims, self.k, self._steps = prims, k, steps
        C_curr = 3 * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(C_curr))
        C_pp, C_p, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(Cell(steps, multiplier, C_pp, C_p, C_curr, reduction,
                                   reduction_prev, prims, k))
            reduction_prev = reduction
            C_pp, C_p = C_p, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_p, num_classes)
        k = sum(2 + i for i in range(steps))
        # unregistered, as in the original
        self.alphas_normal = (1e-3 * torch.randn(k, len(prims))).requires_grad_()
        self.alphas_reduce = (1e-3 * torch.randn(k, len(prims))).requires_grad_()
        self.betas_normal = (1e-3 * torch.randn(k)).requires_grad_()
        self.betas_reduce = (1e-3 * torch.randn(k)).requires_grad_()

    def _edge_weights(self, betas):
        """PC-DARTS's loop: softmax over [0:2], then over each next node's n = 3, 4, ... edges."""
        weights2 = F.softmax(betas[0:2], dim=-1)
        start, n = 2, 3
        for _ in range(self._steps - 1):
            end = start + n
            weights2 = torch.cat([weights2, F.softmax(betas[start:end], dim=-1)], dim=0)
            start, n = end, n + 1
        return weights2

    def forward(self, x):
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            a = self.alphas_reduce if cell.reduction else self.alphas_normal
            b = self.betas_reduce if cell.reduction else self.betas_normal
            e = None if self.k is None else self._edge_weights(b)
            s0, s1 = s1, cell(s0, s1, F.softmax(a, dim=-1), e)
        return self.classifier(self.global_pooling(s1).flatten(1))


def pc_shuffle(x, groups):
    """PC-DARTS's channel_shuffle, written out."""
    n, c, h, w = x.data.size()
    x = x.view(n, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(n, -1, h, w)


class PCMixedOp(nn.Module):
    """A PC-DARTS MixedOp: ops on the first C/k channels, the rest bypassed (max-pooled on
    reduction edges), concatenated and shuffled."""

    def __init__(self, C, stride, prims, k):
        super().__init__()
        self.mp = nn.MaxPool2d(2, 2)
        self.k = k
        self._ops = nn.ModuleList()
        for p in prims:
            op = OPS[p](C // k, stride, False)
            if "pool" in p:
                op = nn.Sequential(op, nn.BatchNorm2d(C // k, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        dim_2 = x.shape[1]
        xtemp = x[:, : dim_2 // self.k, :, :]
        xtemp2 = x[:, dim_2 // self.k:, :, :]
        temp1 = sum(w * op(xtemp) for w, op in zip(weights, self._ops))
        if temp1.shape[2] == x.shape[2]:
            ans = torch.cat([temp1, xtemp2], dim=1)
        else:
            ans = torch.cat([temp1, self.mp(xtemp2)], dim=1)
        return pc_shuffle(ans, self.k)
