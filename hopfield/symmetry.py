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

from . import eta_triton  # imports Triton only when its kernel first runs

ETA_EPS = 1e-20


def symmetry_index(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """eta_M per (batch, head) for q, k of shape [B, H, L, d]; returns [B, H] (fp32, or fp64
    for fp64 input).

    One concatenation Z = [K | Q] in the model's dtype and two batched products accumulated in
    fp32 (on tensor cores for fp16 and bf16 on CUDA), K^T Z = [K^T K, K^T Q] and Q^T Q, instead
    of fp32 copies of q and k: three quarters of the whole Gram Z^T Z. Below 2d tokens the
    logits themselves are the smaller matrix (and the cheaper product), so they are used. Stays
    on q's device; a zero logit matrix (|M| = 0) gives eta = 0 instead of NaN. On CUDA the
    same traces come from one or two Triton launches where they apply (hopfield/eta_triton.py).
    """
    if eta_triton.eligible(q, k):  # CUDA, fp16/bf16: one or two launches instead of nine
        if torch.compiler.is_compiling():  # one opaque op in the graph, never re-traced
            return eta_triton.ETA_OP(q, k)
        eta = eta_triton.try_symmetry_index(q, k)
        if eta is not None:
            return eta
    return symmetry_index_torch(q, k)


def symmetry_index_torch(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """``symmetry_index`` by torch ops alone (any device)."""
    b, h, length, d = q.shape
    # One contiguous buffer: its (batch, head) pairs form one batch axis, where the host's
    # head views ([B, L, H, d] storage) would make each batched product copy both operands
    z = torch.cat((k, q), dim=-1).view(b * h, length, 2 * d)
    if length < 2 * d:  # few tokens: the L x L logits are smaller than the Gram (2d x 2d)
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        logits = torch.bmm(z[..., d:], z[..., :d].transpose(1, 2))  # M up to its 1/sqrt(d)
        norm_sq = torch.square(logits).sum(dim=(-1, -2))
        cross = (logits * logits.transpose(-1, -2)).sum(dim=(-1, -2))
        return (cross / norm_sq.clamp_min(ETA_EPS)).view(b, h)
    if z.dtype != torch.promote_types(z.dtype, torch.float32) and not half_into_fp32(z.device):
        z = z.float()  # once for both products (each would take fp32 copies of its operands)
    # The three Grams the traces need, not the whole Z^T Z (whose fourth block, Q^T K, only
    # transposes K^T Q): three quarters of its multiply-adds, in two products
    k_k_q = fp32_product(z[..., :d].transpose(1, 2), z)  # [K^T K, K^T Q]
    q_q = fp32_product(z[..., d:].transpose(1, 2), z[..., d:])  # Q^T Q
    return eta_from_grams(q_q, k_k_q[..., :d], k_k_q[..., d:]).view(b, h)


def eta_from_grams(q_q: torch.Tensor, k_k: torch.Tensor, k_q: torch.Tensor) -> torch.Tensor:
    """eta = tr((K^T Q)^2) / tr((Q^T Q)(K^T K)) from the three d x d Grams ([N, d, d] each);
    [N]. Both Grams of the second trace are symmetric: it is their elementwise product's sum,
    read untransposed."""
    norm_sq = (q_q * k_k).sum(dim=(-1, -2))
    cross = (k_q * k_q.transpose(-1, -2)).sum(dim=(-1, -2))
    return cross / norm_sq.clamp_min(ETA_EPS)


def fp32_product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b for batched matrices of one dtype, in fp32 (fp64 for fp64 input) with fp32
    accumulation: half-precision operands multiply straight into fp32 where the device can
    (tensor cores, no fp32 copies), else they are upcast first."""
    dtype = torch.promote_types(a.dtype, torch.float32)
    if a.dtype == dtype:
        return a @ b
    if half_into_fp32(a.device):
        return torch.bmm(a, b, out_dtype=dtype)
    return a.to(dtype) @ b.to(dtype)


_HALF_INTO_FP32: dict[str, bool] = {}


def half_into_fp32(device: torch.device) -> bool:
    """Whether bmm takes fp16/bf16 inputs into an fp32 output here (CUDA in recent torch);
    asked once per device type, on two tiny matrices, outside any torch.compile trace (the
    circulation asks when it patches a model; a trace that finds it unasked takes the fp32
    copy, which every device can run)."""
    if device.type != "cuda":
        return False
    if device.type not in _HALF_INTO_FP32:
        if torch.compiler.is_compiling():
            return False
        try:
            probe = torch.ones(1, 2, 2, dtype=torch.float16, device=device)
            torch.bmm(probe, probe, out_dtype=torch.float32)
            _HALF_INTO_FP32[device.type] = True
        except (RuntimeError, TypeError, NotImplementedError):
            _HALF_INTO_FP32[device.type] = False
    return _HALF_INTO_FP32[device.type]


def aggregate_eta(eta: torch.Tensor, per_sample: bool = True) -> torch.Tensor:
    """eta-bar (paper eq. 37): mean over heads per sample ([B]), or one value per call ([1]).

    The paper shares one scalar across the whole call; per sample (the default here) keeps a
    batch's samples, and the cond and uncond halves of CFG, from steering each other.
    """
    if per_sample:
        return eta.mean(dim=-1)
    return eta.mean().reshape(1)


# (alpha, beta, device, dtype) -> the intercepts and slopes of adaptive_coefficients' lines
_LINES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_LINES_KEPT = 64  # a session sweeping alpha and beta makes a few dozen at most


def adaptive_coefficients(
    alpha: float, beta: float, eta_bar: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """alpha_eff = 1 + (alpha - 1) * eta-bar and beta_eff = beta * (1 - eta-bar) (eq. 38-41).

    Both lines in one launch, [1, beta] + eta-bar x [alpha - 1, -beta], instead of four; the
    two coefficients come back as strided views of its [n, 2] result. The line's two small
    tensors are made once per (alpha, beta, device, dtype), outside any compile trace (inside
    one the plain expressions are traced instead, and fused there).
    """
    if torch.compiler.is_compiling():
        return 1 + (alpha - 1) * eta_bar, beta * (1 - eta_bar)
    key = (alpha, beta, eta_bar.device, eta_bar.dtype)
    line = _LINES.get(key)
    if line is None:
        if len(_LINES) >= _LINES_KEPT:
            _LINES.clear()
        made = torch.tensor([[1.0, beta], [alpha - 1.0, -beta]], dtype=eta_bar.dtype,
                            device=eta_bar.device)
        line = _LINES[key] = (made[0], made[1])
    both = torch.addcmul(line[0], eta_bar.unsqueeze(-1), line[1])
    return both[..., 0], both[..., 1]
