"""When a cached view of a module tree is stale: the one rule every fastdarts cache follows.

Walking a module tree on every call (`module.parameters()`, recognising each op) costs more
than the kernels of a small cell, so fastdarts caches such views on the modules: a cell's
parameter list, an edge's op plans. A user's code edits the tree under them mid-search:
DrNAS's Net2Wider assigns new `nn.Parameter`s and BN buffers inside the ops and puts the
modules back into their `nn.Sequential`, a user swaps an op, `load_state_dict(assign=True)`
replaces tensors. Every one of those goes through `Module.__setattr__`, `register_parameter`,
`register_buffer` or `add_module`, and torch calls its global registration hooks from each.
The hooks below bump one counter, the *generation*; a cache is valid only for the generation
it was built in, so the next call after any such edit rebuilds it. Building a new module
anywhere bumps it too; caches then rebuild once, which is cheap next to a step.

Edits that bypass those calls keep the parameter objects (`conv.weight.data = wider`),
which the caches hold, and the op plans read module attributes on every call, so those
are followed too (tests/test_lifecycle.py). With `torch.__future__.set_overwrite_module_params_on_
conversion(True)`, `.to()`/`.half()` put new parameter objects straight into
`_parameters`, past every hook: while that flag is set no cache is trusted (correct, slower).
`invalidate_caches()` is there for any other edit.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

__all__ = ["generation", "invalidate_caches", "refresh", "cached", "listed_parameters"]

_GENERATION = [0]


def invalidate_caches() -> None:
    """Make every cached parameter list and op plan rebuild on next use."""
    _GENERATION[0] += 1


def refresh() -> None:
    """`fastdarts.refresh()`: after an edit that no registration hook sees (module
    docstring), or after changing which mixing weights are exactly zero without editing the
    model (`fastdarts.zero_weights`): every cache and zero-weight pattern is read again."""
    invalidate_caches()


def _tree_edited(module, name, value):  # a registration hook: leaves `value` as it is
    _GENERATION[0] += 1


for _register in (nn.modules.module.register_module_parameter_registration_hook,
                  nn.modules.module.register_module_buffer_registration_hook,
                  nn.modules.module.register_module_module_registration_hook):
    _register(_tree_edited)


def generation() -> int:
    """The current generation; a new one on every edit of any module tree (module docstring)."""
    if torch.__future__.get_overwrite_module_params_on_conversion():
        _GENERATION[0] += 1  # conversions replace parameters unseen: trust no cache
    return _GENERATION[0]


def cached(module: nn.Module, slot: str, build: Callable):
    """`build(module)`, kept in `module.__dict__[slot]` for the current generation."""
    now = generation()
    entry = module.__dict__.get(slot)
    if entry is None or entry[0] != now:
        entry = module.__dict__[slot] = (now, build(module))
    return entry[1]


def listed_parameters(module: nn.Module) -> tuple:
    """`tuple(module.parameters())`, cached (`cached`)."""
    return cached(module, "_fastdarts_params", lambda m: tuple(m.parameters()))
