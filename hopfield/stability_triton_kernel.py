"""The Triton code of the one-launch stability measures (the design is in
hopfield/stability_triton.py).

Importing this module imports Triton; hopfield/stability_triton.py does so only when the kernel
first runs, so the pack imports fine without Triton.
"""

import triton
import triton.language as tl

from .fused_triton_kernel import _dot

EPS = tl.constexpr(1e-12)  # hopfield.stability.EPS
ETA_EPS = tl.constexpr(1e-20)


@triton.jit
def _load_tile(q_base, k_base, x_base, x_mean, start, sql, sqd, skl, skd, sxl, sxd, length,
               D: tl.constexpr, M_BLOCK: tl.constexpr, BLOCK_L: tl.constexpr):
    # q, k [BLOCK_L, D] in the model's dtype; xc [BLOCK_L, M_BLOCK]: this program's retrieval
    # columns centred over tokens and rounded to the model's dtype, as the torch path's buffer
    # holds them (zero on rows past the end, so that they add nothing anywhere).
    rows = start + tl.arange(0, BLOCK_L)
    ok = rows < length
    dims = tl.arange(0, D)
    cols = tl.arange(0, M_BLOCK)
    q = tl.load(q_base + rows[:, None] * sql + dims[None, :] * sqd, mask=ok[:, None], other=0.0)
    k = tl.load(k_base + rows[:, None] * skl + dims[None, :] * skd, mask=ok[:, None], other=0.0)
    x = tl.load(x_base + rows[:, None] * sxl + cols[None, :] * sxd, mask=ok[:, None], other=0.0)
    xc = tl.where(ok[:, None], x.to(tl.float32) - x_mean[None, :], 0.0).to(q.dtype)
    return q, k, xc, ok


