"""The Triton code of the fused skew-circulation kernel (the design is in hopfield/fused_triton.py).

Importing this module imports Triton; hopfield/fused_triton.py does so only when the kernel
first runs, so the pack imports fine without Triton.
"""

import triton
import triton.language as tl

# bf16 inputs: a head whose V reaches 2^16 (inf in fp16) is scaled by a power of two until
# |V| <= this, then multiplied in fp16.
FP16_SAFE_MAX = tl.constexpr(16384.0)


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # UPCAST: the CPU interpreter multiplies bf16 tiles as raw uint16 (numpy has no bf16);
    # fp32 products of bf16/fp16 values are exact, so fp32 matches the tensor cores' result.
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32))
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _key_tile_scores(
    q_i, k_i, q_base, k_base, v_base, start, sql, sqd, skl, skd, svl, svd, length, c1, c2,
    v_inv_scale, D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    PV_FP16: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # (S1, A, V_j) of key tile j: the baseline and circulation-scaled logits, -inf past the
    # sequence's end, and V_j ready for the P V products.
    cols = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, D)
    # K_j^T and Q_j^T are loaded transposed ([D, BLOCK_N]) straight into dot layout.
    kt_ptrs = k_base + cols[None, :] * skl + dims[:, None] * skd
    qt_ptrs = q_base + cols[None, :] * sql + dims[:, None] * sqd
    v_ptrs = v_base + cols[:, None] * svl + dims[None, :] * svd
    if MASKED:  # only the last, partial key tile pays for bounds checks
        col_ok = cols < length
        k_jt = tl.load(kt_ptrs, mask=col_ok[None, :], other=0.0)
        q_jt = tl.load(qt_ptrs, mask=col_ok[None, :], other=0.0)
        v_j = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
    else:
        k_jt = tl.load(kt_ptrs)
        q_jt = tl.load(qt_ptrs)
        v_j = tl.load(v_ptrs)
    if PV_FP16:  # bf16 inputs: P V in fp16, see hopfield/fused_triton.py
        v_j = (v_j.to(tl.float32) * v_inv_scale).to(tl.float16)

    # Raw logits (no 1/sqrt(d) yet): S1 = Q_i K_j^T and A = c1 S1 + c2 K_i Q_j^T (with c1 a
    # constant 1 where the caller moved it into A's scale: one FMA per logit, no multiply).
    s1 = _dot(q_i, k_jt, UPCAST, PRECISION)
    a = c1 * s1 + c2 * _dot(k_i, q_jt, UPCAST, PRECISION)
    if MASKED:
        s1 = tl.where(col_ok[None, :], s1, float("-inf"))
        a = tl.where(col_ok[None, :], a, float("-inf"))
    return s1, a, v_j


