"""Retrievals over the block input X: the paper's own basis (Algorithm 2's H x), shared by the
input-space circulation and the Stability Probe's input basis.

    retrieval  = softmax(Q K^T / sqrt(d)) X                   per head, [B, H, L, m]
    perturbed  = softmax((M_sym + alpha M_skew)) X            (skew.py's concat trick)
    blended    = blend(retrieval, perturbed, beta)            (blend.py, optional norm match)

X is shared by the heads (a broadcast view, never copied per head). No L x L matrix.
"""

from __future__ import annotations

import torch

from .blend import blend_retrievals
from .skew import Scalar, attend_any_width, skew_scaled_attention


def channel_subset(channels: int, m: int, seed: int = 0) -> torch.Tensor | None:
    """A fixed-seed subset of m input channels (sorted), or None for all of them."""
    if m <= 0 or m >= channels:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(channels, generator=gen)[:m].sort().values


def heads_view(x: torch.Tensor, like: torch.Tensor, subset: torch.Tensor | None = None):
    """X [B, L, C] as [B, H, L, m] in ``like``'s dtype: the chosen channels, one view per head."""
    if subset is not None:
        x = x.index_select(-1, subset.to(x.device))
    # converted before the broadcast: converting the broadcast view would copy X once per head
    return x.to(like.dtype).unsqueeze(1).expand(-1, like.shape[1], -1, -1)


def input_retrieval(q: torch.Tensor, k: torch.Tensor, x: torch.Tensor,
                    subset: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(QK^T/sqrt(d)) X per head, [B, H, L, m]. x: [B, L, C]; ``subset``: channel
    indices (``channel_subset``), None for all C channels (the exact input basis). One
    attention call of value width m (m = d = 64 makes it flash-eligible; other widths:
    skew.attend_any_width)."""
    return attend_any_width(q, k, heads_view(x, q, subset))


def steered_input_retrieval(q: torch.Tensor, k: torch.Tensor, x: torch.Tensor, alpha: Scalar,
                            beta: Scalar, norm_match: bool = True,
                            subset: torch.Tensor | None = None):
    """(retrieval, blended): the plain retrieval over X and its blend with the alpha-scaled one
    (fp32), for effective coefficients ``alpha``, ``beta`` (floats or [B|1, 1, 1, 1])."""
    x_heads = heads_view(x, q, subset)
    retrieved = attend_any_width(q, k, x_heads)
    perturbed = skew_scaled_attention(q, k, x_heads, alpha)
    return retrieved, blend_retrievals(retrieved, perturbed, beta, norm_match=norm_match)
