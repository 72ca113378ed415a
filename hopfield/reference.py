"""Literal reference formulas with explicit L x L matrices, for tests and benchmarks only.

Written for clarity, straight from the paper's equations (and its Algorithm 2 in input space);
every fast path in this package is tested against these in float64. Never used by the nodes.
"""

from __future__ import annotations

import math

import torch


def logits(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """M = Q K^T / sqrt(d), [B, H, L, L]."""
    return q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])


def decompose(m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M_sym, M_skew) of eq. 18."""
    mt = m.transpose(-1, -2)
    return (m + mt) / 2, (m - mt) / 2


def skew_scaled_attention(q, k, v, alpha) -> torch.Tensor:
    """softmax(M_sym + alpha M_skew) V (eq. 31-32)."""
    m_sym, m_skew = decompose(logits(q, k))
    return torch.softmax(m_sym + alpha * m_skew, dim=-1) @ v


def blend(base, perturbed, beta, norm_match=True, eps=1e-6, r_min=0.25, r_max=4.0):
    """Eq. 33-34 and the norm matching of the released code (reference = perturbed norm)."""
    new = base + beta * (perturbed - base)
    if not norm_match:
        return new
    ref = perturbed.norm(dim=-1, keepdim=True).clamp_min(eps)
    cur = new.norm(dim=-1, keepdim=True).clamp_min(eps)
    return new * (ref / cur).clamp(r_min, r_max)


def symmetry_index(q, k) -> torch.Tensor:
    """eta_M of eq. 36 from the explicit decomposition, [B, H]."""
    m_sym, m_skew = decompose(logits(q, k))
    s, n = m_sym.pow(2).sum((-1, -2)), m_skew.pow(2).sum((-1, -2))
    return (s - n) / (s + n)


def symmetry_index_weight_form(x, w_q, w_k, heads) -> torch.Tensor:
    """The paper's channel-space form: M_h = X W_h X^T with W_h = Wq_h^T Wk_h, S = sym(W_h),
    N = skew(W_h), G = X^T X; eta = (tr(S G S G) - tr(N^T G N G)) / (tr(S G S G) + tr(N^T G N G)).
    Valid only when q = X Wq^T and k = X Wk^T exactly (no bias, no qk-norm). x: [B, L, C]."""
    c = x.shape[-1]
    wq, wk = w_q.reshape(heads, -1, c), w_k.reshape(heads, -1, c)
    w = wq.transpose(-1, -2) @ wk  # [H, C, C]
    s, n = (w + w.transpose(-1, -2)) / 2, (w - w.transpose(-1, -2)) / 2
    g = (x.transpose(-1, -2) @ x).unsqueeze(1)  # [B, 1, C, C]
    sg = s @ g  # [B, H, C, C]
    sym = (sg * sg.transpose(-1, -2)).sum((-1, -2))  # tr(S G S G) = |M_sym|^2 (times d)
    ntg, ng = n.transpose(-1, -2) @ g, n @ g
    skew = (ntg * ng.transpose(-1, -2)).sum((-1, -2))  # tr(N^T G N G) = |M_skew|^2 (times d)
    return (sym - skew) / (sym + skew)


def algorithm2(x, w_q, w_k, w_v, heads, alpha, beta, eps=1e-6, r_min=0.25, r_max=4.0):
    """The paper's Algorithm 2, line by line, in input space. x: [B, L, C]; w_*: [H*d, C].

    Logits per head from X (S + alpha N) X^T / sqrt(d); retrieval over X (C channels per head);
    blend; per-token norm match to the perturbed retrieval, clamped; then per-head W_v.
    Returns the per-head outputs [B, H, L, d] (before the output projection).
    """
    c = x.shape[-1]
    d = w_q.shape[0] // heads
    wq_h, wk_h = w_q.reshape(heads, d, c), w_k.reshape(heads, d, c)
    a_h = torch.einsum("hdi,hdj->hij", wq_h, wk_h)
    s = 0.5 * (a_h + a_h.transpose(-2, -1))
    n = 0.5 * (a_h - a_h.transpose(-2, -1))

    def attn_probs(w):
        return torch.softmax(torch.einsum("bti,hij,bsj->bhts", x, w, x) / math.sqrt(d), dim=-1)

    hx = torch.einsum("bhts,bsc->bhtc", attn_probs(s + alpha * n), x)
    hx_org = torch.einsum("bhts,bsc->bhtc", attn_probs(s + n), x)
    hx_new = hx_org + beta * (hx - hx_org)
    ref = hx.norm(dim=-1, keepdim=True).clamp_min(eps)
    cur = hx_new.norm(dim=-1, keepdim=True).clamp_min(eps)
    hx = hx_new * (ref / cur).clamp(r_min, r_max)
    return torch.einsum("bhtc,hdc->bhtd", hx, w_v.reshape(heads, d, c))
