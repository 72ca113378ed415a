"""Circulation-scaled retrieval: attention with logits M_sym + alpha * M_skew.

With M = Q K^T / sqrt(d), c1 = (1 + alpha) / 2 and c2 = (1 - alpha) / 2,

    M_sym + alpha * M_skew = (c1 * Q K^T + c2 * K Q^T) / sqrt(d).

That is one standard attention over features of width 2d (the "concat trick"):

    q~ = [c1 * q, c2 * k]        k~ = [k, q]

so q~ k~^T = c1 Q K^T + c2 K Q^T, scaled by 1/sqrt(d) (not 1/sqrt(2d)); signed coefficients
make alpha < -1 or alpha > 1 (c1 or c2 negative) need no special case. The values are
widened to 2d too, so that q, k and v share one head dimension: PyTorch's flash kernels (CPU
and CUDA) only accept that, and without them the call falls back to a path that materialises
the L x L matrix. No L x L tensor is built here.

When v is as wide as q (every model's self-attention), all three inputs are views of one
buffer Z = [v, c1 q, k, c2 q] of width 4d:

    v~ = Z[:, 0:2d] = [v, c1 q]    q~ = Z[:, d:3d] = [c1 q, k]    k~ = Z[:, 2d:4d] = [k, c2 q]

q~ k~^T = c1 Q K^T + c2 K Q^T as above (only the products' order differs), and the output's
first d columns are softmax(.) v whatever v~'s other half holds. One concatenation instead of
two and a zero pad: two ops fewer per call, and 4d instead of 6d features written per token.
Other value widths (the input space's X) keep q~ and k~, and v goes as attend_any_width says.

For a Python alpha >= -1/2, c1 goes into the attention's scale (c1 / sqrt(d)) and Z holds
[v, q, k, (c2 / c1) q]: the same logits with one multiply fewer per call.

On a Hopper GPU at d = 64 the values stay at their own width (v~ = Z[:, 0:d], ``narrow_values``):
SDPA then hands the call to its memory-efficient kernel, which takes a value width other than
q's, instead of flash over values twice as wide (measured there: ``bench_gpu.py``'s rows
concat_narrow_v and concat_wide_v).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .device_facts import asked_once

Scalar = float | torch.Tensor


def skew_coefficients(alpha: Scalar, like: torch.Tensor) -> tuple[Scalar, Scalar]:
    """c1 = (1 + alpha) / 2 and c2 = (1 - alpha) / 2.

    A Python ``alpha`` gives Python floats: no device work at all (every op costs host time in
    each attention call, and torch multiplies by a Python scalar in fp32 opmath, or fp64 for
    fp64 tensors). A tensor ``alpha`` (adaptive: per-sample [B, 1, 1, 1]) gives tensors on
    ``like``'s device in fp32 (fp64 for fp64 input); it never leaves the device.
    """
    if not isinstance(alpha, torch.Tensor):
        return (1 + alpha) / 2, (1 - alpha) / 2
    dtype = torch.promote_types(like.dtype, torch.float32)  # fp64 inputs keep fp64
    c2 = torch.rsub(alpha.to(device=like.device, dtype=dtype), 1).mul_(0.5)
    return torch.rsub(c2, 1), c2


def concat_features(
    q: torch.Tensor, k: torch.Tensor, alpha: Scalar
) -> tuple[torch.Tensor, torch.Tensor]:
    """The width-2d query and key whose plain dot product is c1 Q K^T + c2 K Q^T.

    Two concatenations (four ops, fewest dispatches per call; one code path that
    torch.compile also traces, since dynamo cannot trace ``out=`` into a strided view).
    """
    c1, c2 = skew_coefficients(alpha, q)
    if isinstance(c1, torch.Tensor):  # cast so the attention runs in the model's dtype
        c1, c2 = c1.to(q.dtype), c2.to(q.dtype)
    return torch.cat((q * c1, k * c2), dim=-1), torch.cat((k, q), dim=-1)


# A Python alpha at least this folds c1 into the attention's scale (c1 >= 1/4): one multiply
# fewer per call, and the one left, q * c2 / c1, stays within |c2 / c1| <= 3 (the fp16 two-call
# path keeps |values| <= 2^14, a factor 4 under fp16's largest).
FOLD_MIN_ALPHA = -0.5


def folds_c1(alpha: Scalar) -> bool:
    """Whether c1 goes into the attention's scale: a Python alpha >= FOLD_MIN_ALPHA."""
    return not isinstance(alpha, torch.Tensor) and alpha >= FOLD_MIN_ALPHA


# Where the values keep their own width in the concat trick: Hopper (compute capability 9.x)
# at d = 64, where an H200 ran that retrieval in 6-9 % less device time than with the values
# widened for flash (SDXL 64 x 64 and SD3 1024², fp16 and bf16; third lent session). Other GPUs
# and widths were not measured and keep the widened values.
NARROW_VALUES_MAJOR = 9
NARROW_VALUES_WIDTHS = (64,)
_NARROW_VALUES: dict[int, bool] = {}


