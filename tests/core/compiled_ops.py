"""What the kernels' compile tests share: a function compiled (inductor, fullgraph) against its
eager self, and which of the pack's registered ops (hopfield/torch_ops.py) its graph holds."""

from __future__ import annotations

from collections import Counter

import torch


def pack_ops_when_compiled(fn, *args, tol: float | None = None) -> Counter:
    """Compile ``fn`` (inductor, fullgraph: a graph break fails), check that it gives ``fn``'s
    eager result (bit for bit, or within ``tol``) and that dynamo finds no break, and count
    the pack's ops in its graph by name (``hopfield_circulation.<name>``)."""
    torch._dynamo.reset()
    try:
        got = torch.compile(fn, backend="inductor", fullgraph=True)(*args)
        want = fn(*args)
        if tol is None:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        graph = torch._dynamo.explain(fn)(*args)
        assert graph.graph_break_count == 0
        targets = [str(node.target) for g in graph.graphs for node in g.graph.nodes]
        return Counter(target.split(".")[1] for target in targets
                       if target.startswith("hopfield_circulation."))
    finally:
        torch._dynamo.reset()
