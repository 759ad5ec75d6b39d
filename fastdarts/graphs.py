"""A training step replayed as a CUDA graph (`CapturedStep`), and `make_capturable` for the
optimisers such a step runs.

At search sizes a supernet step on a current GPU is bound by the host, not the device. On an
H100 at batch 64 (benchmarks/results, 2c70085) the original DARTS supernet's step took about
0.15 s of device time and 0.5 s of host time, most of it spent launching some 15,000
kernels. A CUDA graph records the launches of one step and replays them all with one call.
That removes the host's share in every memory mode, the original's included. It needs a
step that never waits for the host, which fastdarts' steps are (tests/test_gpu.py checks it).

A graph bakes in every host value the step reads: the learning rate, SDARTS's radius, the
ops DrNAS keeps, whether an architecture step runs. It also bakes in the shapes and the
memory of every tensor it touches. So `CapturedStep` keys its graph on those values (the
caller's `key`) and on its inputs' shapes, strides and dtypes. A new key drops the graph and
warms up again. In a search the key is the epoch, whether architecture updates are on and
the learning rate: the schedules move once per epoch, and a method that replaces weights
(DrNAS widening) does so at the start of an epoch.
"""
from __future__ import annotations

from typing import Any, Callable, Hashable

import torch

__all__ = ["CapturedStep", "make_capturable"]


def make_capturable(optimizer: torch.optim.Optimizer,
                    capturable: bool = True) -> torch.optim.Optimizer:
    """Let `optimizer` step inside a CUDA graph (or, with `capturable=False`, outside one
    at full speed), in place; returns it.

    Adam and its kin keep their step count on the host unless their `capturable` flag is
    set, and a graph would replay the bias correction of the step it was captured at. With
    the flag the count lives on the device; without it, on the host, where reading it costs
    no synchronisation. SGD keeps no host state and has no flag; it is left as it is. Call
    it after `load_state_dict` too, which restores the flag the state was saved with.
    """
    for group in optimizer.param_groups:
        if "capturable" not in group:
            continue
        group["capturable"] = capturable
        for p in group["params"]:
            step = optimizer.state.get(p, {}).get("step")
            home = p.device if capturable else torch.device("cpu")
            if torch.is_tensor(step) and step.device != home:
                optimizer.state[p]["step"] = step.to(home, torch.float32)
    if capturable:
        # torch warns once when a capturable optimiser steps outside a graph; CapturedStep's
        # warm-up steps do that on purpose.
        optimizer._warned_capturable_if_run_uncaptured = True
    return optimizer


def _check_inputs(inputs: tuple) -> torch.device:
    if not inputs:
        raise ValueError("CapturedStep: the step needs at least one tensor input")
    for i, t in enumerate(inputs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"CapturedStep: input {i} must be a tensor; got {type(t).__name__}")
        if t.device.type != "cuda":
            raise ValueError(f"CapturedStep: input {i} must be a CUDA tensor (CUDA graphs "
                             f"replay device work); got one on {t.device}")
    device = inputs[0].device
    for i, t in enumerate(inputs):
        if t.device != device:
            raise ValueError(f"CapturedStep: input {i} is on {t.device}, input 0 on {device}; "
                             f"a graph runs on one device")
    return device


class CapturedStep:
    """`step(*inputs)` run as a CUDA graph: `captured(key, *inputs)`.

    For each new `key` (or new input shapes, strides or dtypes):
    1. the first `warmup` calls run `step` eagerly on a side stream. They are real steps. They
       also create what a capture cannot: lazily made optimiser state, compiled Triton
       kernels, cuDNN's choices, the autograd engine's streams;
    2. the next call copies its inputs into static tensors, captures `step` on them, and
       replays the graph once, which takes that call's step;
    3. every later call copies its inputs into the static tensors and replays.

    Returns what `step` returns. After a replay those are the graph's static outputs, which
    the next call overwrites: read them (or clone them) before calling again.

    `step` must not read host values that change between calls with one key, and must not
    wait for the device. Its random numbers come from the default CUDA generator, which
    a graph advances on every replay, so a replay draws what the eager step would have.
    """

    def __init__(self, step: Callable[..., Any], warmup: int = 2):
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (eager steps before a capture); "
                             f"got {warmup!r}")
        self.step, self.warmup = step, warmup
        self.captures = 0  # graphs captured so far
        self.replays = 0
        self._stream: torch.cuda.Stream | None = None
        self._stream_device: torch.device | None = None
        self._graph = None
        self.reset()

    def reset(self) -> None:
        """Drop the graph and its memory; the next call warms up again."""
        if self._graph is not None:
            # its last replay may still run, and its memory must outlive that
            torch.cuda.synchronize(self._key[1])
        self._key: Hashable = None
        self._eager_left = self.warmup
        self._graph = None
        self._static_inputs: tuple = ()
        self._static_outputs: Any = None

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def __call__(self, key: Hashable, *inputs: torch.Tensor):
        device = _check_inputs(inputs)
        full_key = (key, device, tuple((t.shape, t.stride(), t.dtype) for t in inputs))
        if full_key != self._key:
            self.reset()
            self._key = full_key
        if self._graph is not None:
            for static, t in zip(self._static_inputs, inputs):
                static.copy_(t)
        elif self._eager_left > 0:
            self._eager_left -= 1
            return self._eager(device, inputs)
        else:
            self._capture(inputs)
        self._graph.replay()
        self.replays += 1
        return self._static_outputs

    def _eager(self, device: torch.device, inputs: tuple):
        # Warm-up on a side stream, as torch.cuda.graph asks: the autograd engine then sets
        # up its per-stream state away from the stream the capture will use.
        if self._stream is None or self._stream_device != device:
            self._stream, self._stream_device = torch.cuda.Stream(device), device
        current = torch.cuda.current_stream(device)
        self._stream.wait_stream(current)
        with torch.cuda.stream(self._stream):
            out = self.step(*inputs)
        current.wait_stream(self._stream)
        return out

    def _capture(self, inputs: tuple) -> None:
        static = tuple(t.clone() for t in inputs)  # clone keeps the strides (channels_last)
        graph = torch.cuda.CUDAGraph()
        try:
            # thread_local: the DataLoader's pin-memory thread may allocate host memory
            # meanwhile, which the default (global) mode would count as an error of ours.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                out = self.step(*static)
        except Exception as e:
            self.reset()
            raise RuntimeError(f"CapturedStep: the step could not be captured as a CUDA "
                               f"graph ({type(e).__name__}: {e}); run it without a graph "
                               f"(cuda_graph=False)") from e
        self._graph, self._static_inputs, self._static_outputs = graph, static, out
        self.captures += 1
