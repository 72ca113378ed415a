"""The functional symmetry index eta_M (paper eq. 36) without the L x L logit matrix.

    eta = (|M_sym|^2 - |M_skew|^2) / (|M_sym|^2 + |M_skew|^2) = <M, M^T> / |M|^2

and with M = Q K^T / sqrt(d) both terms reduce to d x d Gram matrices (the 1/d cancels):

    |M|^2    = tr((Q^T Q)(K^T K))
    <M, M^T> = tr((K^T Q)(K^T Q))

This uses the Q and K attention really uses (after biases, qk-norm, joint-stream projections),
so it is exact for SD3's joint attention too, where the paper's C x C weight form is not.
"""

from __future__ import annotations

import torch

ETA_EPS = 1e-20


def symmetry_index(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """eta_M per (batch, head) for q, k of shape [B, H, L, d]; returns [B, H] (fp32, or fp64
    for fp64 input).

    Stays on q's device; a zero logit matrix (|M| = 0) gives eta = 0 instead of NaN.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    q32, k32 = q.to(dtype), k.to(dtype)
    qq = q32.transpose(-1, -2) @ q32  # [B, H, d, d]
    kk = k32.transpose(-1, -2) @ k32
    kq = k32.transpose(-1, -2) @ q32
    norm_sq = (qq * kk.transpose(-1, -2)).sum(dim=(-1, -2))  # tr(A B) = sum(A * B^T)
    cross = (kq * kq.transpose(-1, -2)).sum(dim=(-1, -2))
    return cross / norm_sq.clamp_min(ETA_EPS)


def aggregate_eta(eta: torch.Tensor, per_sample: bool = True) -> torch.Tensor:
    """eta-bar (paper eq. 37): mean over heads per sample ([B]), or one value per call ([1]).

    The paper shares one scalar across the whole call; per sample (the default here) keeps a
    batch's samples, and the cond and uncond halves of CFG, from steering each other.
    """
    if per_sample:
        return eta.mean(dim=-1)
    return eta.mean().reshape(1)


def adaptive_coefficients(
    alpha: float, beta: float, eta_bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_eff = 1 + (alpha - 1) * eta-bar and beta_eff = beta * (1 - eta-bar) (eq. 38-41)."""
    return 1 + (alpha - 1) * eta_bar, beta * (1 - eta_bar)
