"""The Triton code of the Stability Probe's measures, in four launches that split the tokens
among programs (the design is in hopfield/stability_triton.py).

Importing this module imports Triton; hopfield/stability_triton.py does so only when the kernel
first runs, so the pack imports fine without Triton.
"""

import triton
import triton.language as tl

from .fused_triton_kernel import _dot

EPS = tl.constexpr(1e-12)  # hopfield.stability.EPS
ETA_EPS = tl.constexpr(1e-20)


@triton.jit
def _chunk_program(Q, K, X, heads, sqb, sqh, skb, skh, sxb, sxh, sxd, M_BLOCK: tl.constexpr):
    # A token-sweeping stage's program: (sample x heads + head, column block, chunk), the
    # numbers of blocks and chunks, and where its head's q, k and its block of retrieval
    # columns in X start.
    pid = tl.program_id(0)
    block = tl.program_id(1)
    b = (pid // heads).to(tl.int64)
    h = (pid % heads).to(tl.int64)
    return (pid, block, tl.program_id(2), tl.num_programs(1), tl.num_programs(2),
            Q + b * sqb + h * sqh, K + b * skb + h * skh,
            X + b * sxb + h * sxh + (block * M_BLOCK).to(tl.int64) * sxd)


@triton.jit
def _reference(x_base, sxl, sxd, length, M_BLOCK: tl.constexpr, REF_ROWS: tl.constexpr):
    # A reference value per column, near its mean: the mean of REF_ROWS tokens spread evenly
    # over the sequence (the first tokens alone can be SD3's text tokens, far from the image's).
    # Sums are taken of x - ref, so the centring cancels little, and a constant column is
    # exactly zero from the start. Every program of a head computes the same values.
    rows = (tl.arange(0, REF_ROWS) * length) // REF_ROWS
    cols = tl.arange(0, M_BLOCK)
    x = tl.load(x_base + rows[:, None] * sxl + cols[None, :] * sxd)
    return tl.sum(x.to(tl.float32), 0) / REF_ROWS


@triton.jit
def _tile(q_base, k_base, x_base, start, end, sql, sqd, skl, skd, sxl, sxd,
          D: tl.constexpr, M_BLOCK: tl.constexpr, BLOCK_L: tl.constexpr):
    # q, k [BLOCK_L, D] and x [BLOCK_L, M_BLOCK] as stored, zero on rows at or past ``end``
    rows = start + tl.arange(0, BLOCK_L)
    ok = rows < end
    dims = tl.arange(0, D)
    cols = tl.arange(0, M_BLOCK)
    q = tl.load(q_base + rows[:, None] * sql + dims[None, :] * sqd, mask=ok[:, None], other=0.0)
    k = tl.load(k_base + rows[:, None] * skl + dims[None, :] * skd, mask=ok[:, None], other=0.0)
    x = tl.load(x_base + rows[:, None] * sxl + cols[None, :] * sxd, mask=ok[:, None], other=0.0)
    return q, k, x, rows, ok


@triton.jit
def _matrix(base, ROWS: tl.constexpr, COLS: tl.constexpr):
    # offsets of a row-major [ROWS, COLS] block at ``base``
    return base + tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]


