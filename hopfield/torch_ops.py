"""The pack's Triton kernels as torch ops, so that a compile trace (TorchCompileModel) calls
each one as it is, one opaque op never re-traced, with the types its schema declares.
Registered through torch.library's plain API, which imports neither dynamo nor Triton."""

from __future__ import annotations

import torch

NAMESPACE = "hopfield_circulation"
_LIBRARIES: list = []  # keeps the registrations alive


def register(name: str, schema: str, impl, fake):
    """``torch.ops.hopfield_circulation.<name>``: ``impl`` runs it, ``fake`` gives its output's
    shape, dtype and device to a trace. A second copy of the pack in one process (imported
    under another name) reuses the first's op."""
    try:
        library = torch.library.Library(NAMESPACE, "FRAGMENT")
        library.define(f"{name}{schema}")
    except RuntimeError:  # defined already
        return getattr(getattr(torch.ops, NAMESPACE), name)
    library.impl(name, impl, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{NAMESPACE}::{name}", fake, lib=library)
    _LIBRARIES.append(library)
    return getattr(getattr(torch.ops, NAMESPACE), name)