def narrow_values(device: torch.device, d: int) -> bool:
    """Whether the concat trick's retrieval takes v at its own width d on ``device``. Asked
    once per CUDA device, outside any compile trace (fused_triton.settle asks when a node
    patches a model; a trace that finds it unasked keeps the widened values)."""
    return d in NARROW_VALUES_WIDTHS and asked_once(
        _NARROW_VALUES, device, lambda capability: capability[0] == NARROW_VALUES_MAJOR)


def attend_concat(z: torch.Tensor, scale: float, narrow: bool | None = None) -> torch.Tensor:
    """The concat trick's attention over one buffer z = [v, a, k, b] of width 4d (a, b: q
    times c1 and c2, or q and (c2 / c1) q with c1 in ``scale``): v~ = [v, a] (or v alone,
    where ``narrow``, by default ``narrow_values``), q~ = [a, k], k~ = [k, b]; returns
    softmax(q~ k~^T * scale) v, [B, H, L, d]."""
    d = z.shape[-1] // 4
    if narrow_values(z.device, d) if narrow is None else narrow:
        return F.scaled_dot_product_attention(z[..., d:3 * d], z[..., 2 * d:], z[..., :d],
                                              scale=scale)
    out = F.scaled_dot_product_attention(z[..., d:3 * d], z[..., 2 * d:], z[..., :2 * d],
                                         scale=scale)
    return out[..., :d]


# Where a wider v goes in chunks, the queries and keys are zero-padded to this width (fewer calls
# than chunks of q's own width; measured on the CPU)
PADDED_WIDTH = 128


def chunks_wide_values(device: torch.device, values: int) -> bool:
    """Whether a v wider than q goes in chunks (``attend_any_width``): where SDPA's flash kernel
    takes only one width for q, k and v and a wider v falls back to its path that builds the
    L x L weights. That is the CPU, and CUDA for widths off a multiple of 8 (its memory-efficient
    kernel takes the others as they are). Elsewhere one call, as before: MPS's attention builds
    the L x L weights whatever the widths, so chunks would only repeat them."""
    return device.type == "cpu" or (device.type == "cuda" and values % 8 != 0)


def attend_any_width(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v (scale: 1 / sqrt(q's width) by default) for a v of any width. A
    narrower v is zero-padded to q's width (flash kernels take one width), and a wider one (the
    block input X's C channels), where ``chunks_wide_values``, goes in chunks: q and k
    zero-padded to PADDED_WIDTH where that is wider (which adds nothing to the logits), v in
    chunks of that width, the last one zero-padded, one flash call each, never an L x L matrix.
    At SDXL's 64 x 64 level (B = 2, 10 heads, C = 640, fp32, CPU) the L x L path took 3.2 GB more
    memory per call, the chunks 0.7 GB."""
    width, values = q.shape[-1], v.shape[-1]
    if values == width or (values > width and not chunks_wide_values(q.device, values)):
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    scale = width**-0.5 if scale is None else scale
    chunk = max(width, min(PADDED_WIDTH, values))
    if chunk > width:
        q, k = F.pad(q, (0, chunk - width)), F.pad(k, (0, chunk - width))
    parts = []
    for start in range(0, values, chunk):
        part = v[..., start:start + chunk]
        short = chunk - part.shape[-1]
        if short:
            part = F.pad(part, (0, short))
        out = F.scaled_dot_product_attention(q, k, part, scale=scale)
        parts.append(out[..., :chunk - short] if short else out)
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def skew_scaled_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, alpha: Scalar,
    narrow: bool | None = None,
) -> torch.Tensor:
    """softmax((M_sym + alpha M_skew)) V for q, k, v of shape [B, H, L, d]; returns [B, H, L, d_v].

    Needs a square logit matrix (same L for q and k): the decomposition is only defined there.
    ``narrow``: v at its own width in the attention (``attend_concat``; by default where
    ``narrow_values`` says; benchmarks time both).
    """
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"skew scaling needs self-attention (query and key lengths equal), got {q.shape[-2]} "
            f"and {k.shape[-2]}"
        )
    d, dv = q.shape[-1], v.shape[-1]
    if dv != d:  # the input space's retrieval over X (width C): q~ and k~, v as it is
        q_cat, k_cat = concat_features(q, k, alpha)
        return attend_any_width(q_cat, k_cat, v, d**-0.5)
    c1, c2 = skew_coefficients(alpha, q)
    if folds_c1(alpha):
        return attend_concat(torch.cat((v, q, k, q * (c2 / c1)), dim=-1), c1 * d**-0.5,
                             narrow)
    if isinstance(c1, torch.Tensor):  # cast so the attention runs in the model's dtype
        c1, c2 = c1.to(q.dtype), c2.to(q.dtype)
    return attend_concat(torch.cat((v, q * c1, k, q * c2), dim=-1), d**-0.5, narrow)
