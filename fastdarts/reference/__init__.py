"""Plain-PyTorch references of every fused kernel: what the tests trust, and the fallback
backend. Each `<op>_ref` has the signature of the public op."""
from .weighted_sum import weighted_sum_ref

__all__ = ["weighted_sum_ref"]
