"""Ops that hand what a compiled graph computed back to this copy of the pack as the graph
runs (the probe's measurements, the proof that our hooks ran), registered once per process.

Registered with torch.library's plain API, as the kernels' ops are (hopfield/torch_ops.py),
but not shared as theirs are: each reads its own copy's state, so a second copy of the pack
in one process (imported under another name) registers ops of its own, under the next free
name. Each declares a write to a tensor the graph did not make (``SINK``), which keeps it in
the graph: nothing ever reads that tensor.
"""

from __future__ import annotations

import torch

NAMESPACE = "hopfield_circulation"
SINK = torch.zeros(1)
_LIBRARIES: list = []  # keep the registrations alive


def register_python_op(name: str, schema: str, impl, fake):
    """torch.ops.hopfield_circulation.<name> (or <name>_2, ... where another copy holds the
    name), running ``impl`` on every device; ``schema``: its arguments and result, after the
    name."""
    library = torch.library.Library(NAMESPACE, "FRAGMENT")
    for copy in range(1, 100):
        free = name if copy == 1 else f"{name}_{copy}"
        try:
            library.define(f"{free}{schema}")
            break
        except RuntimeError:  # defined by another copy of the pack
            continue
    else:
        raise RuntimeError(f"Hopfield Circulation: no free name for the op {name}")
    library.impl(free, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{free}", fake, lib=library)
    _LIBRARIES.append(library)
    return getattr(getattr(torch.ops, NAMESPACE), free)
