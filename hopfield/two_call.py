"""The two-call path: the baseline and the concat-trick retrieval as two standard attention calls
(any device, no Triton: Windows without triton-windows, ROCm, MPS, CPU), blended in fp32.

Both retrievals are rounded to their compute dtype before their small difference is amplified
by beta, so the compute dtype decides the accuracy of the steering change:

* fp16 and fp32 keep the host's own baseline call and compute the perturbed one alike (fp16's
  11-bit mantissa keeps the change accurate to a few percent).
* bf16's 8-bit mantissa would make that error several times the error of merely rounding the
  output to bf16. So bf16 recomputes both retrievals in a finer dtype (the host's bf16 baseline
  then serves only unselected rows): on accelerators in fp16, where flash kernels exist and
  every bf16 value converts exactly once scaled by a power of two into fp16's range (below),
  and with a number beta the blend stays in fp16 storage too (its arithmetic in fp32); on the
  CPU in fp32, whose attention costs there what bf16's does.

benchmarks/precision.py prints each variant's error against the output-rounding floor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .blend import blend_retrievals
from .skew import Scalar, attend_concat, folds_c1, skew_coefficients, skew_scaled_attention

# Largest |value| after scaling into fp16: 2^14, with headroom below fp16's 65504 for the
# products of the concat trick's coefficients (|c1|, |c2| <= (1 + |alpha|) / 2).
FP16_TOP_LOG2 = 14.0


def v_top_log2(beta: Scalar) -> float:
    """The exponent of V's largest |value| once scaled into fp16. A number beta blends the
    retrievals in fp16 (blend_retrievals' in_fp16), and the blend base + beta (pert - base)
    reaches (|1 - beta| + |beta|) times V's largest value: that stays under 2^15, half of
    fp16's largest, wherever V tops at 2^14 over it (beta = 3: 2^12). Powers of two keep the
    scaling exact; only values 2^(14 + top) or more times smaller than V's largest land in
    fp16's subnormals and lose bits, as under 2^14 (a retrieval weighs them as little). A
    tensor beta blends in fp32, with V at 2^14."""
    if isinstance(beta, torch.Tensor):
        return FP16_TOP_LOG2
    growth = abs(1.0 - beta) + abs(beta)  # >= 1
    return min(FP16_TOP_LOG2, 15.0 - math.ceil(math.log2(growth)))


def own_baseline(q: torch.Tensor) -> bool:
    """Whether the two-call path computes its own baseline for this dtype (bf16)."""
    return q.dtype == torch.bfloat16


def two_call(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, base: torch.Tensor | None,
             alpha: Scalar, beta: Scalar, norm_match: bool = True,
             bf16_compute: torch.dtype | None = None,
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Blend of the baseline and the alpha-scaled retrieval, fp32 (fp64 for fp64 input), or
    ``out_dtype`` (the model's: the blend's last multiply rounds into it, see blend_retrievals).

    ``base``: the host's output, used unless ``own_baseline(q)``. ``bf16_compute`` forces the
    dtype bf16 inputs are computed in (tests): fp16 off the CPU, fp32 on it by default.
    """
    if own_baseline(q):
        compute = bf16_compute or (torch.float32 if q.device.type == "cpu" else torch.float16)
        if compute == torch.float16:
            base, perturbed, v_scale = _retrievals_in_fp16(q, k, v, alpha, v_top_log2(beta))
            return blend_retrievals(base, perturbed, beta, norm_match=norm_match,
                                    unscale=v_scale[1], scaled_by=v_scale[0],
                                    out_dtype=out_dtype,
                                    in_fp16=not isinstance(beta, torch.Tensor))
        q, k, v = q.to(compute), k.to(compute), v.to(compute)
        base = F.scaled_dot_product_attention(q, k, v)
    perturbed = skew_scaled_attention(q, k, v, alpha)
    return blend_retrievals(base, perturbed, beta, norm_match=norm_match, out_dtype=out_dtype)


def _fp16_exponents(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    v_top: float = FP16_TOP_LOG2) -> torch.Tensor:
    """[a, b, c, -c] (fp32, on the device, no host sync): q * 2^a, k * 2^b and v * 2^c convert
    into fp16 exactly (see ``_retrievals_in_fp16``), with a = -b and max |v| * 2^c <= 2^v_top;
    2^-c undoes v's scaling.

    All three maxima in one foreach reduction straight into fp32 (one launch where the device
    allows, and no full-size |x| temporaries), their exponents e in place, and the four
    results as one small matrix-vector product of e, floored: seven small launches per call
    where the same arithmetic op by op took thirteen, which at SDXL sizes is a fair part of
    one attention call on a GPU. Every value is a small integer or half of one, so each step
    is exact.
    """
    top = torch.stack(torch._foreach_norm([q, k, v], ord=float("inf"), dtype=torch.float32))
    e = top.clamp_min_(2.0**-100).log2_().ceil_()  # max |q|, |k|, |v| -> exponent; 0: -100
    weights, offsets = _exponent_map(e.device, v_top)
    return torch.addmv(offsets, weights, e).floor_()


# (device, v_top) -> (weights, offsets), made once: v_top takes a few values per session
_EXPONENT_MAPS: dict = {}


def _exponent_map(device: torch.device, v_top: float) -> tuple:
    """What turns the exponents e = (e_q, e_k, e_v) into [a, b, c, -c]: with
    shift = ceil((e_q - e_k) / 2), a = -shift = floor((e_k - e_q) / 2) and
    b = shift = floor((e_q - e_k + 1) / 2) (e being integers); c = v_top - e_v, an integer
    as its negative. So [a, b, c, -c] is floor(weights @ e + offsets)."""
    found = _EXPONENT_MAPS.get((device, v_top))
    if found is None:
        found = (
            torch.tensor([[-0.5, 0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.0, -1.0],
                          [0.0, 0.0, 1.0]], device=device),
            torch.tensor([0.0, 0.5, v_top, -v_top], device=device),
        )
        if not torch.compiler.is_compiling():  # a trace keeps them as its graph's constants
            _EXPONENT_MAPS[(device, v_top)] = found
    return found


def _retrievals_in_fp16(q, k, v, alpha, v_top=FP16_TOP_LOG2):
    """(baseline, perturbed, (scale, unscale)) of bf16 inputs computed in fp16: both retrievals
    in fp16 and still scaled by V's power of two ``scale`` (max |v| at most 2^v_top), which
    ``unscale`` (its inverse; both fp32 on the device) undoes; blend_retrievals applies it
    once to the blend, which scales exactly.

    Powers of two keep every conversion exact: q is divided and k multiplied by the same 2^a
    (every logit, of either term of the concat trick, is unchanged), V is scaled by 2^b and the
    outputs divided back. a balances q's and k's magnitudes, so both fit under 2^14 whenever
    max|q| * max|k| <= 2^28 (logits beyond that saturate any softmax anyway).
    """
    # Powers of two, fp32: a 0-dim factor takes the bf16 operand's dtype in the products below
    # (exact: bf16 has fp32's exponent range), with no cast of its own
    powers = torch.exp2(_fp16_exponents(q, k, v, v_top))
    # One buffer's slots (below), except in a trace, which cannot write into slices, and for
    # a V of another width than q's (skew_scaled_attention pads it)
    if torch.compiler.is_compiling() or v.shape[-1] != q.shape[-1]:
        # Scaled and converted in one pass each: the product of a bf16 value and a power of
        # two is exact in bf16, then converts exactly into the fp16 output
        q16, k16, v16 = (torch.mul(t, powers[i], out=torch.empty_like(t, dtype=torch.float16))
                         for i, t in enumerate((q, k, v)))
        perturbed = skew_scaled_attention(q16, k16, v16, alpha)
    else:
        (q16, k16, v16), perturbed = _fp16_buffer(q, k, v, alpha, powers)
    return F.scaled_dot_product_attention(q16, k16, v16), perturbed, powers[2:]


def _fp16_buffer(q, k, v, alpha, scales):
    """((q, k, v), perturbed): the baseline's inputs and the alpha-scaled retrieval, from one
    fp16 buffer whose slots are written straight from the bf16 inputs times their powers of
    two (on CUDA one kernel casts as it stores; the CPU goes through a temporary).
    skew_scaled_attention on separate fp16 copies would write them and then concatenate them
    again: one pass over the four slots fewer, and one allocation where that made five.

    The last four slots are skew_scaled_attention's buffer [v, a, k, b] (attend_concat),
    products on the same fp16 values: the same bits. Where c1 goes into the scale (folds_c1)
    a is q itself and serves the baseline too; elsewhere (tensors, or c1 < 1/4) a = c1 q and
    the baseline's q takes a slot of its own in front: [q, v, c1 q, k, c2 q].
    """
    d = q.shape[-1]
    c1, c2 = skew_coefficients(alpha, q)
    folded = folds_c1(alpha)
    z = torch.empty((*q.shape[:-1], (4 if folded else 5) * d), dtype=torch.float16,
                    device=q.device)
    slots = z.split(d, dim=-1)
    if folded:
        v16, q16, k16, tail = slots
    else:
        q16, v16, head, k16, tail = slots
    for t, scale, slot in ((q, scales[0], q16), (k, scales[1], k16), (v, scales[2], v16)):
        torch.mul(t, scale, out=slot)
    if folded:
        torch.mul(q16, c2 / c1, out=tail)
        return (q16, k16, v16), attend_concat(z, c1 * d**-0.5)
    if isinstance(c1, torch.Tensor):  # as skew_scaled_attention casts them
        c1, c2 = c1.to(torch.float16), c2.to(torch.float16)
    torch.mul(q16, c1, out=head)
    torch.mul(q16, c2, out=tail)
    return (q16, k16, v16), attend_concat(z[..., d:], d**-0.5)
