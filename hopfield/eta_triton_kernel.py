"""The Triton code of the symmetry index (the design is in hopfield/eta_triton.py).

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
    Q, K, ETA, WORK, sqb, sqh, sql, sqd, skb, skh, skl, skd, heads, length, chunk,
    D: tl.constexpr, BLOCK_L: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # One program per (batch, head) and chunk of ``chunk`` tokens: it streams that part of the
    # head's Q and K once. Unsplit (one chunk) it writes eta itself; split, the chunk's three
    # Grams go to WORK and symmetry_index_reduce takes it from there.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    b = pid // heads
    h = pid % heads
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    g_kk = tl.zeros([D, D], tl.float32)
    g_kq = tl.zeros([D, D], tl.float32)
    g_qq = tl.zeros([D, D], tl.float32)
    first = split * chunk
    end = tl.minimum(first + chunk, length)
    full_end = first + ((end - first) // BLOCK_L) * BLOCK_L  # chunks are whole tiles but
    for start in range(first, full_end, BLOCK_L):  # the sequence's last
        g_kk, g_kq, g_qq = _gram_tile(g_kk, g_kq, g_qq, q_base, k_base, start, sql, sqd, skl,
                                      skd, length, D, BLOCK_L, False, UPCAST, PRECISION)
    if full_end < end:
        g_kk, g_kq, g_qq = _gram_tile(g_kk, g_kq, g_qq, q_base, k_base, full_end, sql, sqd, skl,
                                      skd, length, D, BLOCK_L, True, UPCAST, PRECISION)
    if SPLIT:
        record = WORK + (pid * tl.num_programs(1) + split).to(tl.int64) * (3 * D * D)
        square = tl.arange(0, D)[:, None] * D + tl.arange(0, D)[None, :]
        tl.store(record + square, g_kk)
        tl.store(record + D * D + square, g_kq)
        tl.store(record + 2 * D * D + square, g_qq)
    else:
        # |M|^2 = tr(G_qq G_kk) and <M, M^T> = tr((K^T Q)^2) as elementwise sums (both Grams
        # are symmetric), in fp32 like the Grams.
        norm_sq = tl.sum(tl.sum(g_qq * g_kk, 1), 0)
        cross = tl.sum(tl.sum(g_kq * tl.trans(g_kq), 1), 0)
        tl.store(ETA + pid, cross / tl.maximum(norm_sq, 1e-20))


@triton.jit
def symmetry_index_reduce(WORK, ETA, splits, D: tl.constexpr, ROWS: tl.constexpr):
    # One program per (batch, head): the chunks' Grams summed in a fixed order (the same bits
    # every run), ROWS rows at a time so that d = 128 fits, and the two traces of
    # symmetry_index_fwd taken as they go (G_kq's transpose read as columns).
    pid = tl.program_id(0)
    base = WORK + pid.to(tl.int64) * splits * (3 * D * D)
    cols = tl.arange(0, D)
    norm_sq = 0.0
    cross = 0.0
    for first in range(0, D, ROWS):
        rows = first + tl.arange(0, ROWS)
        block = rows[:, None] * D + cols[None, :]  # rows of a Gram
        block_t = cols[None, :] * D + rows[:, None]  # the same rows of its transpose
        kk = tl.zeros([ROWS, D], tl.float32)
        kq = tl.zeros([ROWS, D], tl.float32)
        kq_t = tl.zeros([ROWS, D], tl.float32)
        qq = tl.zeros([ROWS, D], tl.float32)
        for split in range(0, splits):
            record = base + split * (3 * D * D)
            kk += tl.load(record + block)
            kq += tl.load(record + D * D + block)
            kq_t += tl.load(record + D * D + block_t)
            qq += tl.load(record + 2 * D * D + block)
        norm_sq += tl.sum(tl.sum(qq * kk, 1), 0)
        cross += tl.sum(tl.sum(kq * kq_t, 1), 0)
    tl.store(ETA + pid, cross / tl.maximum(norm_sq, 1e-20))
