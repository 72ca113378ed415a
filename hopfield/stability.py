"""Hopfield stability measures of a retrieval, without L x L matrices (paper section 4).

For each retrieved feature xi (a column of the retrieval, centred over tokens, unit norm):

    h      = M_sym xi                     local field (eq. 25)
    lambda = xi * h                       per token (eq. 26); E = -1/2 sum(lambda) (eq. 27)
    r      = mean(lambda < 0)             instability fraction (eq. 28)
    Align  = cos(xi, h)                   alignment score (eq. 29)

M_sym is the symmetric part of the logits of *centred* queries and keys, Qc Kc^T / sqrt(d):

    h = (Qc (Kc^T xi) + Kc (Qc^T xi)) / (2 sqrt(d))                       O(L d) per column

When q = X Wq^T and k = X Wk^T, Qc Kc^T = Xc W Xc^T, so h equals the paper's Xc S Xc^T xi
divided by sqrt(d): E and lambda are the paper's divided by sqrt(d) (its footnote 1 drops the
scale); r and Align are scale-free and identical. Centring matters for r and Align (it removes
the constant shift that biases and mean features add to every logit).

Two feature bases: the attention output's d channels per head ("value", any model, cheap), or
the retrieval over the block input X ("input", the paper's, C channels per head, optionally a
subset of m channels).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class LayerStability:
    """Per-sample measures of one attention call, averaged over features and heads."""

    energy: torch.Tensor  # [B]
    instability: torch.Tensor  # [B]  r_X
    align: torch.Tensor  # [B]
    token_map: torch.Tensor  # [B, L] lambda per token, mean over features and heads


def local_field(q: torch.Tensor, k: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
    """h = M_sym(centred) xi for q, k [B, H, L, d] and centred features xi [B, H, L, m].

    Since xi sums to zero over tokens, Kc^T xi = K^T xi and Qc^T xi = Q^T xi, and centring Q and
    K on the left only subtracts each column's mean: so the field of the raw q, k, centred over
    tokens, is the centred field, without copying q and k.
    """
    field = q @ (k.transpose(-1, -2) @ xi) + k @ (q.transpose(-1, -2) @ xi)
    field = field - field.mean(dim=-2, keepdim=True)
    return field / (2 * math.sqrt(q.shape[-1]))


def normalised_features(retrieval: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Columns centred over tokens (axis -2) and scaled to unit norm; zero columns stay zero."""
    centred = retrieval - retrieval.mean(dim=-2, keepdim=True)
    return centred / centred.norm(dim=-2, keepdim=True).clamp_min(eps)


def layer_stability(q: torch.Tensor, k: torch.Tensor, retrieval: torch.Tensor) -> LayerStability:
    """The measures for one call. q, k [B, H, L, d]; retrieval [B, H, L, m] (any basis).

    Runs in fp32 (fp64 for fp64 input) whatever the model dtype.
    """
    dtype = torch.promote_types(retrieval.dtype, torch.float32)
    q, k, retrieval = q.to(dtype), k.to(dtype), retrieval.to(dtype)
    xi = normalised_features(retrieval)
    h = local_field(q, k, xi)
    lam = xi * h  # [B, H, L, m]
    total = lam.sum(dim=-2)  # [B, H, m]
    energy = -0.5 * total
    instability = (lam < 0).to(dtype).mean(dim=-2)
    align = total / h.norm(dim=-2).clamp_min(1e-12)  # |xi| = 1
    return LayerStability(
        energy=energy.mean(dim=(-1, -2)),
        instability=instability.mean(dim=(-1, -2)),
        align=align.mean(dim=(-1, -2)),
        token_map=lam.mean(dim=(1, 3)),
    )


def channel_subset(channels: int, m: int, seed: int = 0) -> torch.Tensor | None:
    """A fixed-seed subset of m input channels (sorted), or None for all of them."""
    if m <= 0 or m >= channels:
        return None
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(channels, generator=gen)[:m].sort().values
