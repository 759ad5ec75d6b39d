"""Candidate operations of the search spaces, plain PyTorch.

`darts` holds the DARTS CNN operations (also used by RobustDARTS S1-S4), `nb201` the
NAS-Bench-201 ones. Both follow the original definitions exactly, so parameter counts and
`state_dict` keys match the original code.
"""