@triton.jit
def stability_grams(
    Q, K, X, WORK,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, sxb, sxh, sxl, sxd,
    heads, length, chunk, eta_grams,
    D: tl.constexpr, M_BLOCK: tl.constexpr, BLOCK_L: tl.constexpr, REF_ROWS: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, WITH_ETA: tl.constexpr,
):
    # Stage 1, one program per (sample, head), column block and chunk of ``chunk`` tokens: the
    # chunk's share of every sum over tokens, written to its record in WORK. With xs = x - ref
    # rounded to the model's dtype (the operand tensor cores take): K^T xs, Q^T xs, the token
    # sums of k, q, xs and xs^2, and ref itself; with WITH_ETA also eta's K^T K, K^T Q, Q^T Q
    # at WORK[eta_grams:] (block 0's). fp32 accumulation throughout.
    pid, block, split, blocks, splits, q_base, k_base, x_base = _chunk_program(
        Q, K, X, heads, sqb, sqh, skb, skh, sxb, sxh, sxd, M_BLOCK)
    ref = _reference(x_base, sxl, sxd, length, M_BLOCK, REF_ROWS)

    g_kk = tl.zeros([D, D], tl.float32)
    g_kq = tl.zeros([D, D], tl.float32)
    g_qq = tl.zeros([D, D], tl.float32)
    a_k = tl.zeros([D, M_BLOCK], tl.float32)  # K^T xs
    a_q = tl.zeros([D, M_BLOCK], tl.float32)  # Q^T xs
    k_sum = tl.zeros([D], tl.float32)
    q_sum = tl.zeros([D], tl.float32)
    xs_sum = tl.zeros([M_BLOCK], tl.float32)
    xs_sq = tl.zeros([M_BLOCK], tl.float32)
    first = split * chunk
    end = tl.minimum(first + chunk, length)
    for start in range(first, end, BLOCK_L):
        q, k, x, rows, ok = _tile(q_base, k_base, x_base, start, end, sql, sqd, skl, skd, sxl,
                                  sxd, D, M_BLOCK, BLOCK_L)
        xs = tl.where(ok[:, None], x.to(tl.float32) - ref[None, :], 0.0).to(q.dtype)
        k_t = tl.trans(k)
        q_t = tl.trans(q)
        if WITH_ETA:
            g_kk += _dot(k_t, k, UPCAST, PRECISION)
            g_kq += _dot(k_t, q, UPCAST, PRECISION)
            g_qq += _dot(q_t, q, UPCAST, PRECISION)
        a_k += _dot(k_t, xs, UPCAST, PRECISION)
        a_q += _dot(q_t, xs, UPCAST, PRECISION)
        k_sum += tl.sum(k.to(tl.float32), 0)
        q_sum += tl.sum(q.to(tl.float32), 0)
        xs32 = xs.to(tl.float32)
        xs_sum += tl.sum(xs32, 0)
        xs_sq += tl.sum(xs32 * xs32, 0)

    # the record: a_k, a_q [D, M]; k_sum, q_sum [D]; xs_sum, xs_sq, ref [M]
    record = WORK + ((pid * blocks + block) * splits + split).to(tl.int64) * (
        2 * D * M_BLOCK + 2 * D + 3 * M_BLOCK)
    tl.store(_matrix(record, D, M_BLOCK), a_k)
    tl.store(_matrix(record + D * M_BLOCK, D, M_BLOCK), a_q)
    dims = tl.arange(0, D)
    cols = tl.arange(0, M_BLOCK)
    vectors = record + 2 * D * M_BLOCK
    tl.store(vectors + dims, k_sum)
    tl.store(vectors + D + dims, q_sum)
    tl.store(vectors + 2 * D + cols, xs_sum)
    tl.store(vectors + 2 * D + M_BLOCK + cols, xs_sq)
    tl.store(vectors + 2 * D + 2 * M_BLOCK + cols, ref)
    if WITH_ETA:
        grams = WORK + eta_grams + (pid * splits + split).to(tl.int64) * (3 * D * D)
        if block == 0:
            tl.store(_matrix(grams, D, D), g_kk)
            tl.store(_matrix(grams + D * D, D, D), g_kq)
            tl.store(_matrix(grams + 2 * D * D, D, D), g_qq)


