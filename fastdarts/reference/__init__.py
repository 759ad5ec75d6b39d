"""Plain-PyTorch references of every fused kernel: what the tests trust, and the fallback
backend. Each `<op>_ref` has the signature of the public op."""
from .depthwise_conv import depthwise_conv_bwd_ref
from .hvp import hvp_combine_ref, hvp_perturb_ref, hvp_sq_norm_ref, hvp_virtual_step_ref
from .mixed_op import (bn_accumulate_edge_ref, bn_accumulate_ref, bn_grad_input_edge_ref,
                       bn_grad_input_ref, bn_grad_reduce_edge_ref, bn_grad_reduce_ref,
                       bn_stats_edge_ref, bn_stats_ref, mixed_op_ref)
from .partial_channel import partial_channel_ref, partial_combine_bwd_ref, partial_combine_fwd_ref
from .weighted_sum import weighted_sum_ref

__all__ = ["weighted_sum_ref", "mixed_op_ref", "bn_stats_ref", "bn_accumulate_ref",
           "bn_grad_reduce_ref", "bn_grad_input_ref", "bn_stats_edge_ref",
           "bn_accumulate_edge_ref", "bn_grad_reduce_edge_ref", "bn_grad_input_edge_ref",
           "partial_channel_ref",
           "partial_combine_fwd_ref", "partial_combine_bwd_ref", "hvp_virtual_step_ref",
           "hvp_sq_norm_ref", "hvp_perturb_ref", "hvp_combine_ref", "depthwise_conv_bwd_ref"]