@triton.jit
def _attend_key_tile(
    acc_b, l_b, m_b, acc_a, l_a, m_a, q_i, k_i, q_base, k_base, v_base, start,
    sql, sqd, skl, skd, svl, svd, length, c1, c2, scale_log2, scale_a, v_inv_scale,
    D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, PV_FP16: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr, DIFFERENCE: tl.constexpr,
    ANCHOR_PERT: tl.constexpr,
):
    # One key tile of both online softmaxes, in the form accumulation_form (fused_triton.py)
    # picked: acc_a holds P_a V at its own running maximum, or with DIFFERENCE (P_a - P_b) V at
    # the larger one; ANCHOR_PERT swaps the two softmaxes' roles (alpha < 1). scale_log2 and
    # scale_a turn S1 and A into log2 units of the scaled logits.
    s1, a, v_j = _key_tile_scores(
        q_i, k_i, q_base, k_base, v_base, start, sql, sqd, skl, skd, svl, svd, length, c1, c2,
        v_inv_scale, D, BLOCK_N, MASKED, PV_FP16, UPCAST, PRECISION)
    scale_b = scale_log2
    if ANCHOR_PERT:  # the baseline is the peakier softmax: the difference goes on its side
        s1, a = a, s1
        scale_b, scale_a = scale_a, scale_b

    # Online softmax of the anchor at its own running maximum m_b. Maxima are kept in log2
    # units of the scaled logits, so each probability is one FMA and one exp2 (MUFU.EX2, the
    # hardware exponential). Every tile has a valid column: the maxima are finite from the
    # first tile on.
    m_b_new = tl.maximum(m_b, tl.max(s1, 1) * scale_b)
    p_b = tl.exp2(s1 * scale_b - m_b_new[:, None])
    rescale_b = tl.exp2(m_b - m_b_new)
    l_b = l_b * rescale_b + tl.sum(p_b, 1)
    acc_b = acc_b * rescale_b[:, None] + _dot(p_b.to(v_j.dtype), v_j, UPCAST, PRECISION)

    # The other softmax. With DIFFERENCE it enters only as its difference from the anchor, both
    # at the larger running maximum (so no term exceeds 1). P V rounds P to 16 bits: rounding
    # P_a and P_b separately leaves each retrieval ~2^-12 off, uncorrelated, which is 3x the
    # output's own rounding once Delta = pert - base is a few percent of it (flat logits); the
    # rounded difference P_a - P_b errs only ~2^-12 of Delta itself.
    m_a_new = tl.maximum(m_a, tl.max(a, 1) * scale_a)
    if DIFFERENCE:
        m_a_new = tl.maximum(m_a_new, m_b_new)
    p_a = tl.exp2(a * scale_a - m_a_new[:, None])
    rescale_a = tl.exp2(m_a - m_a_new)
    l_a = l_a * rescale_a + tl.sum(p_a, 1)
    if DIFFERENCE:
        p_a = p_a - p_b * tl.exp2(m_b_new - m_a_new)[:, None]
    acc_a = acc_a * rescale_a[:, None] + _dot(p_a.to(v_j.dtype), v_j, UPCAST, PRECISION)
    return acc_b, l_b, m_b_new, acc_a, l_a, m_a_new


@triton.jit
def _plain_key_tile(
    acc, l_i, m_i, q_i, k_base, v_base, start, skl, skd, svl, svd, length, scale_log2,
    v_inv_scale, D: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr,
    PV_FP16: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # The baseline softmax alone (one flash-attention step), for samples the caller does not
    # steer: their rows get the plain retrieval, so the host's call can be skipped for them too.
    cols = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, D)
    kt_ptrs = k_base + cols[None, :] * skl + dims[:, None] * skd
    v_ptrs = v_base + cols[:, None] * svl + dims[None, :] * svd
    if MASKED:
        col_ok = cols < length
        k_jt = tl.load(kt_ptrs, mask=col_ok[None, :], other=0.0)
        v_j = tl.load(v_ptrs, mask=col_ok[:, None], other=0.0)
    else:
        k_jt = tl.load(kt_ptrs)
        v_j = tl.load(v_ptrs)
    if PV_FP16:
        v_j = (v_j.to(tl.float32) * v_inv_scale).to(tl.float16)
    s = _dot(q_i, k_jt, UPCAST, PRECISION)
    if MASKED:
        s = tl.where(col_ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * scale_log2)
    p = tl.exp2(s * scale_log2 - m_new[:, None])
    rescale = tl.exp2(m_i - m_new)
    l_i = l_i * rescale + tl.sum(p, 1)
    acc = acc * rescale[:, None] + _dot(p.to(v_j.dtype), v_j, UPCAST, PRECISION)
    return acc, l_i, m_new