@triton.jit
def stability_weights(
    WORK, length, splits, stats, eta_grams, eta_out, field_scale,
    D: tl.constexpr, M_BLOCK: tl.constexpr, WITH_ETA: tl.constexpr,
):
    # Stage 2, one program per (sample, head) and column block: the chunks' records summed in
    # a fixed order (the same bits every run), then what the field needs. With delta the mean
    # of xs: the centred column xc = xs - delta, |xc|^2 = sum xs^2 - L delta^2, K^T xc =
    # K^T xs - k_sum delta^T (likewise Q), and h / |xc| = K w_k + Q w_q - shift with
    # w_k = (Q^T xc) w, w_q = (K^T xc) w, w = 1 / (2 sqrt(d) |xc|^2) per column, shift the
    # field's token mean (h is centred); sum(lambda) per column = 2 w sum(K^T xc * Q^T xc).
    # Writes w_k, w_q, the columns' means, shift, that sum and |xc|^2 to WORK[stats:], and
    # (WITH_ETA) eta = tr((K^T Q)^2) / tr(Q^T Q K^T K) to WORK[eta_out + pid].
    pid = tl.program_id(0)
    block = tl.program_id(1)
    blocks = tl.num_programs(1)
    size = 2 * D * M_BLOCK + 2 * D + 3 * M_BLOCK
    first = WORK + ((pid * blocks + block) * splits).to(tl.int64) * size
    dims = tl.arange(0, D)
    cols = tl.arange(0, M_BLOCK)
    a_k = tl.zeros([D, M_BLOCK], tl.float32)
    a_q = tl.zeros([D, M_BLOCK], tl.float32)
    k_sum = tl.zeros([D], tl.float32)
    q_sum = tl.zeros([D], tl.float32)
    xs_sum = tl.zeros([M_BLOCK], tl.float32)
    xs_sq = tl.zeros([M_BLOCK], tl.float32)
    for split in range(0, splits):
        record = first + split * size
        a_k += tl.load(_matrix(record, D, M_BLOCK))
        a_q += tl.load(_matrix(record + D * M_BLOCK, D, M_BLOCK))
        vectors = record + 2 * D * M_BLOCK
        k_sum += tl.load(vectors + dims)
        q_sum += tl.load(vectors + D + dims)
        xs_sum += tl.load(vectors + 2 * D + cols)
        xs_sq += tl.load(vectors + 2 * D + M_BLOCK + cols)
    ref = tl.load(first + 2 * D * M_BLOCK + 2 * D + 2 * M_BLOCK + cols)

    delta = xs_sum / length
    col_sq = tl.maximum(xs_sq - delta * xs_sum, 0.0)  # |xc|^2
    a_k -= k_sum[:, None] * delta[None, :]  # K^T xc
    a_q -= q_sum[:, None] * delta[None, :]  # Q^T xc
    w = field_scale / tl.maximum(col_sq, EPS)
    w_k = a_q * w[None, :]  # multiplies K
    w_q = a_k * w[None, :]  # multiplies Q
    shift = (tl.sum(k_sum[:, None] * w_k, 0) + tl.sum(q_sum[:, None] * w_q, 0)) / length
    total = 2.0 * w * tl.sum(a_k * a_q, 0)

    # the stats record: w_k, w_q [D, M]; mean, shift, total, |xc|^2 [M]
    out = WORK + stats + (pid * blocks + block).to(tl.int64) * (2 * D * M_BLOCK + 4 * M_BLOCK)
    tl.store(_matrix(out, D, M_BLOCK), w_k)
    tl.store(_matrix(out + D * M_BLOCK, D, M_BLOCK), w_q)
    vectors = out + 2 * D * M_BLOCK
    tl.store(vectors + cols, ref + delta)
    tl.store(vectors + M_BLOCK + cols, shift)
    tl.store(vectors + 2 * M_BLOCK + cols, total)
    tl.store(vectors + 3 * M_BLOCK + cols, col_sq)

    if WITH_ETA:
        if block == 0:
            g_kk = tl.zeros([D, D], tl.float32)
            g_kq = tl.zeros([D, D], tl.float32)
            g_qq = tl.zeros([D, D], tl.float32)
            grams = WORK + eta_grams + (pid * splits).to(tl.int64) * (3 * D * D)
            for split in range(0, splits):
                record = grams + split * (3 * D * D)
                g_kk += tl.load(_matrix(record, D, D))
                g_kq += tl.load(_matrix(record + D * D, D, D))
                g_qq += tl.load(_matrix(record + 2 * D * D, D, D))
            norm_sq = tl.sum(tl.sum(g_qq * g_kk, 1), 0)
            eta = tl.sum(tl.sum(g_kq * tl.trans(g_kq), 1), 0) / tl.maximum(norm_sq, ETA_EPS)
            tl.store(WORK + eta_out + pid, eta)


