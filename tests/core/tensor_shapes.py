"""A dispatch mode that records the shape of every tensor the ops under it return (tests that
a path builds no L x L matrix)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class ShapesMade(TorchDispatchMode):
    """The shapes of every tensor the ops under it return, in ``shapes``."""

    def __init__(self):
        super().__init__()
        self.shapes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in tree_flatten(out)[0]
                        if isinstance(t, torch.Tensor)]
        return out

    def square(self, tokens: int) -> list:
        """The shapes made whose last two axes are tokens x tokens."""
        return [s for s in self.shapes if s[-2:] == (tokens, tokens)]