@triton.jit
def stability_fwd(
    Q, K, X, PARTS, TOKENS,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, sxb, sxh, sxl, sxd,
    heads, length, field_scale, head_scale, token_scale,
    D: tl.constexpr, M_BLOCK: tl.constexpr, BLOCK_L: tl.constexpr, UPCAST: tl.constexpr,
    PRECISION: tl.constexpr, WITH_ETA: tl.constexpr,
):
    # One program per (batch, head) and block of M_BLOCK retrieval columns (each column's
    # measures are its own), three sweeps over the tokens: the columns' means; the Grams
    # (K^T Xc, Q^T Xc for the field, and with WITH_ETA eta's K^T K, K^T Q, Q^T Q) with the
    # token sums of k, q and xc^2; then the field h / |xc| = [K | Q] W - shift tile by tile
    # with its reductions (|h|^2, the count of lambda < 0, lambda summed per token).
    # PARTS [B, H, blocks, 4] gets this block's share of the head-mean of E, r, Align (and
    # eta from block 0), TOKENS [B, H, blocks, L] its share of the lambda map: summing over
    # heads and blocks gives the call's measures.
    pid = tl.program_id(0)
    block = tl.program_id(1)
    blocks = tl.num_programs(1)
    b = pid // heads
    h = pid % heads
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    x_base = X + b.to(tl.int64) * sxb + h.to(tl.int64) * sxh + (block * M_BLOCK) * sxd
    cols = tl.arange(0, M_BLOCK)

    x_sum = tl.zeros([M_BLOCK], tl.float32)
    for start in range(0, length, BLOCK_L):
        rows = start + tl.arange(0, BLOCK_L)
        x = tl.load(x_base + rows[:, None] * sxl + cols[None, :] * sxd,
                    mask=rows[:, None] < length, other=0.0)
        x_sum += tl.sum(x.to(tl.float32), 0)
    x_mean = x_sum / length

    g_kk = tl.zeros([D, D], tl.float32)
    g_kq = tl.zeros([D, D], tl.float32)
    g_qq = tl.zeros([D, D], tl.float32)
    a_k = tl.zeros([D, M_BLOCK], tl.float32)  # K^T Xc
    a_q = tl.zeros([D, M_BLOCK], tl.float32)  # Q^T Xc
    k_sum = tl.zeros([D], tl.float32)
    q_sum = tl.zeros([D], tl.float32)
    col_sq = tl.zeros([M_BLOCK], tl.float32)  # |xc|^2 per column
    for start in range(0, length, BLOCK_L):
        q, k, xc, ok = _load_tile(q_base, k_base, x_base, x_mean, start, sql, sqd, skl, skd,
                                  sxl, sxd, length, D, M_BLOCK, BLOCK_L)
        k_t = tl.trans(k)
        q_t = tl.trans(q)
        if WITH_ETA:
            g_kk += _dot(k_t, k, UPCAST, PRECISION)
            g_kq += _dot(k_t, q, UPCAST, PRECISION)
            g_qq += _dot(q_t, q, UPCAST, PRECISION)
        a_k += _dot(k_t, xc, UPCAST, PRECISION)
        a_q += _dot(q_t, xc, UPCAST, PRECISION)
        k_sum += tl.sum(k.to(tl.float32), 0)
        q_sum += tl.sum(q.to(tl.float32), 0)
        xc32 = xc.to(tl.float32)
        col_sq += tl.sum(xc32 * xc32, 0)

    out = PARTS + (pid * blocks + block) * 4
    if WITH_ETA:  # eta = tr((K^T Q)^2) / tr(Q^T Q K^T K), as hopfield.symmetry
        norm_sq = tl.sum(tl.sum(g_qq * g_kk, 1), 0)
        eta = tl.sum(tl.sum(g_kq * tl.trans(g_kq), 1), 0) / tl.maximum(norm_sq, ETA_EPS)
        tl.store(out + 3, tl.where(block == 0, eta / heads, 0.0))  # its mean over heads
    else:  # eta by its own kernel (hopfield/eta_triton.py)
        tl.store(out + 3, 0.0)
    # h / |xc| = K (Q^T Xc) w + Q (K^T Xc) w - shift, w = 1 / (2 sqrt(d) |xc|^2) per column;
    # shift: its token mean (h is centred); sum(lambda) per column = 2 w sum(K^T Xc * Q^T Xc)
    w = field_scale / tl.maximum(col_sq, EPS)
    w_k = a_q * w[None, :]  # multiplies K
    w_q = a_k * w[None, :]  # multiplies Q
    shift = (tl.sum(k_sum[:, None] * w_k, 0) + tl.sum(q_sum[:, None] * w_q, 0)) / length
    total = 2.0 * w * tl.sum(a_k * a_q, 0)
    w_k_low = w_k.to(Q.dtype.element_ty)
    w_q_low = w_q.to(Q.dtype.element_ty)

    field_sq = tl.zeros([M_BLOCK], tl.float32)
    negative = tl.zeros([M_BLOCK], tl.float32)
    t_base = TOKENS + (pid * blocks + block).to(tl.int64) * length
    for start in range(0, length, BLOCK_L):
        q, k, xc, ok = _load_tile(q_base, k_base, x_base, x_mean, start, sql, sqd, skl, skd,
                                  sxl, sxd, length, D, M_BLOCK, BLOCK_L)
        field = _dot(k, w_k_low, UPCAST, PRECISION) + _dot(q, w_q_low, UPCAST, PRECISION)
        field = tl.where(ok[:, None], field - shift[None, :], 0.0)
        field_sq += tl.sum(field * field, 0)
        lam = field * xc.to(tl.float32)  # lambda = xi * h
        negative += tl.sum((lam < 0).to(tl.float32), 0)
        rows = start + tl.arange(0, BLOCK_L)
        tl.store(t_base + rows, tl.sum(lam, 1) * token_scale, mask=ok)

    align = total / tl.maximum(tl.sqrt(col_sq * field_sq), EPS)  # cos(xi, h)
    # head_scale = 1 / (heads * m): each column's measure averaged over the call's heads and
    # features once the parts are summed
    tl.store(out, -0.5 * tl.sum(total, 0) * head_scale)
    tl.store(out + 1, tl.sum(negative, 0) * head_scale / length)
    tl.store(out + 2, tl.sum(align, 0) * head_scale)
