"""DARTS (Liu et al., 2019; ALGORITHMS.md §2.1).

First order (`order=1`): the architecture gradient is taken on a validation batch at the
current weights.

Second order (`order=2`, DESIGN.md §5): the gradient of L_val(w', alpha) at the weights
after one virtual SGD step, w' = w - lr * (momentum * m + g_train + wd * w), with lr, the
momentum buffer m and the weight decay read from the weight optimiser itself:

    grad_alpha = dL_val(w')/dalpha - lr * [dL_train(w+)/dalpha - dL_train(w-)/dalpha] / (2 eps)

with w+- = w +- eps v, v = dL_val(w')/dw', eps = r / ||v||. There is no model copy and no
`load_state_dict`: w' and w+- are written into the weights' own flat buffer
(`fastdarts.flat`) by one kernel each (`fastdarts.hvp`), from a saved copy of w, which is
copied back at the end, so the weights end bit-for-bit as they started.

BatchNorm running statistics: the four extra passes (at w, w', w+ and w-) normalise with
batch statistics, as training-mode passes do, but leave the running statistics alone. The
original updates them in three of the passes, with batches seen at weights the network
never takes (w+ and w-); here only the weight step updates them, once per training batch.
"""
from __future__ import annotations

from torch.profiler import record_function

from ..flat import FlatParameters
from ..hvp import ARITHMETIC, combine, finite_difference, virtual_step
from ..recompute import frozen_bn_stats
from .base import SearchAlgorithm, grads_into

__all__ = ["DARTS"]


class DARTS(SearchAlgorithm):
    name = "darts"
    summary = "bilevel search over softmax(alpha) mixing weights, first or second order"

    def setup(self, model, weight_optimizer=None, flat_weights=None):
        super().setup(model, weight_optimizer, flat_weights)
        if self.config.order == 2:
            if flat_weights is None or weight_optimizer is None:
                raise ValueError("second-order DARTS needs the weight optimiser and the flat "
                                 "weight buffer (fastdarts.flat.FlatParameters)")
            self.flat_arch = FlatParameters(model.arch_parameters(), "architecture parameters")

    def arch_step(self, model, train_batch, val_batch, lr):
        if self.config.order == 2:
            val_loss = self.second_order_grads(model, train_batch, val_batch)
            self.step_architecture()
            return {"arch_loss": val_loss}
        x_val, y_val = val_batch
        arch = model.arch_parameters()
        self.arch_optimizer.zero_grad(set_to_none=True)
        with self.weights_frozen(model):
            logits = model(x_val, self.mixing_weights(model, "arch"))
            loss = self.loss(logits, y_val)
            grads_into(loss, arch)
        self.step_architecture()
        return {"arch_loss": loss.detach()}

    def _loss_at_current_weights(self, model, batch):
        x, y = batch
        return self.loss(model(x, self.mixing_weights(model, "arch")), y)

    def second_order_grads(self, model, train_batch, val_batch):
        """Set the architecture parameters' `.grad` to the second-order gradient (module
        docstring); returns the validation loss at w'."""
        flat, arch_flat = self.flat_weights.ensure(), self.flat_arch.ensure()
        group = self.weight_optimizer.param_groups[0]
        lr, r = group["lr"], self.config.hvp_r
        weights, arch = flat.params, arch_flat.params
        with frozen_bn_stats(model):
            # g = dL_train/dw at w, straight into the flat gradient buffer.
            with record_function(ARITHMETIC):
                flat.zero_grad()
            self._loss_at_current_weights(model, train_batch).backward(inputs=weights)
            with record_function(ARITHMETIC):
                w0 = flat.data.clone()
                m = flat.momentum(self.weight_optimizer)
            virtual_step(flat.data, w0, flat.grad, m, lr, group["momentum"],
                         group["weight_decay"])
            # At w': d_alpha into the arch buffer, v into the weight gradient buffer.
            with record_function(ARITHMETIC):
                flat.zero_grad()
                arch_flat.zero_grad()
            val_loss = self._loss_at_current_weights(model, val_batch)
            val_loss.backward(inputs=arch + weights)
            try:
                with self.weights_frozen(model):  # these passes want d/d alpha only
                    g_plus, g_minus, sq = finite_difference(
                        lambda: self._loss_at_current_weights(model, train_batch), flat.data,
                        w0, flat.grad, arch, r)
            finally:
                with record_function(ARITHMETIC):
                    flat.data.copy_(w0)  # bit-exact restore
            g_alpha = combine(arch_flat.grad, g_plus, g_minus, sq.to(arch_flat.grad.dtype), r,
                              -lr)
            with record_function(ARITHMETIC):
                arch_flat.grad.copy_(g_alpha)
        return val_loss.detach()
