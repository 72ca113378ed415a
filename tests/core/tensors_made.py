"""A dispatch mode that records every tensor the ops under it return: its op, dtype and shape
(tests that a path builds no L x L matrix, or no fp32 copy of a head tensor)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorsMade(TorchDispatchMode):
    """(op name, dtype, shape) of every tensor the ops under it return, in ``made``."""

    def __init__(self):
        super().__init__()
        self.made = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.made += [(func._schema.name, t.dtype, tuple(t.shape))
                      for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        return out

    def square(self, tokens: int) -> list:
        """The shapes made whose last two axes are tokens x tokens."""
        return [shape for _, _, shape in self.made if shape[-2:] == (tokens, tokens)]

    def at_least(self, numel: int) -> list:
        """(op name, dtype) of the tensors made with at least ``numel`` elements."""
        return [(op, dtype) for op, dtype, shape in self.made
                if torch.Size(shape).numel() >= numel]
