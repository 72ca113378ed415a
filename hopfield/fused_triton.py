"""Single-pass skew-circulation attention in Triton (value space, one launch, no L x L memory).

Each program owns one query tile i of one (batch, head) and streams the key tiles j once. It
holds Q_i and K_i; per key tile it loads K_j, Q_j, V_j and keeps two online softmaxes:

    S1 = Q_i K_j^T * s                  the baseline logits M_ij
    A  = c1 * S1 + c2 * (K_i Q_j^T * s) M_sym + alpha M_skew, since (K Q^T)_ij = M_ji

accumulating P1 V_j and P2 V_j in fp32. The epilogue blends and norm-matches in fp32 (the same
semantics as hopfield.blend.blend_retrievals) and writes one output in the input dtype. That is
2x the matmul FLOPs and exps of one flash-attention call with the same HBM traffic; the two-call
path costs 3x and rounds both retrievals to the model dtype before their (small) difference is
amplified by beta, which is what loses accuracy in bf16.

alpha and beta are per-sample device tensors (adaptive mode): nothing here syncs with the host.
Import is lazy: the pack works without Triton; ``available()`` says whether this path can run.
"""

from __future__ import annotations

import os

import torch

SUPPORTED_HEAD_DIMS = (64, 128)
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LOG2E = 1.4426950408889634


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def supports(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Shapes and dtypes the kernel handles (self-attention, equal head dims)."""
    return (
        q.ndim == 4 and q.shape == k.shape and v.shape == q.shape
        and q.shape[-1] in SUPPORTED_HEAD_DIMS and q.dtype in SUPPORTED_DTYPES
        and k.dtype == q.dtype and v.dtype == q.dtype
    )


_KERNEL = None


def _build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def skew_circulation_fwd(
        Q, K, V, Out, C1, C2, BETA,
        sqb, sqh, sql, sqd, skb, skh, skl, skd, svb, svh, svl, svd, sob, soh, sol, sod,
        heads, length, scale_log2,
        D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        NORM_MATCH: tl.constexpr,
    ):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // heads
        h = pid_bh % heads
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        dims = tl.arange(0, D)
        row_ok = rows < length
        q_base = Q + b * sqb + h * sqh
        k_base = K + b * skb + h * skh
        v_base = V + b * svb + h * svh
        q_i = tl.load(q_base + rows[:, None] * sql + dims[None, :] * sqd,
                      mask=row_ok[:, None], other=0.0)
        k_i = tl.load(k_base + rows[:, None] * skl + dims[None, :] * skd,
                      mask=row_ok[:, None], other=0.0)
        c1 = tl.load(C1 + b)
        c2 = tl.load(C2 + b)
        beta = tl.load(BETA + b)

        m1 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        m2 = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l1 = tl.zeros([BLOCK_M], tl.float32)
        l2 = tl.zeros([BLOCK_M], tl.float32)
        acc1 = tl.zeros([BLOCK_M, D], tl.float32)
        acc2 = tl.zeros([BLOCK_M, D], tl.float32)
        for start in range(0, length, BLOCK_N):
            cols = start + tl.arange(0, BLOCK_N)
            col_ok = cols < length
            k_j = tl.load(k_base + cols[:, None] * skl + dims[None, :] * skd,
                          mask=col_ok[:, None], other=0.0)
            q_j = tl.load(q_base + cols[:, None] * sql + dims[None, :] * sqd,
                          mask=col_ok[:, None], other=0.0)
            v_j = tl.load(v_base + cols[:, None] * svl + dims[None, :] * svd,
                          mask=col_ok[:, None], other=0.0)
            # logits in log2 units (exp2 is the fast path on NVIDIA parts)
            s1 = tl.dot(q_i, tl.trans(k_j)) * scale_log2
            s2 = tl.dot(k_i, tl.trans(q_j)) * scale_log2
            a = c1 * s1 + c2 * s2
            s1 = tl.where(col_ok[None, :], s1, float("-inf"))
            a = tl.where(col_ok[None, :], a, float("-inf"))

            m1_new = tl.maximum(m1, tl.max(s1, 1))
            p1 = tl.exp2(s1 - m1_new[:, None])
            r1 = tl.exp2(m1 - m1_new)
            l1 = l1 * r1 + tl.sum(p1, 1)
            acc1 = acc1 * r1[:, None] + tl.dot(p1.to(v_j.dtype), v_j)
            m1 = m1_new

            m2_new = tl.maximum(m2, tl.max(a, 1))
            p2 = tl.exp2(a - m2_new[:, None])
            r2 = tl.exp2(m2 - m2_new)
            l2 = l2 * r2 + tl.sum(p2, 1)
            acc2 = acc2 * r2[:, None] + tl.dot(p2.to(v_j.dtype), v_j)
            m2 = m2_new

        base = acc1 / l1[:, None]
        pert = acc2 / l2[:, None]
        new = base + beta * (pert - base)
        if NORM_MATCH:
            ref = tl.maximum(tl.sqrt(tl.sum(pert * pert, 1)), 1e-6)
            cur = tl.maximum(tl.sqrt(tl.sum(new * new, 1)), 1e-6)
            ratio = tl.minimum(tl.maximum(ref / cur, 0.25), 4.0)
            new = new * ratio[:, None]
            finite = (new == new) & (tl.abs(new) < float("inf"))
            new = tl.where(finite, new, 0.0)
        o_ptr = Out + b * sob + h * soh + rows[:, None] * sol + dims[None, :] * sod
        tl.store(o_ptr, new.to(Out.dtype.element_ty), mask=row_ok[:, None])

    return skew_circulation_fwd


def _per_sample(value, batch: int, device) -> torch.Tensor:
    """alpha or beta (float, [B|1, 1, 1, 1] or [B]) as a contiguous fp32 [B] device tensor."""
    t = torch.as_tensor(value, dtype=torch.float32, device=device).reshape(-1)
    return t.expand(batch).contiguous() if t.numel() == 1 else t.contiguous()


def fused_skew_circulation(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha, beta, *,
    norm_match: bool = True, block_m: int | None = None, block_n: int | None = None,
) -> torch.Tensor:
    """Blended, norm-matched output [B, H, L, d] for q, k, v [B, H, L, d] (any strides)."""
    global _KERNEL
    if not supports(q, k, v):
        raise ValueError(
            f"fused kernel: needs q, k, v of one shape [B, H, L, d] with d in "
            f"{SUPPORTED_HEAD_DIMS} and dtype fp16/bf16/fp32; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}, {q.dtype}"
        )
    if not q.is_cuda and not interpreting():
        raise RuntimeError("fused kernel: needs a CUDA device (or TRITON_INTERPRET=1 for tests)")
    import triton

    if _KERNEL is None:
        _KERNEL = _build_kernel()
    batch, heads, length, d = q.shape
    alpha_t = _per_sample(alpha, batch, q.device)
    c1, c2 = (1 + alpha_t) / 2, (1 - alpha_t) / 2
    beta_t = _per_sample(beta, batch, q.device)
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    block_m = block_m or (64 if d <= 64 else 32 if q.dtype == torch.float32 else 64)
    block_n = block_n or 64
    grid = (triton.cdiv(length, block_m), batch * heads)
    _KERNEL[grid](
        q, k, v, out, c1, c2, beta_t,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        heads, length, (d ** -0.5) * LOG2E,
        D=d, BLOCK_M=block_m, BLOCK_N=block_n, NORM_MATCH=norm_match,
        num_warps=4 if d <= 64 else 8, num_stages=2,
    )
    return out
