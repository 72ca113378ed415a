"""Facts about a CUDA device that the hot path reads: asked once per device, never in a trace.

A torch.compile trace that finds a fact unasked answers no, and so takes the path every device
can run; each node asks its device's facts when it patches a model (fused_triton.settle), so a
compiled graph finds them settled.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def asked_once(cache: dict[int, bool], device: torch.device,
               answer: Callable[[tuple[int, int]], bool]) -> bool:
    """``answer(compute capability)`` for a CUDA ``device``, kept in ``cache`` by device index;
    False for any other device, and in a compile trace while the device is unasked."""
    if device.type != "cuda":
        return False
    found = cache.get(device.index)
    if found is None:
        if torch.compiler.is_compiling():
            return False
        index = device.index if device.index is not None else torch.cuda.current_device()
        found = cache[index] = answer(torch.cuda.get_device_capability(
            torch.device("cuda", index)))
    return found
