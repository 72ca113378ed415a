"""The Triton code of the one-launch symmetry index (the design is in hopfield/eta_triton.py).

Importing this module imports Triton; hopfield/eta_triton.py does so only when the kernel first
runs, so the pack imports fine without Triton.
"""

import triton
import triton.language as tl

from .fused_triton_kernel import _dot


@triton.jit
def _gram_tile(g_kk, g_kq, g_qq, q_base, k_base, start, sql, sqd, skl, skd, length,
               D: tl.constexpr, BLOCK_L: tl.constexpr, MASKED: tl.constexpr,
               UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    rows = start + tl.arange(0, BLOCK_L)
    dims = tl.arange(0, D)
    # Loaded as [D, BLOCK_L] (the left operands); the right ones are their transposes.
    qt_ptrs = q_base + rows[None, :] * sql + dims[:, None] * sqd
    kt_ptrs = k_base + rows[None, :] * skl + dims[:, None] * skd
    if MASKED:  # only the last, partial tile: zero rows add nothing to a Gram matrix
        row_ok = rows[None, :] < length
        q_t = tl.load(qt_ptrs, mask=row_ok, other=0.0)
        k_t = tl.load(kt_ptrs, mask=row_ok, other=0.0)
    else:
        q_t = tl.load(qt_ptrs)
        k_t = tl.load(kt_ptrs)
    q_r = tl.trans(q_t)
    g_kk += _dot(k_t, tl.trans(k_t), UPCAST, PRECISION)
    g_kq += _dot(k_t, q_r, UPCAST, PRECISION)
    g_qq += _dot(q_t, q_r, UPCAST, PRECISION)
    return g_kk, g_kq, g_qq


@triton.jit
def symmetry_index_fwd(
    Q, K, ETA, sqb, sqh, sql, sqd, skb, skh, skl, skd, heads, length,
    D: tl.constexpr, BLOCK_L: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # One program per (batch, head): it streams that head's Q and K once.
    pid = tl.program_id(0)
    b = pid // heads
    h = pid % heads
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    g_kk = tl.zeros([D, D], tl.float32)
    g_kq = tl.zeros([D, D], tl.float32)
    g_qq = tl.zeros([D, D], tl.float32)
    full_end = (length // BLOCK_L) * BLOCK_L
    for start in range(0, full_end, BLOCK_L):
        g_kk, g_kq, g_qq = _gram_tile(g_kk, g_kq, g_qq, q_base, k_base, start, sql, sqd, skl,
                                      skd, length, D, BLOCK_L, False, UPCAST, PRECISION)
    if full_end < length:
        g_kk, g_kq, g_qq = _gram_tile(g_kk, g_kq, g_qq, q_base, k_base, full_end, sql, sqd, skl,
                                      skd, length, D, BLOCK_L, True, UPCAST, PRECISION)
    # |M|^2 = tr(G_qq G_kk) and <M, M^T> = tr((K^T Q)^2) as elementwise sums (both Grams are
    # symmetric), in fp32 like the Grams.
    norm_sq = tl.sum(tl.sum(g_qq * g_kk, 1), 0)
    cross = tl.sum(tl.sum(g_kq * tl.trans(g_kq), 1), 0)
    tl.store(ETA + pid, cross / tl.maximum(norm_sq, 1e-20))