@triton.jit
def _plain_rows(
    q_i, k_base, v_base, skl, skd, svl, svd, length, scale_log2, v_inv_scale,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PV_FP16: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    # (P V, row sums) of the baseline softmax alone over every key tile
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    full_end = (length // BLOCK_N) * BLOCK_N
    for start in range(0, full_end, BLOCK_N):
        acc, l_i, m_i = _plain_key_tile(
            acc, l_i, m_i, q_i, k_base, v_base, start, skl, skd, svl, svd, length, scale_log2,
            v_inv_scale, D, BLOCK_N, False, PV_FP16, UPCAST, PRECISION)
    if full_end < length:
        acc, l_i, m_i = _plain_key_tile(
            acc, l_i, m_i, q_i, k_base, v_base, full_end, skl, skd, svl, svd, length,
            scale_log2, v_inv_scale, D, BLOCK_N, True, PV_FP16, UPCAST, PRECISION)
    return acc, l_i


@triton.jit
def _steered_rows(
    q_i, k_i, q_base, k_base, v_base, sql, sqd, skl, skd, svl, svd, length, c1, c2,
    scale_log2, scale_a, v_inv_scale, D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PV_FP16: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    DIFFERENCE: tl.constexpr, ANCHOR_PERT: tl.constexpr,
):
    # Both online softmaxes over every key tile: (acc_b, l_b, m_b, acc_a, l_a, m_a)
    m_b = tl.full([BLOCK_M], float("-inf"), tl.float32)
    m_a = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_b = tl.zeros([BLOCK_M], tl.float32)
    l_a = tl.zeros([BLOCK_M], tl.float32)
    acc_b = tl.zeros([BLOCK_M, D], tl.float32)
    # DIFFERENCE: (P_a - P_b) V at the running maximum m_a; else P_a V at its own maximum
    acc_a = tl.zeros([BLOCK_M, D], tl.float32)
    full_end = (length // BLOCK_N) * BLOCK_N
    for start in range(0, full_end, BLOCK_N):
        acc_b, l_b, m_b, acc_a, l_a, m_a = _attend_key_tile(
            acc_b, l_b, m_b, acc_a, l_a, m_a, q_i, k_i, q_base, k_base, v_base, start,
            sql, sqd, skl, skd, svl, svd, length, c1, c2, scale_log2, scale_a, v_inv_scale,
            D, BLOCK_N, False, PV_FP16, UPCAST, PRECISION, DIFFERENCE, ANCHOR_PERT)
    if full_end < length:
        acc_b, l_b, m_b, acc_a, l_a, m_a = _attend_key_tile(
            acc_b, l_b, m_b, acc_a, l_a, m_a, q_i, k_i, q_base, k_base, v_base, full_end,
            sql, sqd, skl, skd, svl, svd, length, c1, c2, scale_log2, scale_a, v_inv_scale,
            D, BLOCK_N, True, PV_FP16, UPCAST, PRECISION, DIFFERENCE, ANCHOR_PERT)
    return acc_b, l_b, m_b, acc_a, l_a, m_a


@triton.jit
def _overflowed(acc):
    # Whether P V met a value that fp16 cannot hold: bf16's |v| >= 2^16 converts to inf, and
    # inf (or 0 * inf = NaN) then reaches every row of the tile. x - x is NaN for both.
    total = tl.sum(tl.sum(acc, 1), 0)
    return total - total != 0.0


@triton.jit
def _head_v_scale(v_base, svl, svd, length, D: tl.constexpr, BLOCK_N: tl.constexpr):
    # The power of two that brings this head's max |V| under FP16_SAFE_MAX (1 if it is), from
    # a sweep over its V: only a program whose P V overflowed pays for it.
    dims = tl.arange(0, D)
    top = tl.zeros([BLOCK_N, D], tl.float32)
    for start in range(0, length, BLOCK_N):
        cols = start + tl.arange(0, BLOCK_N)
        v = tl.load(v_base + cols[:, None] * svl + dims[None, :] * svd,
                    mask=(cols < length)[:, None], other=0.0)
        top = tl.maximum(top, tl.abs(v.to(tl.float32)))
    v_max = tl.max(tl.max(top, 1), 0)
    return tl.exp2(tl.maximum(tl.ceil(tl.log2(v_max / FP16_SAFE_MAX)), 0.0))


@triton.jit
def _adaptive_coefficients(ETA, COEFS, alpha_value, beta_value, b, h, pid_m, batch, heads,
                           ETA_PER_SAMPLE: tl.constexpr, ETA_BLOCK: tl.constexpr):
    # eta-bar (mean of eta_M over the sample's heads, or over the whole call) and the
    # coefficients of eq. 38-41, as hopfield.symmetry computes them; the first program of each
    # sample records them in COEFS [3, B or 1] (eta-bar, alpha_eff, beta_eff) for the caller.
    lanes = tl.arange(0, ETA_BLOCK)
    if ETA_PER_SAMPLE:
        eta = tl.load(ETA + b * heads + lanes, mask=lanes < heads, other=0.0)
        eta_bar = tl.sum(eta, 0) / heads
        slot = b
        records = (pid_m == 0) & (h == 0)
        count = batch
    else:
        eta = tl.load(ETA + lanes, mask=lanes < batch * heads, other=0.0)
        eta_bar = tl.sum(eta, 0) / (batch * heads)
        slot = 0
        records = (pid_m == 0) & (h == 0) & (b == 0)
        count = 1
    alpha = 1.0 + (alpha_value - 1.0) * eta_bar
    beta = beta_value * (1.0 - eta_bar)
    if records:
        tl.store(COEFS + slot, eta_bar)
        tl.store(COEFS + count + slot, alpha)
        tl.store(COEFS + 2 * count + slot, beta)
    return alpha, beta


@triton.jit
def skew_circulation_fwd(
    Q, K, V, Out, ALPHA, BETA, V16, ACTIVE, ETA, COEFS,
    sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sob, soh, sol, sod,
    alpha_stride, beta_stride, alpha_value, beta_value,
    batch, heads, length, scale_log2,
    D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ALPHA_PER_SAMPLE: tl.constexpr, BETA_PER_SAMPLE: tl.constexpr,
    NORM_MATCH: tl.constexpr, PV_FP16: tl.constexpr, HAS_ACTIVE: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    ADAPTIVE: tl.constexpr, ETA_PER_SAMPLE: tl.constexpr, ETA_BLOCK: tl.constexpr,
    DIFFERENCE: tl.constexpr, ANCHOR_PERT: tl.constexpr, FOLD_C1: tl.constexpr,
    V16_COPY: tl.constexpr,
):
    # Axis 0 runs over query tiles of one (batch, head): neighbouring programs stream the
    # same K, Q, V, which then come from L2.
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // heads
    h = pid_bh % heads
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, D)
    row_ok = rows < length
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    q_i = tl.load(q_base + rows[:, None] * sql + dims[None, :] * sqd,
                  mask=row_ok[:, None], other=0.0)
    k_i = tl.load(k_base + rows[:, None] * skl + dims[None, :] * skd,
                  mask=row_ok[:, None], other=0.0)
    # Scalars are cast here, whatever width the caller passed them in (a compiler may hand
    # Python floats over as fp64): every running value below stays fp32.
    if ADAPTIVE:  # alpha_eff, beta_eff from eta_M [B, H] (hopfield/eta_triton.py)
        alpha, beta = _adaptive_coefficients(
            ETA, COEFS, tl.cast(alpha_value, tl.float32), tl.cast(beta_value, tl.float32),
            b, h, pid_m, batch, heads, ETA_PER_SAMPLE, ETA_BLOCK)
    else:
        if ALPHA_PER_SAMPLE:
            alpha = tl.load(ALPHA + b * alpha_stride).to(tl.float32)
        else:
            alpha = tl.cast(alpha_value, tl.float32)
        if BETA_PER_SAMPLE:
            beta = tl.load(BETA + b * beta_stride).to(tl.float32)
        else:
            beta = tl.cast(beta_value, tl.float32)
    scale_log2 = tl.cast(scale_log2, tl.float32)
    c1 = (1.0 + alpha) * 0.5
    c2 = (1.0 - alpha) * 0.5
    scale_a = scale_log2
    if FOLD_C1:  # alpha > -1, so c1 > 0: A = c1 (S1 + (c2 / c1) K_i Q_j^T), c1 in A's scale
        scale_a = scale_log2 * c1
        c2 = c2 / c1
        c1 = 1.0
    o_base = Out + b.to(tl.int64) * sob + h.to(tl.int64) * soh
    o_ptrs = o_base + rows[:, None] * sol + dims[None, :] * sod
    # bf16 inputs: P V runs in fp16, on V as it is, unless a value of this head lies beyond
    # fp16's range (inf there): then the program sweeps the head's V for its maximum and runs
    # its rows again on V scaled down by a power of two, which v_scale undoes in the epilogue
    # (exactly). With V16_COPY (every bf16 launch: fused_triton.v16_copy) the first run reads
    # V16, V converted to fp16 before the launch ([B, H, L, d], contiguous; inf where V is
    # beyond fp16's range, as converting each tile would give), so that its key loop is
    # fp16's: no per-tile conversion of V, which every program would repeat for every V tile,
    # nor the trip through shared memory and the barrier the tensor cores' operand then
    # needs. The rerun reads V itself.
    if V16_COPY:
        pass_v = V16 + pid_bh.to(tl.int64) * length * D
        pass_svl = D
        pass_svd = 1
    else:
        pass_v = v_base
        pass_svl = svl
        pass_svd = svd
    PASS_PV_FP16: tl.constexpr = PV_FP16 and not V16_COPY  # V converted in the key loop
    v_scale = 1.0
    rerun = PV_FP16
    if HAS_ACTIVE:  # a sample the caller does not steer: its rows get the plain retrieval
        if tl.load(ACTIVE + b) == 0:
            acc, l_i = _plain_rows(q_i, k_base, pass_v, skl, skd, pass_svl, pass_svd, length,
                                   scale_log2, 1.0 / v_scale, D, BLOCK_M, BLOCK_N,
                                   PASS_PV_FP16, UPCAST, PRECISION)
            if rerun:
                v_scale = tl.cast(1.0, tl.float32)
                if _overflowed(acc):
                    v_scale = _head_v_scale(v_base, svl, svd, length, D, BLOCK_N)
                    acc, l_i = _plain_rows(q_i, k_base, v_base, skl, skd, svl, svd, length,
                                           scale_log2, 1.0 / v_scale, D, BLOCK_M, BLOCK_N,
                                           PV_FP16, UPCAST, PRECISION)
            tl.store(o_ptrs, (acc * (v_scale / l_i)[:, None]).to(Out.dtype.element_ty),
                     mask=row_ok[:, None])
            return

    acc_b, l_b, m_b, acc_a, l_a, m_a = _steered_rows(
        q_i, k_i, q_base, k_base, pass_v, sql, sqd, skl, skd, pass_svl, pass_svd, length, c1,
        c2, scale_log2, scale_a, 1.0 / v_scale, D, BLOCK_M, BLOCK_N, PASS_PV_FP16, UPCAST,
        PRECISION, DIFFERENCE, ANCHOR_PERT)
    if rerun:
        v_scale = tl.cast(1.0, tl.float32)
        if _overflowed(acc_b + acc_a):
            v_scale = _head_v_scale(v_base, svl, svd, length, D, BLOCK_N)
            acc_b, l_b, m_b, acc_a, l_a, m_a = _steered_rows(
                q_i, k_i, q_base, k_base, v_base, sql, sqd, skl, skd, svl, svd, length, c1,
                c2, scale_log2, scale_a, 1.0 / v_scale, D, BLOCK_M, BLOCK_N, PV_FP16, UPCAST,
                PRECISION, DIFFERENCE, ANCHOR_PERT)

    # Epilogue, all fp32: the two retrievals never round before their difference is taken.
    base = acc_b * (v_scale / l_b)[:, None]
    if DIFFERENCE:
        # pert = (acc_b 2^(m_b - m_a) + acc_a) / l_a, so Delta = pert - base
        # = acc_a / l_a + acc_b (2^(m_b - m_a) / l_a - 1 / l_b): the anchor's rounding enters
        # Delta only through the small difference of its two normalisers.
        inv_l_a = v_scale / l_a
        drift = inv_l_a * tl.exp2(m_b - m_a) - v_scale / l_b
        delta = acc_a * inv_l_a[:, None] + acc_b * drift[:, None]
        if ANCHOR_PERT:  # the accumulators ran with the two softmaxes' roles swapped
            base = base + delta
            delta = -delta
    else:
        delta = acc_a * (v_scale / l_a)[:, None] - base
    pert = base + delta
    new = base + beta * delta
    if NORM_MATCH:
        ref = tl.maximum(tl.sqrt(tl.sum(pert * pert, 1)), 1e-6)
        cur = tl.maximum(tl.sqrt(tl.sum(new * new, 1)), 1e-6)
        ratio = tl.minimum(tl.maximum(ref / cur, 0.25), 4.0)
        new = new * ratio[:, None]
        finite = (new == new) & (tl.abs(new) < float("inf"))
        new = tl.where(finite, new, 0.0)
    tl.store(o_ptrs, new.to(Out.dtype.element_ty), mask=row_ok[:, None])