@triton.jit
def stability_field(
    Q, K, X, WORK,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, sxb, sxh, sxl, sxd,
    heads, length, chunk, stats, field, tokens, token_scale,
    D: tl.constexpr, M_BLOCK: tl.constexpr, BLOCK_L: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # Stage 3, one program per (sample, head), column block and chunk: the field h / |xc| of
    # the chunk's tokens (its weights rounded to the model's dtype for the tensor cores), with
    # lambda = xc * (h / |xc|) = xi * h. Writes each token's lambda summed over the block's
    # columns (WORK[tokens:], scaled by token_scale) and the chunk's |h|^2 and count of
    # lambda < 0 per column (WORK[field:]).
    pid, block, split, blocks, splits, q_base, k_base, x_base = _chunk_program(
        Q, K, X, heads, sqb, sqh, skb, skh, sxb, sxh, sxd, M_BLOCK)
    cols = tl.arange(0, M_BLOCK)
    program = (pid * blocks + block).to(tl.int64)
    stat = WORK + stats + program * (2 * D * M_BLOCK + 4 * M_BLOCK)
    w_k = tl.load(_matrix(stat, D, M_BLOCK)).to(Q.dtype.element_ty)
    w_q = tl.load(_matrix(stat + D * M_BLOCK, D, M_BLOCK)).to(Q.dtype.element_ty)
    mean = tl.load(stat + 2 * D * M_BLOCK + cols)
    shift = tl.load(stat + 2 * D * M_BLOCK + M_BLOCK + cols)

    field_sq = tl.zeros([M_BLOCK], tl.float32)
    negative = tl.zeros([M_BLOCK], tl.float32)
    t_base = WORK + tokens + program * length
    first = split * chunk
    end = tl.minimum(first + chunk, length)
    for start in range(first, end, BLOCK_L):
        q, k, x, rows, ok = _tile(q_base, k_base, x_base, start, end, sql, sqd, skl, skd, sxl,
                                  sxd, D, M_BLOCK, BLOCK_L)
        h = _dot(k, w_k, UPCAST, PRECISION) + _dot(q, w_q, UPCAST, PRECISION)
        h = tl.where(ok[:, None], h - shift[None, :], 0.0)
        field_sq += tl.sum(h * h, 0)
        lam = h * tl.where(ok[:, None], x.to(tl.float32) - mean[None, :], 0.0)
        negative += tl.sum((lam < 0).to(tl.float32), 0)
        tl.store(t_base + rows, tl.sum(lam, 1) * token_scale, mask=ok)
    part = WORK + field + (program * splits + split) * (2 * M_BLOCK)
    tl.store(part + cols, field_sq)
    tl.store(part + M_BLOCK + cols, negative)


@triton.jit
def stability_finish(
    WORK, OUT, heads, length, splits, stats, field, tokens, eta, out_stride, head_scale,
    D: tl.constexpr, M_BLOCK: tl.constexpr, BLOCKS: tl.constexpr, TOKEN_BLOCK: tl.constexpr,
):
    # Stage 4, one program per sample and TOKEN_BLOCK tokens: the lambda map of those tokens
    # (summed over heads and column blocks) into OUT[b, 4:]; the first program of each sample
    # also reduces the chunks' |h|^2 and counts and writes the sample's E, r, Align and eta
    # (each the mean over heads and features) to OUT[b, :4]. head_scale = 1 / (heads * m).
    b = tl.program_id(0)
    t = tl.program_id(1)
    out = OUT + b.to(tl.int64) * out_stride
    rows = t * TOKEN_BLOCK + tl.arange(0, TOKEN_BLOCK)
    ok = rows < length
    first = (b * heads * BLOCKS).to(tl.int64)  # the sample's first (head, column block)
    lam = tl.zeros([TOKEN_BLOCK], tl.float32)
    for i in range(0, heads * BLOCKS):
        lam += tl.load(WORK + tokens + (first + i) * length + rows, mask=ok, other=0.0)
    tl.store(out + 4 + rows, lam, mask=ok)

    if t == 0:
        cols = tl.arange(0, M_BLOCK)
        energy = tl.zeros([M_BLOCK], tl.float32)
        negative = tl.zeros([M_BLOCK], tl.float32)
        align = tl.zeros([M_BLOCK], tl.float32)
        eta_sum = 0.0
        for i in range(0, heads * BLOCKS):
            p = first + i
            stat = WORK + stats + p * (2 * D * M_BLOCK + 4 * M_BLOCK) + 2 * D * M_BLOCK
            total = tl.load(stat + 2 * M_BLOCK + cols)
            col_sq = tl.load(stat + 3 * M_BLOCK + cols)
            field_sq = tl.zeros([M_BLOCK], tl.float32)
            for split in range(0, splits):
                part = WORK + field + (p * splits + split) * (2 * M_BLOCK)
                field_sq += tl.load(part + cols)
                negative += tl.load(part + M_BLOCK + cols)
            energy += -0.5 * total
            align += total / tl.maximum(tl.sqrt(col_sq * field_sq), EPS)  # cos(xi, h)
        for h in range(0, heads):
            eta_sum += tl.load(WORK + eta + b * heads + h)
        tl.store(out, tl.sum(energy, 0) * head_scale)
        tl.store(out + 1, tl.sum(negative, 0) * head_scale / length)
        tl.store(out + 2, tl.sum(align, 0) * head_scale)
        tl.store(out + 3, eta_sum / heads)
