"""Blending the perturbed retrieval into the baseline, then matching its norm (paper eq. 33-34, 42).

    new = base + beta * (perturbed - base)
    out = new * clamp(|perturbed| / |new|, r_min, r_max)      per token and head

The reference norm is the *perturbed* retrieval's, as in the authors' released code (the paper's
text says "baseline feature scale"; README says how much the two differ). All of it runs in fp32
whatever the model dtype, because the change is a small difference of two nearly equal
retrievals amplified by beta.
"""

from __future__ import annotations

import torch

RATIO_MIN = 0.25
RATIO_MAX = 4.0
NORM_EPS = 1e-6


def blend_retrievals(
    base: torch.Tensor,
    perturbed: torch.Tensor,
    beta: float | torch.Tensor,
    *,
    norm_match: bool = True,
    ratio_min: float = RATIO_MIN,
    ratio_max: float = RATIO_MAX,
    unscale: torch.Tensor | None = None,
    scaled_by: torch.Tensor | None = None,
    out_dtype: torch.dtype | None = None,
    in_fp16: bool = False,
) -> torch.Tensor:
    """Blend over the last axis (the feature axis of one head); returns fp32 (fp64 for fp64
    input), or ``out_dtype`` (the model's).

    ``beta`` may be a tensor broadcasting against ``base`` (e.g. [B, 1, 1, 1]). Non-finite
    values produced by the rescale are zeroed rather than propagated into the model.
    ``unscale``: base and perturbed come scaled by 1 / unscale, a power of two (the bf16
    two-call path's exact fp16 scaling); the blend scales with them exactly, so it is computed
    as they are and unscaled once, in the norm match's own multiply (the norm floor scaled
    alike): the same result, bit for bit, as unscaling both retrievals first.
    ``scaled_by``: 1 / unscale, where the caller has it (the two-call path's powers of two):
    the norm floor is then one multiply, not a reciprocal and a multiply (the same bits,
    powers of two scaling exactly).
    ``out_dtype``: that last multiply rounds into it (computed in fp32 all the same, the same
    bits as rounding the fp32 result afterwards; on accelerators as it stores), and the zeroing
    of non-finite values runs on the rounded output, so neither makes a full fp32 pass of its
    own; a value beyond the dtype's range, inf once rounded, is zeroed too rather than handed
    to the model.
    ``in_fp16``: base and perturbed are fp16, beta a number, and the caller has scaled them so
    that the blend, at most (|1 - beta| + |beta|) times their largest value, stays well inside
    fp16's range (the bf16 two-call path, see two_call.v_top_log2). The blend is then computed
    in fp32 as it is elsewhere but stored in fp16, and the norms read fp16 into fp32 sums: no
    fp32 copy of either retrieval or of the blend (24 bytes per element fewer). Its rounding,
    2^-11 of the blend, is an eighth of a bf16 output's.
    """
    if in_fp16:
        if isinstance(beta, torch.Tensor) or not base.dtype == perturbed.dtype == torch.float16:
            raise ValueError("blend_retrievals(in_fp16=True) takes fp16 retrievals and a "
                             "number for beta")
        pert = perturbed  # read into fp32 by the norm below
        new = torch.lerp(base, perturbed, beta)  # fp32 arithmetic, rounded once to fp16
    else:
        dtype = torch.promote_types(base.dtype, torch.float32)  # fp64 inputs keep fp64
        pert = perturbed.to(dtype)
        weight = (beta.to(device=base.device, dtype=dtype) if isinstance(beta, torch.Tensor)
                  else beta)
        new = torch.lerp(base.to(dtype), pert, weight)  # base + beta (perturbed - base)
    if not norm_match:
        if unscale is not None:
            return _scaled(new, unscale, out_dtype)
        want = out_dtype or torch.promote_types(new.dtype, torch.float32)
        return new if want == new.dtype else new.to(want)
    if unscale is None:
        eps = NORM_EPS
    else:
        eps = NORM_EPS / unscale if scaled_by is None else scaled_by * NORM_EPS
    sums = torch.promote_types(new.dtype, torch.float32)  # fp16 read into fp32 sums
    ref = torch.linalg.vector_norm(pert, dim=-1, keepdim=True, dtype=sums).clamp_min(eps)
    cur = torch.linalg.vector_norm(new, dim=-1, keepdim=True, dtype=sums).clamp_min(eps)
    ratio = ref.div_(cur).clamp_(ratio_min, ratio_max)
    out = _scaled(new, ratio if unscale is None else ratio.mul_(unscale), out_dtype)
    return torch.nan_to_num_(out, nan=0.0, posinf=0.0, neginf=0.0)


def _scaled(new: torch.Tensor, factor: torch.Tensor, out_dtype: torch.dtype | None):
    """new * factor, computed in fp32 (fp64) and rounded to out_dtype (default: fp32, or
    fp64): in place where that is new's own dtype, new being the blend's own."""
    if factor.dim() == 0:  # as a 0-dim tensor it would leave an fp16 product in fp16
        factor = factor.reshape(1)
    product = torch.promote_types(new.dtype, factor.dtype)
    out_dtype = out_dtype or product
    if out_dtype == new.dtype == product:
        return new.mul_(factor)
    if new.dtype == product and new.device.type == "cpu":
        # The CPU writes an output of another dtype through a temporary of the product's own
        # (a fresh fp32 buffer and a copy): in place, then one cast, costs less there.
        return new.mul_(factor).to(out_dtype)
    # Accelerators cast as they store: the fp32 product is never written
    return torch.mul(new, factor, out=torch.empty_like(new, dtype=out_dtype))
